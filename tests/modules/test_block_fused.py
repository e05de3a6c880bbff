"""The fused Mega block kernels (ops/mega_block.py, ops/triton/{gates,gated_update,reset_product,
bias_activation,block_common}.py) and the selection of the fused path (--block-impl).

CPU: every kernel through Triton's interpreter against its float64 reference, the modules on the
fused path against the PyTorch path, the compiled block (one subprocess, block_fused_interpreted.py);
option handling and fallbacks; every kernel compiled for an H100 with half-precision inputs.
GPU (-m gpu): fused against PyTorch path at realistic sizes in float32 and bfloat16.
"""

import interpreter_runs
import pytest
import torch

from fairseq_helpers import build_model
from mega_fairseq.modules import (GatedCrossAttention, MegaConfigError, MegaDecoderLayer, MegaEncoderLayer,
                                  MegaLayerConfig, MovingAverageGatedAttention, NormalizedFeedForward)
from mega_fairseq.ops import mega_block
from mega_fairseq.ops.triton import triton_available
from reference import randn, random_padding_mask, randomize_parameters_

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OP_TOLERANCE = 2e-6  # float32 kernels against float64 references
MODULE_TOLERANCE = 1e-5  # float32 fused modules against float64 PyTorch-path modules


def config(**options) -> MegaLayerConfig:
    values = dict(embed_dim=8, hidden_dim=6, ffn_dim=10, z_dim=4, n_dim=2, max_positions=32)
    values.update(options)
    return MegaLayerConfig(**values)


# ------------------------------------------------------------------ kernels and modules through the interpreter (CPU)


@needs_triton
def test_fused_block_in_triton_interpreter():
    """Every op against its reference (outputs, all gradients, dropout on with the kernels' own
    factors), dropout statistics, the fused modules against the PyTorch path, and the compiled block
    and ops against eager with one graph over two lengths; see block_fused_interpreted.py."""
    results = interpreter_runs.result("modules/block_fused_interpreted.py")
    # post-norm FFN: forward mm, bias+act+dropout, mm, dropout+residual+norm; backward 2 x (kernel, column
    # sum, 2 mm) and the sum of the input's two gradients. Mega block: gates, reset product, update forward;
    # their three backward kernels and two column sums (EMA and attention not counted)
    assert results.pop("launches") == dict(ffn_forward=4.0, ffn_backward=9.0, block_forward_kernels=3.0,
                                           block_backward_kernels=5.0)
    dropout = results.pop("dropout")
    assert abs(dropout.pop("keep_fraction") - 0.7) < 0.02
    assert abs(dropout.pop("feature_keep_fraction") - 0.7) < 0.15
    assert all(flag == 1.0 for flag in dropout.values()), dropout
    for case in ("compiled_block", "compiled_ops"):
        compiled = results.pop(case)
        assert compiled["graphs"] == 1.0 and compiled["largest"] < 1e-6, (case, compiled)
    # post-norm layers under autocast: the kernels' copies of the sub-layers' outputs change no value and
    # spare the cast before the next projection and, in the backward, the gradient's cast and sum
    assert results.pop("encoder_layer_copies") == dict(largest=0.0, forward_launches_saved=1.0,
                                                       backward_launches_saved=2.0)
    assert results.pop("decoder_layer_copies") == dict(largest=0.0, forward_launches_saved=2.0,
                                                       backward_launches_saved=4.0)
    assert results.pop("update_opcheck") == dict(failed=0.0)
    assert len(results) == 26
    for case, errors in results.items():
        tolerance = MODULE_TOLERANCE if set(errors) <= {"train", "eval"} else OP_TOLERANCE
        for name, error in errors.items():
            assert error < tolerance, (case, name, error)


# ------------------------------------------------------------------ option and fallbacks (CPU)


def test_block_impl_choices_are_checked():
    with pytest.raises(MegaConfigError, match="--block-impl"):
        config(block_impl="cuda")


@needs_triton
@pytest.mark.parametrize("build", [
    lambda cfg: MovingAverageGatedAttention(cfg, bidirectional=True, causal=False),
    lambda cfg: GatedCrossAttention(cfg, 32),
    NormalizedFeedForward,
])
def test_forced_triton_on_cpu_names_the_option_and_the_reason(build):
    module = build(config(block_impl="triton"))
    x = torch.randn(5, 2, 8)
    inputs = (x, torch.randn(3, 2, 8)) if isinstance(module, GatedCrossAttention) else (x,)
    with pytest.raises(MegaConfigError, match="--block-impl triton cannot run: the input is not on a CUDA device"):
        module(*inputs)


