"""The fused Triton EMA: selection logic (CPU), the kernels through Triton's interpreter (CPU,
when triton is installed) and on a GPU (marked gpu) against the FFT reference path."""

import interpreter_runs
import pytest
import torch

from mega_fairseq.modules import MegaConfigError, MegaLayerConfig, MultiDimensionalEMA
from mega_fairseq.ops.triton import ema_scan as ema_triton
from reference import randn, random_padding_mask, randomize_parameters_

needs_triton = pytest.mark.skipif(not ema_triton.triton_available(), reason="triton is not installed")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------ selection (CPU)


def test_auto_uses_fft_on_cpu():
    ema = MultiDimensionalEMA(4, 2)
    assert not ema.use_fused(torch.zeros(3, 1, 4))


def test_forced_triton_on_cpu_names_the_option_and_the_reason():
    ema = MultiDimensionalEMA(4, 2, impl="triton")
    with pytest.raises(MegaConfigError, match=r"--ema-impl triton cannot run: .*(CUDA|triton)"):
        ema(torch.zeros(3, 1, 4))


def test_unknown_impl_is_refused():
    with pytest.raises(MegaConfigError, match="--ema-impl"):
        MultiDimensionalEMA(4, 2, impl="cuda")
    with pytest.raises(MegaConfigError, match="--ema-impl"):
        MegaLayerConfig(ema_impl="fast")


@pytest.mark.parametrize("ndim, grad, carried, reason", [
    (16, True, False, None),
    (12, True, False, "not a power of two"),
    (16, True, True, "not differentiable"),
    (16, False, True, None),
])
def test_fused_unavailable_reasons(monkeypatch, ndim, grad, carried, reason):
    """With triton usable, the fused scan is refused only for odd N and differentiable carried states."""
    monkeypatch.setattr(ema_triton, "triton_available", lambda: True)
    monkeypatch.setattr(ema_triton, "interpreting", lambda: True)
    ema = MultiDimensionalEMA(4, ndim)
    with torch.set_grad_enabled(grad):
        found = ema.fused_unavailable(torch.zeros(3, 1, 4), {} if carried else None)
    assert (found is None) if reason is None else (reason in found)


def test_fft_impl_never_asks_for_triton(monkeypatch):
    monkeypatch.setattr(ema_triton, "triton_available", lambda: True)
    monkeypatch.setattr(ema_triton, "interpreting", lambda: True)
    assert not MultiDimensionalEMA(4, 2, impl="fft").use_fused(torch.zeros(3, 1, 4))
    assert MultiDimensionalEMA(4, 2, impl="auto").use_fused(torch.zeros(3, 1, 4))


@pytest.mark.parametrize("length, warps", [(1, 1), (64, 1), (100, 16), (4096, 256), (65536, 256), (65536, 1),
                                           (30, 4800), (5000, 9000)])