@needs_triton
def test_fused_path_needs_float32_or_half(monkeypatch):
    monkeypatch.setattr(mega_block, "interpreting", lambda: True)
    assert "float64" in mega_block.fused_block_unavailable(torch.zeros(2, dtype=torch.float64))
    assert mega_block.fused_block_unavailable(torch.zeros(2, dtype=torch.bfloat16)) is None


@pytest.mark.parametrize("build", [lambda cfg: GatedCrossAttention(cfg, 32), NormalizedFeedForward])
def test_a_copy_of_the_input_shaped_otherwise_is_refused(build):
    module = build(config(block_impl="torch"))
    x = torch.randn(5, 2, 8)
    with pytest.raises(ValueError, match=r"copy of the .* must be shaped as .*\(5, 2, 8\), got \(2, 5, 8\)"):
        if isinstance(module, GatedCrossAttention):
            module(x, torch.randn(3, 2, 8), query_copy=x.transpose(0, 1))
        else:
            module(x, x_copy=x.transpose(0, 1))


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_auto_falls_back_to_pytorch_on_cpu(role):
    """auto on a CPU gives exactly the PyTorch path's layer output."""
    torch.manual_seed(0)
    layers = []
    for impl in ("auto", "torch"):
        cfg = config(block_impl=impl, role=role, prenorm=False)
        layer = MegaEncoderLayer(cfg) if role == "encoder" else MegaDecoderLayer(cfg, 32)
        layers.append(randomize_parameters_(layer.double(), seed=3).eval())
    x = randn(7, 2, 8, seed=1)
    inputs = (x,) if role == "encoder" else (x, randn(5, 2, 8, seed=2))
    outputs = [layer(*inputs) for layer in layers]
    if role == "decoder":
        outputs = [out[0] for out in outputs]
    assert torch.equal(outputs[0], outputs[1])


@needs_triton
def test_incremental_steps_stay_on_the_pytorch_path():
    """With --block-impl triton on a CPU a full pass raises, but decoding steps (a state dict) run the
    PyTorch operations as before and equal the full pass of the PyTorch path."""
    torch.manual_seed(0)
    cfg = dict(role="decoder", chunk_size=3)
    forced = randomize_parameters_(MovingAverageGatedAttention(config(block_impl="triton", **cfg), False, True)
                                   .double(), seed=5).eval()
    plain = MovingAverageGatedAttention(config(block_impl="torch", **cfg), False, True).double().eval()
    plain.load_state_dict(forced.state_dict())
    x = randn(7, 2, 8, seed=6)
    state = {}
    steps = torch.cat([forced(x[t: t + 1], state=state)[0] for t in range(7)])
    torch.testing.assert_close(steps, plain(x)[0], rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("flag", [[], ["--block-impl", "torch"]])
def test_block_impl_reaches_every_sub_layer_of_the_model(flag):
    model = build_model(flag)
    expected = flag[1] if flag else "auto"
    layer = model.decoder.layers[0]
    assert {layer.mega_layer.block_impl, layer.cross_attn.block_impl, layer.nffn.block_impl,
            model.encoder.layers[0].mega_layer.block_impl} == {expected}


# ------------------------------------------------------------------ compilation for an H100 (CPU)


def _signature(kernel, constants, pointers, default_pointer):
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, default_pointer)
        else:
            signature[name] = "fp32" if name in ("p", "eps") else "i32"
    return signature


@needs_triton
def test_kernels_compile_for_h100_with_half_precision_inputs():
    """Every kernel compiles to an sm_90a cubin with bf16 or fp16 activations (ptxas ships with triton)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from mega_fairseq.ops.triton import bias_activation, block_common, gated_update, gates, reset_product

    tile = dict(BLOCK_R=32, BLOCK_C=64)
    drop = dict(HAS_DROPOUT=True, FEATURE=False)
    update = dict(ACT=1, HAS_HX=True, GATED=True, NORM=1, HAS_WEIGHT=True, HAS_NORM_BIAS=True, ROWS=4, BLOCK_D=512,
                  **drop)
    float32 = {name: "*fp32" for name in ("partials_ptr", "stats_ptr", "gamma_ptr", "beta_ptr", "weight_ptr",
                                          "norm_bias_ptr", "bias_ptr", "base_bias_ptr", "value_bias_ptr")}
    float32["seed_ptr"] = "*i64"
    kernels = [
        (gates._mega_gates_forward_kernel, dict(ACT=1, **drop, **tile), "*bf16"),
        (gates._mega_gates_backward_kernel, dict(ACT=3, **drop, **tile, STAGES=2), "*fp16"),
        (gates._cross_gates_forward_kernel, tile, "*fp16"),
        (gates._cross_gates_backward_kernel, dict(tile, STAGES=1), "*bf16"),
        (gated_update._gated_update_forward_kernel, dict(update, STORE_COPY=True), "*bf16"),
        (gated_update._gated_update_backward_kernel,
         dict(update, NORM=3, HAS_NORM_BIAS=False, FEATURE=True, HAS_COPY_GRAD=True, STAGES=2), "*fp16"),
        (reset_product._reset_product_forward_kernel, tile, "*bf16"),
        (reset_product._reset_product_backward_kernel, tile, "*fp16"),
        (bias_activation._bias_activation_forward_kernel, dict(ACT=4, BATCH_FIRST=True, **drop, **tile), "*bf16"),
        (bias_activation._bias_activation_backward_kernel, dict(ACT=5, BATCH_FIRST=False, **drop, **tile, STAGES=2),
         "*fp16"),
        (block_common._column_sum_kernel, dict(BLOCK_P=32, BLOCK_W=128), "*bf16"),
    ]
    for kernel, constants, pointer in kernels:
        signature = _signature(kernel, constants, float32, pointer)
        compiled = triton_compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert compiled.asm["cubin"], kernel.fn.__name__


# ------------------------------------------------------------------ GPU

MULTI30K = dict(embed_dim=512, hidden_dim=1024, ffn_dim=1024, z_dim=128, n_dim=16, chunk_size=-1, max_positions=1024,
                prenorm=False)
LONG = dict(embed_dim=512, hidden_dim=1024, ffn_dim=1024, z_dim=128, n_dim=16, chunk_size=128, max_positions=1024,
            prenorm=True)


def _layer_pair(role, options, seed=0):
    """The same random layer (parameters ~ N(0, 0.1^2), every term visible) on the fused and on the
    PyTorch path, on the GPU, training mode, no dropout."""
    layers = []
    for impl in ("triton", "torch"):
        cfg = MegaLayerConfig(block_impl=impl, role=role, **options)
        layers.append(MegaEncoderLayer(cfg) if role == "encoder" else MegaDecoderLayer(cfg, 8192))
    randomize_parameters_(layers[0], seed, scale=0.1)
    layers[1].load_state_dict(layers[0].state_dict())
    return [layer.cuda().train() for layer in layers]


def _layer_results(layer, inputs, weight, dtype):
    """Outputs and gradients (float32) in float32, under bf16 autocast (float32 parameters, as
    --bf16-autocast), or in float16 (half parameters and inputs, as fairseq's --fp16)."""
    layer.to(torch.float16 if dtype == torch.float16 else torch.float32).zero_grad()
    inputs = [(t.half() if dtype == torch.float16 else t).detach().requires_grad_() if t.is_floating_point() else t
              for t in inputs]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = layer(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out.float() * weight).sum().backward()
    grads = [(f"input {i}", t.grad) for i, t in enumerate(inputs) if t.is_floating_point()]
    return [("out", out.detach())] + grads + [(name, p.grad) for name, p in layer.named_parameters()]


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("role", ["encoder", "decoder"])
@pytest.mark.parametrize("shape, options", [((30, 300), MULTI30K), ((4097, 2), LONG)], ids=["multi30k", "long"])
def test_fused_layer_matches_pytorch_path_on_gpu(role, shape, options):
    """Outputs and every gradient of a whole layer, float32, bf16 autocast and float16, padded batches
    (errors relative to the largest entry, at least 1: some gradients are rounding noise around 0,
    e.g. of the key offset beta[1], to which softmax is invariant)."""
    length, batch = shape
    dim = options["embed_dim"]
    fused, plain = _layer_pair(role, options)
    x = torch.randn(length, batch, dim, device="cuda")
    mask = random_padding_mask(batch, length, seed=1).cuda()
    if role == "encoder":
        inputs = [x, mask]
    else:
        memory = torch.randn(length // 2 + 3, batch, dim, device="cuda")
        inputs = [x, memory, random_padding_mask(batch, length // 2 + 3, seed=2).cuda(), mask]
    weight = torch.randn(length, batch, dim, device="cuda")
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 2e-2)):
        for (name, a), (_, b) in zip(_layer_results(fused, inputs, weight, dtype),
                                     _layer_results(plain, inputs, weight, dtype)):
            error = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1.0))
            assert error < tolerance, (dtype, name, error)


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_update_with_dropout_matches_reference_on_gpu(dtype):
    """Dropout inside the gated update on the GPU: the forward and backward masks are the ones
    dropout_scales regenerates, in every activation dtype (float64 reference on the same inputs)."""
    from mega_fairseq.ops.mega_block_ref import gated_update_reference

    length, batch, dim = 37, 65, 1000
    tensors = [torch.randn(length, batch, dim, device="cuda", dtype=torch.float64) for _ in range(4)]
    tensors[2] = torch.sigmoid(tensors[2])
    bias, weight, norm_bias = (torch.randn(dim, device="cuda", dtype=torch.float64) for _ in range(3))
    seed = mega_block.draw_seed(torch.device("cuda"))
    scale = mega_block.dropout_scales(tensors[0], seed, 0.1, 1)
    assert abs(float((scale > 0).double().mean()) - 0.9) < 0.01
    grad = torch.randn(length, batch, dim, device="cuda", dtype=torch.float64)
    results = []
    for run_dtype, fused in ((dtype, True), (torch.float64, False)):
        h, hx, u, residual = (t.to(run_dtype).requires_grad_() for t in tensors)
        params = [(p.float() if fused else p.clone()).requires_grad_() for p in (bias, weight, norm_bias)]
        if fused:
            out = mega_block.gated_update(h, params[0], hx, u, residual, params[1], params[2], norm="layernorm",
                                          dropout=0.1, seed=seed)
        else:
            out = gated_update_reference(h, params[0], hx, u, residual, params[1], params[2], "layernorm", 1e-5,
                                         "silu", scale)
        (out.double() * grad).sum().backward()
        results.append([out] + [t.grad for t in (h, hx, u, residual)] + [p.grad for p in params])
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results):
        error = float((a.detach().double() - b.detach()).norm() / b.detach().norm())
        assert error < tolerance, error


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gates_with_dropout_match_reference_on_gpu(dtype):
    """mega_gates at Multi30k width with the value dropout on: outputs and every gradient against the
    float64 reference given the dropout factors that dropout_scales regenerates on the GPU."""
    from mega_fairseq.ops.mega_block_ref import mega_gates_reference

    length, batch, dim, z_dim, hidden = 31, 67, 512, 128, 1024
    shapes = [(length, batch, 2 * dim + z_dim + hidden), (2 * dim + z_dim + hidden,), (length, batch, hidden),
              (hidden,), (2, z_dim), (2, z_dim)]
    tensors = [torch.randn(shape, device="cuda", dtype=torch.float64) for shape in shapes]
    seed = mega_block.draw_seed(torch.device("cuda"))
    scale = mega_block.dropout_scales(tensors[2], seed, 0.1, 0)
    results = []
    for fused in (True, False):
        inputs = [(t.to(dtype) if fused and t.dim() == 3 else t.clone()).requires_grad_() for t in tensors]
        if fused:
            outputs = mega_block.mega_gates(*[t if t.dim() == 3 else t.float() for t in inputs], activation="silu",
                                            dropout=0.1, feature_dropout=False, seed=seed)
        else:
            outputs = mega_gates_reference(*inputs, "silu", scale)
        torch.manual_seed(0)
        sum((o.double() * torch.randn(o.shape, device="cuda", dtype=torch.float64)).sum() for o in outputs).backward()
        results.append(list(outputs) + [t.grad for t in inputs])
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(*results):
        error = float((a.detach().double() - b.detach()).norm() / b.detach().norm())
        assert error < tolerance, error