def test_chunk_length_is_a_power_of_two_that_fills_the_machine(length, warps):
    chunk = ema_triton.chunk_length(length, warps)
    assert chunk >= ema_triton.MIN_CHUNK and chunk & (chunk - 1) == 0
    chunks = -(-length // chunk)
    assert chunk == ema_triton.MIN_CHUNK or warps * chunks * 2 > ema_triton.TARGET_WARPS
    assert chunks * warps <= max(ema_triton.TARGET_WARPS, warps)
    if length <= ema_triton.MIN_CHUNK or warps >= ema_triton.TARGET_WARPS:
        assert chunks == 1  # one launch forward: the short path


def test_backward_chunks_are_longer():
    assert ema_triton.chunk_length(20000, 32, ema_triton.MIN_BACKWARD_CHUNK) >= ema_triton.MIN_BACKWARD_CHUNK


def test_custom_operators_are_registered():
    for name in ("ema_layer", "ema_layer_backward", "ema_with_state"):
        assert hasattr(torch.ops.mega, name), name


# ------------------------------------------------------------------ kernels through the interpreter (CPU)


@pytest.fixture(scope="module")
def interpreted():
    """Every interpreter check of tests/ops/ema_interpreted.py, run once in one background subprocess (helpers/interpreter_runs.py)."""
    if not ema_triton.triton_available():
        pytest.skip("triton is not installed")
    return interpreter_runs.result("ops/ema_interpreted.py")


@pytest.mark.parametrize("case", ["short_causal", "short_bidirectional_truncated_padded",
                                  "short_truncation_not_below_length", "long_causal_truncated_padded",
                                  "long_bidirectional_truncated_padded",
                                  "many_chunks_bidirectional_truncated_padded", "several_chunks_causal_padded",
                                  "many_chunks_bidirectional_padded", "many_chunks_bidirectional_padded_per_direction"])
def test_interpreted_layer_matches_float64_lag_sum(interpreted, case):
    """Output, dx and the five parameter gradients in float32 against the float64 direct sum over lags:
    one chunk, several and many, causal and bidirectional, truncated (K < L and K >= L) or not (the
    bidirectional forward's chunk states of both directions from one pass, or with
    ema_scan.JOINT_CHUNK_STATES off one direction a program), padded, row and channel blocks with
    masked tails."""
    errors = interpreted[case]
    assert set(errors) == {"y", "dx", "dalpha", "ddelta", "dbeta", "dgamma", "domega"}
    for name, error in errors.items():
        assert error < 2e-6, (case, name, error)


@pytest.mark.parametrize("case", ["copy_short_causal", "copy_long_bidirectional_truncated_padded"])
def test_interpreted_layer_with_input_copy(interpreted, case):
    """forward_and_input under float16 autocast: float16 output and copy of x from the scan's launch, x's
    gradient summing the copy's in the backward kernel (one chunk causal; several chunks bidirectional,
    truncated, padded)."""
    errors = interpreted[case]
    assert errors.pop("float16_outputs") == 1 and errors.pop("copy") == 0.0, (case, errors)
    assert errors.pop("y") < 1e-3, (case, errors)  # the output's float16 rounding
    for name, error in errors.items():
        assert error < 2e-6, (case, name, error)


def test_interpreted_carried_state_matches_recurrence_in_place(interpreted):
    """Parts of 1, 13, 1, 5, 1, 12 steps (one-step launches, one chunk and several from a state,
    padded) equal the float64 recurrence; one state tensor updated in place throughout."""
    result = interpreted["carried_state"]
    assert result["y"] < 2e-6 and result["hidden"] < 2e-6, result
    assert result["state_buffers"] == 1 and result["step_2d_vs_3d"] == 0.0, result


def test_interpreted_gradient_of_the_copy_alone(interpreted):
    """Only the copy of x used (eagerly and through the custom operator): x's gradient is the copy's
    exactly, the parameters' zero."""
    errors = interpreted["copy_gradient_alone"]
    assert all(errors[name] == 0.0 for name in errors), errors


def test_interpreted_custom_ops_compile_without_graph_break(interpreted):
    """fullgraph=True, dynamic=True (aot_eager): the same outputs and gradients as eager at two lengths
    and batch sizes with one compilation; steps with a state compiled twice (no state, then a state)."""
    layer, steps = interpreted["compiled_layer"], interpreted["compiled_steps"]
    assert layer["largest"] < 1e-6 and layer["compilations"] == 1, layer
    copy = interpreted["compiled_copy"]
    assert copy["largest"] < 1e-6 and copy["compilations"] == 1, copy
    assert steps["y"] < 1e-6 and steps["hidden"] < 1e-6, steps
    assert steps["state_buffers"] == 1 and steps["compilations"] <= 2, steps
    assert interpreted["opcheck"]["failed"] == 0


def test_interpreted_encoder_layer_has_no_graph_break(interpreted):
    assert interpreted["encoder_layer"]["graph_breaks"] == 0


def test_interpreted_decoder_steps_match_full_pass(interpreted):
    assert interpreted["decoder_steps"]["largest"] < 1e-5


# ------------------------------------------------------------------ GPU


def _pair(dim, ndim, bidirectional, truncation, seed):
    """A fused and an FFT EMA with the same random parameters, float32 on the GPU."""
    modules = [randomize_parameters_(MultiDimensionalEMA(dim, ndim, bidirectional, truncation, impl=impl), seed)
               for impl in ("triton", "fft")]
    return [m.cuda() for m in modules]


def _grads(module, x, mask, weight, dtype):
    x = x.detach().to(dtype).requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = module(x, mask)
    (y.float() * weight).sum().backward()
    return [y.float(), x.grad.float()] + [p.grad.float().clone() for p in module.parameters()]


def _largest_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1.0))


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("length, batch, dim, bidirectional, truncation, padded", [
    (1, 2, 32, False, None, False),
    (17, 300, 512, True, None, True),  # a Multi30k batch: one launch forward, two backward
    (64, 8, 1024, True, 32, True),
    (65, 4, 1024, False, None, True),  # two chunks
    (1000, 3, 64, True, None, True),
    (777, 4, 1024, True, 300, True),
    (4097, 2, 48, False, 2048, False),
    (20000, 1, 40, True, None, False),
    (65536, 1, 1024, True, 8192, True),
])
def test_fused_matches_fft_on_gpu(length, batch, dim, bidirectional, truncation, padded):
    """Outputs and every gradient, float32 and bf16 (autocast), against the FFT path."""
    fused, fft = _pair(dim, 16, bidirectional, truncation, seed=length)
    x = randn(length, batch, dim, seed=1).cuda()
    mask = random_padding_mask(batch, length, seed=2).cuda() if padded else None
    weight = randn(length, batch, dim, seed=3).cuda()
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 3e-2)):
        for module in (fused, fft):
            module.zero_grad()
        for name, a, b in zip(["y", "dx", "alpha", "delta", "beta", "gamma", "omega"],
                              _grads(fused, x, mask, weight, dtype), _grads(fft, x, mask, weight, dtype)):
            error = _largest_error(a, b)
            assert error < tol, (dtype, name, error)


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("length", [30, 3000])
def test_fused_half_precision_module_on_gpu(length):
    """A float16 module (fairseq --fp16): float16 output and gradients close to the float32 FFT path."""
    fused, fft = _pair(512, 16, True, None, seed=7)
    fused.half()
    x = randn(length, 16, 512, seed=1).cuda()
    mask = random_padding_mask(16, length, seed=2).cuda()
    weight = randn(length, 16, 512, seed=3).cuda()
    results = _grads(fused, x, mask, weight, torch.float16), _grads(fft, x, mask, weight, torch.float32)
    assert all(p.grad.dtype == torch.float16 for p in fused.parameters())
    for name, a, b in zip(["y", "dx", "alpha", "delta", "beta", "gamma", "omega"], *results):
        error = _largest_error(a, b)
        assert error < 3e-2, (name, error)


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("length, batch, bidirectional", [(17, 300, True), (3000, 4, True), (1000, 8, False)])
def test_fused_layer_with_input_copy_on_gpu(length, batch, bidirectional):
    """forward_and_input under bf16 autocast on float32 x (as the Mega block runs it): bf16 output and copy
    of x, gradients of x (summing both paths) and of every parameter close to the FFT path's."""
    fused, fft = _pair(512, 16, bidirectional, None, seed=length)
    x = randn(length, batch, 512, seed=1).float().cuda()
    mask = random_padding_mask(batch, length, seed=2).cuda()
    weights = [randn(length, batch, 512, seed=3 + i).float().cuda() for i in range(2)]
    results = []
    for module in (fused, fft):
        x_grad = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, x_copy = module.forward_and_input(x_grad, mask)
        assert out.dtype == x_copy.dtype == torch.bfloat16
        ((out.float() * weights[0]).sum() + (x_copy.float() * weights[1]).sum()).backward()
        results.append([out.float(), x_copy.float(), x_grad.grad] + [p.grad for p in module.parameters()])
    for name, a, b in zip(["y", "x copy", "dx", "alpha", "delta", "beta", "gamma", "omega"], *results):
        error = _largest_error(a, b)
        assert error < 3e-2, (name, error)
    assert torch.equal(results[0][1], x.bfloat16().float())


def _kernel_launches(fn):
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("length, batch, dim, forward, backward", [
    (30, 300, 512, 1, 2),  # Multi30k: one chunk
    (16384, 8, 1024, 3, 4),  # chunk states, prefix, chunk pass (+ the gradient reduction)
])
def test_kernel_launches_per_layer_on_gpu(length, batch, dim, forward, backward):
    """A bidirectional truncated fp16 layer: every kernel launch of its forward and of its backward."""
    ema = randomize_parameters_(MultiDimensionalEMA(dim, 16, True, length // 2, impl="triton"), 0).cuda().half()
    x = torch.randn(length, batch, dim, device="cuda", dtype=torch.half, requires_grad=True)
    mask = random_padding_mask(batch, length, seed=0).cuda()
    grad = torch.randn_like(x)
    torch.autograd.grad(ema(x, mask), [x, *ema.parameters()], grad)  # compiles the kernels
    out = None

    def run_forward():
        nonlocal out
        out = ema(x, mask)

    launches = _kernel_launches(run_forward)
    assert len(launches) == forward, launches
    launches = _kernel_launches(lambda: torch.autograd.grad(out, [x, *ema.parameters()], grad))
    assert len(launches) == backward, launches


@pytest.mark.gpu
@needs_gpu
@needs_triton
def test_fused_carried_state_on_gpu():
    """Single steps (one launch each, the state updated in place) and multi-step parts (one chunk and
    several) from a carried state equal the torch recurrence."""
    fused, fft = _pair(1024, 16, False, None, seed=0)
    x = randn(1300, 4, 1024, seed=1).cuda()
    mask = random_padding_mask(4, 1300, seed=2, min_real=1200).cuda()
    sizes = [1, 1, 1, 30, 1, 1000, 1, 265]
    states = {}, {}
    with torch.no_grad():
        outputs, buffers = [], set()
        for module, state in zip((fused, fft), states):
            parts, position = [], 0
            for size in sizes:
                parts.append(module(x[position: position + size], mask[:, position: position + size], state=state))
                if module is fused:
                    buffers.add(state["ema_hidden"].data_ptr())
                position += size
            outputs.append(torch.cat(parts))
        assert fused.use_fused(x, states[0]) and len(buffers) == 1
        step_state = {"ema_hidden": states[0]["ema_hidden"].clone()}
        launches = _kernel_launches(lambda: fused(x[:1], state=step_state))
    assert len(launches) == 1, launches
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states[0]["ema_hidden"], states[1]["ema_hidden"], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ compilation for an H100 (CPU)


@needs_triton
def test_kernels_compile_for_h100_with_half_precision_inputs():
    """Every kernel compiles to an sm_90a cubin (ptxas ships with triton; no GPU needed), with every
    option on (the bidirectional forward from float32 x to bf16 with the copy of x, as under autocast; the
    causal forward with a carried state, float16), uncapped and with registers capped at 128; the
    loops over (8, COLS) tiles load them by asynchronous copies (their software pipeline)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from mega_fairseq.ops.triton import ema_kernels as kernels

    shape = dict(N=16, ROWS=4, BD=32, DIRS=2)
    scan = dict(shape, TRUNCATED=True, HAS_MASK=True)
    params = ["*fp32"] * 5
    ints = ["i32"] * 5
    cases = [
        (kernels._ema_forward_kernel, ["*fp32", "*i1"] + params + ["*fp32", "*fp32", "*fp32", "*bf16", "*bf16"]
         + ints + ["fp32"] + ints, dict(scan, STATE_IN=True, STORE_FINAL=False, STORE_Y=True, STORE_X=True,
                                   SCALED_STATE=False)),
        (kernels._ema_forward_kernel, ["*fp16", "*i1"] + ["*fp16"] * 5 + ["*fp32", "*fp32", "*fp16", "*fp16", "*fp16"]
         + ints + ["fp32"] + ints, dict(scan, DIRS=1, TRUNCATED=False, HAS_MASK=False, STATE_IN=True,
                                        STORE_FINAL=True, STORE_Y=False, STORE_X=False,
                                        SCALED_STATE=True)),
        (kernels._chunk_states_kernel, ["*bf16", "*i1", "*fp32", "*bf16"] + params + ["*fp32"] + ints
         + ["fp32", "i32", "i32"], dict(scan, GRAD=True, STAGES=3)),
        (kernels._joint_chunk_states_kernel, ["*fp32", "*i1"] + ["*fp32"] * 5 + ["i32"] * 5,
         dict(N=16, ROWS=4, BD=32, HAS_MASK=True, STAGES=3)),
        (kernels._chunk_prefix_kernel, ["*fp32"] * 6 + ["i32"] * 6, dict(shape, HAS_H0=False, GRAD=True)),
        (kernels._chunk_prefix_kernel, ["*fp32"] * 6 + ["i32"] * 6, dict(shape, DIRS=1, HAS_H0=True, GRAD=False)),
        *((kernels._ema_backward_kernel, ["*bf16", "*bf16", "*i1", "*bf16"] + params
           + ["*fp32", "*bf16", "*fp32", "*bf16"] + ints + ["fp32", "i32", "i32"],
           dict(scan, STATE_IN=True, HAS_G_COPY=True, TILED=tiled, STAGES=3)) for tiled in (False, True)),
        (kernels._grad_finalize_kernel, ["*fp32", "i32"] + ["*fp16"] * 9 + ["i32", "fp32"],
         dict(N=16, DIRS=2, BLOCK=128, ROW_BLOCK=16)),
    ]
    for kernel, types, constants in cases:
        names = [name for name in kernel.arg_names if name not in constants]
        assert len(names) == len(types), kernel.fn.__name__
        signature = dict(zip(names, types), **{name: "constexpr" for name in constants})
        # as a launch specializes them: 16-byte aligned pointers, D a multiple of 16
        aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
                   for name, kind in signature.items() if kind.startswith("*") or name == "D"}
        for cap in ({}, {"maxnreg": 128}):  # ema_scan's register caps (MAX_REGISTERS_*)
            options = dict(num_warps=constants.get("ROWS", 4), **cap)
            compiled = triton_compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned),
                                      target=GPUTarget("cuda", 90, 32), options=options)
            assert compiled.asm["cubin"], (kernel.fn.__name__, cap)
            if constants.get("STAGES", 1) > 1 and constants.get("TILED", True):  # tiles loaded by a pipeline
                assert "cp.async" in compiled.asm["ptx"], kernel.fn.__name__
