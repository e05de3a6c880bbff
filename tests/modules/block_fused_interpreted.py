"""Runs the fused Mega block kernels through Triton's interpreter on the CPU (TRITON_INTERPRET=1 must be
set before triton is imported, hence a separate process; see test_block_fused.py).

    TRITON_INTERPRET=1 python tests/block_fused_interpreted.py

Prints one JSON line: case name -> {quantity: largest error}, for
- every fused op (float32) against its float64 reference in ops/mega_block_ref.py, outputs and all
  gradients, with dropout on (the reference given the kernels' dropout factors), odd sizes, widths not
  a power of two and tiles shrunk so that every launch has several programs and masked tails;
- the dropout factors' statistics and reproducibility ("dropout": fractions and flags, not errors);
- the launches of a feed-forward network and of the Mega block's fused kernels ("launches": counts);
- the Mega block (encoder / decoder, chunked / unchunked, prenorm / postnorm), the cross-attention and
  the feed-forward network on the fused path (float32) against the same modules on the PyTorch path
  (float64, same parameters), outputs and every gradient, in training mode without dropout and in
  eval mode with dropout configured;
- the Mega block and the other ops compiled with fullgraph=True, dynamic=True (aot_eager) against eager,
  in training mode with dropout (the same torch seed before both), at two lengths with one graph.
"""
import json
import os
import sys

import torch
import torch._dynamo as dynamo
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers"))
from mega_fairseq.modules import (GatedCrossAttention, MegaDecoderLayer, MegaEncoderLayer,  # noqa: E402
                                  MegaLayerConfig, MovingAverageGatedAttention, NormalizedFeedForward)
from mega_fairseq.ops import mega_block as mb  # noqa: E402
from mega_fairseq.ops import mega_block_ref as ref  # noqa: E402
from mega_fairseq.ops.triton import bias_activation, block_common, gated_update, gates, reset_product  # noqa: E402
from reference import f64, randn, random_padding_mask, randomize_parameters_  # noqa: E402

# small tiles for the op checks: several programs per launch and row loops of several iterations even at
# tiny sizes (the module checks run with the default tiles, fewer programs, for time)
SMALL_TILES = {gates: dict(BLOCK_R=8, BLOCK_C=8, BACKWARD_BLOCK_R=8, BACKWARD_BLOCK_C=8, BACKWARD_ROW_PROGRAMS=2),
               reset_product: dict(BLOCK_R=8, BLOCK_C=8),
               bias_activation: dict(BLOCK_R=8, BLOCK_C=8, BACKWARD_ROW_PROGRAMS=2),
               gated_update: dict(TILE_ELEMENTS=64, BACKWARD_TILE_ELEMENTS=64, BACKWARD_PROGRAMS=3),
               block_common: dict(SUM_BLOCK_P=2, SUM_BLOCK_W=16)}
DEFAULT_TILES = {module: {name: getattr(module, name) for name in values} for module, values in SMALL_TILES.items()}


def set_tiles(tiles):
    for module, values in tiles.items():
        for name, value in values.items():
            setattr(module, name, value)


L, B, D, Z, H = 7, 3, 24, 6, 20


def largest_error(actual, expected) -> float:
    return float((f64(actual) - f64(expected)).abs().max() / f64(expected).abs().max().clamp(min=1.0))


def leaves(*shapes, seed):
    return [None if shape is None else randn(*shape, seed=seed + i).requires_grad_() for i, shape in enumerate(shapes)]


def compare(fused_fn, reference_fn, inputs, seed):
    """Outputs and gradients (weighted sum of the outputs) of fused_fn on float32 copies of the
    float64 inputs against reference_fn on the inputs."""
    fused_inputs = [None if t is None else t.detach().float().requires_grad_() for t in inputs]
    fused, expected = fused_fn(*fused_inputs), reference_fn(*inputs)
    fused = fused if isinstance(fused, tuple) else (fused,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    weights = [randn(*e.shape, seed=seed + 50 + i) for i, e in enumerate(expected)]
    sum((f.double() * w).sum() for f, w in zip(fused, weights)).backward()
    sum((e * w).sum() for e, w in zip(expected, weights)).backward()
    errors = {f"out{i}": largest_error(f, e) for i, (f, e) in enumerate(zip(fused, expected))}
    errors.update({f"shape{i}": float(f.shape != e.shape) for i, (f, e) in enumerate(zip(fused, expected))})
    for i, (f, e) in enumerate(zip(fused_inputs, inputs)):
        if e is not None:
            errors[f"grad{i}"] = largest_error(f.grad, e.grad)
    return errors


def check_mega_gates(activation, p, feature, seed):
    inputs = leaves((L, B, 2 * D + Z + H), (2 * D + Z + H,), (L, B, H), (H,), (2, Z), (2, Z), seed=seed)
    seed_tensor = torch.tensor([seed * 7919])
    scale = mb.dropout_scales(inputs[2], seed_tensor, p, gates.VALUE_DROPOUT_SITE, feature) if p else None
    return compare(lambda *x: mb.mega_gates(*x, activation=activation, dropout=p, feature_dropout=feature,
                                            seed=seed_tensor),
                   lambda *x: ref.mega_gates_reference(*x, activation, scale), inputs, seed)


def check_cross_gates(seed):
    inputs = leaves((5, B, 2 * D + Z), (2 * D + Z,), seed=seed)
    return compare(lambda *x: mb.cross_gates(*x, Z), lambda *x: ref.cross_gates_reference(*x, Z), inputs, seed)


def check_reset_product(seed):
    """out: a strided view (B, L, H) of a longer sequence, as the attention returns it."""
    out_full, r = leaves((B, L + 3, H), (L, B, H), seed=seed)
    return compare(lambda o, r_: mb.reset_product(o[:, 2: 2 + L], r_),
                   lambda o, r_: ref.reset_product_reference(o[:, 2: 2 + L], r_), [out_full, r], seed)


def check_bias_activation(activation, p, feature, batch_first, seed):
    inputs = leaves((L, B, H), (H,), seed=seed)
    seed_tensor = torch.tensor([seed * 104729])
    scale = mb.dropout_scales(inputs[0], seed_tensor, p, bias_activation.DROPOUT_SITE, feature) if p else None
    return compare(lambda *x: mb.bias_activation(*x, activation=activation, dropout=p, feature_dropout=feature,
                                                 seed=seed_tensor, batch_first=batch_first),
                   lambda *x: ref.bias_activation_reference(*x, activation, scale, batch_first), inputs, seed)


def check_gated_update(norm, affine, has_hx, gated, activation, p, feature, seed):
    weight_shape = None if not affine or norm == "none" else ((1,) if norm == "scalenorm" else (D,))
    bias_shape = (D,) if affine and norm == "layernorm" else None
    inputs = leaves((L, B, D), (D,), (L, B, D) if has_hx else None, (L, B, D) if gated else None, (L, B, D),
                    weight_shape, bias_shape, seed=seed)
    if gated:  # u in (0, 1), as the sigmoid gives it
        inputs[3] = torch.sigmoid(inputs[3].detach()).requires_grad_()
    seed_tensor = torch.tensor([seed * 15485863])
    scale = mb.dropout_scales(inputs[0], seed_tensor, p, gated_update.UPDATE_DROPOUT_SITE, feature) if p else None
    return compare(lambda *x: mb.gated_update(*x, norm=norm, eps=1e-5, activation=activation, dropout=p,
                                              feature_dropout=feature, seed=seed_tensor),
                   lambda *x: ref.gated_update_reference(*x, norm, 1e-5, activation, scale), inputs, seed)


def check_gated_update_copy(norm, copy_only, seed):
    """gated_update_and_copy with a float16 copy: out against the float64 reference, the copy equal to out
    cast, and the gradients with both outputs used (or the copy alone) against the reference's, whose
    out takes both weights (the copy's weights are float16 values, so the copy's gradient is exact).
    (float16: the interpreter rounds to bfloat16 toward zero, the GPU to nearest, as torch.)"""
    inputs = leaves((L, B, D), (D,), (L, B, D), (L, B, D), (L, B, D), (D,), (D,) if norm == "layernorm" else None,
                    seed=seed)
    inputs[3] = torch.sigmoid(inputs[3].detach()).requires_grad_()
    fused_inputs = [None if t is None else t.detach().float().requires_grad_() for t in inputs]
    out, copy = mb.gated_update_and_copy(*fused_inputs, norm=norm, activation="silu", copy_dtype=torch.float16)
    expected = ref.gated_update_reference(*inputs, norm, 1e-5, "silu", None)
    out_weight = torch.zeros(L, B, D, dtype=torch.float64) if copy_only else randn(L, B, D, seed=seed + 50)
    copy_weight = randn(L, B, D, seed=seed + 51).half()
    loss = (copy * copy_weight).double().sum()
    if not copy_only:
        loss = loss + (out.double() * out_weight).sum()
    loss.backward()
    (expected * (out_weight + copy_weight.double())).sum().backward()
    errors = {"out": largest_error(out, expected), "copy": largest_error(copy, out.detach().half()),
              "copy_dtype": float(copy.dtype != torch.float16)}
    for i, (f, e) in enumerate(zip(fused_inputs, inputs)):
        if e is not None:
            errors[f"grad{i}"] = largest_error(f.grad, e.grad)
    return errors


def check_update_opcheck(seed=17):
    """torch.library.opcheck of the gated update's operator with and without its copy (schema, autograd
    registration, fake tensors, AOT dispatch with dynamic shapes): the checks that did not succeed."""
    inputs = [t.float().requires_grad_() for t in leaves((L, B, D), (D,), (L, B, D), (L, B, D), (L, B, D), (D,), (D,),
                                                        seed=seed)]
    results = []
    for copy_dtype in (None, torch.float16):
        results += torch.library.opcheck(torch.ops.mega_fairseq.gated_update.default,
                                         (*inputs, 1, 1e-5, 1, 0.0, False, None, copy_dtype)).values()
    return {"failed": float(sum(result != "SUCCESS" for result in results))}


def check_dropout_statistics():
    """Keep fraction, the two values of the factors, seeds and sites giving different masks, the same
    seed the same mask, and feature masks shared over time."""
    like = torch.empty(40, 5, 48)
    p = 0.3
    first = mb.dropout_scales(like, torch.tensor([11]), p, 0)
    again = mb.dropout_scales(like, torch.tensor([11]), p, 0)
    other_seed = mb.dropout_scales(like, torch.tensor([12]), p, 0)
    other_site = mb.dropout_scales(like, torch.tensor([11]), p, 1)
    feature = mb.dropout_scales(like, torch.tensor([11]), p, 0, feature=True)
    values = set(first.unique().tolist())
    return {
        "keep_fraction": float((first > 0).double().mean()),
        "two_values": float(values == {0.0, 1.0 / (1.0 - p)} or values == {0.0, float(torch.tensor(1.0 / (1 - p)))}),
        "reproducible": float(torch.equal(first, again)),
        "seeds_differ": float(not torch.equal(first, other_seed)),
        "sites_differ": float(not torch.equal(first, other_site)),
        "feature_shared_over_time": float(torch.equal(feature, feature[:1].expand_as(feature))),
        "feature_keep_fraction": float((feature[0] > 0).double().mean()),
    }


# ------------------------------------------------------------------ modules: fused (float32) vs PyTorch path (float64)

DM, HM, ZM, NM, FM = 16, 12, 6, 4, 20


def module_pair(build, seed, **options):
    cfg = dict(embed_dim=DM, hidden_dim=HM, ffn_dim=FM, z_dim=ZM, n_dim=NM, max_positions=32, ema_impl="fft")
    cfg.update(options)
    fused = randomize_parameters_(build(MegaLayerConfig(block_impl="triton", **cfg)), seed)
    reference = build(MegaLayerConfig(block_impl="torch", **cfg)).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def run_module(module, inputs, weight, training):
    module.train(training)
    module.zero_grad()
    inputs = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in inputs]
    out = module(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out.double() * weight).sum().backward()
    grads = [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return [out] + grads + [p.grad for _, p in sorted(module.named_parameters())]


def compare_modules(build, inputs, seed, modes=("train",), **options):
    """Training mode without dropout (and eval mode with dropout configured, if asked): the fused module
    equals the PyTorch path (outputs, input gradients, every parameter gradient)."""
    errors = {}
    for mode, training, dropout in (("train", True, 0.0), ("eval", False, 0.3)):
        if mode not in modes:
            continue
        fused, reference = module_pair(build, seed, dropout=dropout, hidden_dropout=dropout,
                                       activation_dropout=dropout, **options)
        weight = randn(*inputs[0].shape, seed=seed + 99)
        fused_results = run_module(fused, [t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                           for t in inputs], weight, training)
        reference_results = run_module(reference, inputs, weight, training)
        errors[mode] = max(largest_error(a, b) for a, b in zip(fused_results, reference_results))
    return errors


def block_case(role, seed, length=9, **options):
    causal = role == "decoder"
    x = randn(length, B, DM, seed=seed)
    mask = random_padding_mask(B, length, seed=seed, min_real=2)
    return compare_modules(lambda cfg: MovingAverageGatedAttention(cfg, bidirectional=not causal, causal=causal),
                           [x, mask], seed, role=role, **options)


def cross_case(seed, prenorm):
    query, memory = randn(6, B, DM, seed=seed), randn(5, B, DM, seed=seed + 1)
    memory_mask = random_padding_mask(B, 5, seed=seed)
    return compare_modules(lambda cfg: GatedCrossAttention(cfg, 32), [query, memory, memory_mask], seed,
                           role="decoder", prenorm=prenorm)


def ffn_case(seed, **options):
    x = randn(5, B, DM, seed=seed)
    return compare_modules(NormalizedFeedForward, [x, random_padding_mask(B, 5, seed=seed)], seed, **options)


def compiled_and_eager(module, make_inputs, lengths, seed):
    """Largest difference of outputs and all gradients between ``module`` compiled with fullgraph=True,
    dynamic=True (aot_eager) and eager, in training mode with dropout (same torch seed before both calls),
    over several input lengths; and the number of graphs compiled."""
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=True)
    errors, graphs_before = [], dynamo.utils.counters["stats"]["unique_graphs"]
    for length in lengths:
        inputs = make_inputs(length)
        results = []
        for fn in (compiled, module):
            module.zero_grad()
            leaves_ = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
            torch.manual_seed(seed)
            out = fn(*leaves_)
            out = out[0] if isinstance(out, tuple) else out
            (out * randn(*out.shape, seed=seed).float()).sum().backward()
            results.append([out] + [t.grad for t in leaves_ if t.is_floating_point()]
                           + [p.grad for p in module.parameters()])
        errors += [largest_error(a, b) for a, b in zip(*results)]
    return {"largest": max(errors), "graphs": float(dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before)}


def check_compiled_block(seed=31):
    """The decoder's Mega block (mega_gates, reset_product, gated_update with the post-norm) compiled at
    two lengths with one graph, equal to eager with dropout on."""
    cfg = MegaLayerConfig(DM, HM, FM, ZM, NM, 4, max_positions=32, ema_impl="fft", block_impl="triton",
                          prenorm=False, role="decoder", dropout=0.2, hidden_dropout=0.2, attention_dropout=0.1)
    block = randomize_parameters_(MovingAverageGatedAttention(cfg, bidirectional=False, causal=True), seed).train()
    return compiled_and_eager(block, lambda length: [randn(length, B, DM, seed=seed + length).float(),
                                                     random_padding_mask(B, length, seed=seed)], (9, 13), seed)


class CrossAndFeedForwardOps(torch.nn.Module):
    """cross_gates, bias_activation (batch-first and time-major), the un-gated update and a gated update with
    its copy in one function."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(2 * DM + ZM))
        self.value_bias = torch.nn.Parameter(torch.randn(HM))
        self.out_bias = torch.nn.Parameter(torch.randn(DM))

    def forward(self, base, values, h):
        u, r, q = mb.cross_gates(base, self.bias, ZM)
        seed = mb.draw_seed(base.device)
        v = mb.bias_activation(values, self.value_bias, activation="silu", dropout=0.2, feature_dropout=False,
                               seed=seed, batch_first=True)
        w = mb.bias_activation(values, self.value_bias, activation="gelu", dropout=0.0, feature_dropout=False,
                               seed=None)
        out = mb.gated_update(h, self.out_bias, None, None, u, activation="linear", dropout=0.3, seed=seed)
        out2, copy = mb.gated_update_and_copy(h, self.out_bias, None, r, u, copy_dtype=torch.float16)
        return out * r + q.transpose(0, 1).sum(-1, keepdim=True) + v.sum() + w.sum() + out2 * copy


def check_compiled_ops(seed=32):
    module = CrossAndFeedForwardOps()
    return compiled_and_eager(module, lambda length: [randn(length, B, 2 * DM + ZM, seed=seed).float(),
                                                      randn(length, B, HM, seed=seed + 1).float(),
                                                      randn(length, B, DM, seed=seed + 2).float()], (5, 8), seed)


class LaunchCounter(TorchDispatchMode):
    """Counts the operations that launch a GPU kernel: ATen operations other than views, allocations
    and host-only ones, and Triton kernels (by name); the interpreter's own copies are not counted."""

    NO_KERNEL = {"view", "_unsafe_view", "transpose", "t", "permute", "expand", "split", "split_with_sizes", "unbind",
                 "slice", "select", "unsqueeze", "squeeze", "as_strided", "detach", "alias", "empty", "empty_like",
                 "new_empty", "empty_strided", "new_empty_strided", "reshape", "promote_types", "randint",
                 "_local_scalar_dense", "lift_fresh"}

    def __init__(self):
        super().__init__()
        self.aten, self.triton, self.inside_kernel = 0, {}, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_kernel and func.overloadpacket.__name__ not in self.NO_KERNEL:
            self.aten += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter, original = self, InterpretedFunction.run

        def run(kernel, *args, **kwargs):
            counter.triton[kernel.fn.__name__] = counter.triton.get(kernel.fn.__name__, 0) + 1
            counter.inside_kernel = True
            try:
                return original(kernel, *args, **kwargs)
            finally:
                counter.inside_kernel = False
        self.original, InterpretedFunction.run = original, run
        return super().__enter__()

    def __exit__(self, *exc):
        InterpretedFunction.run = self.original
        return super().__exit__(*exc)

    def total(self):
        return float(self.aten + sum(self.triton.values()))


def check_launches():
    """Launches of a post-norm NFFN (all of them) and the fused kernels of a Mega block (the EMA and the
    attention, other ops, left out), forward and backward in training mode with dropout."""
    cfg = MegaLayerConfig(DM, HM, FM, ZM, NM, -1, max_positions=32, ema_impl="fft", block_impl="triton",
                          prenorm=False, dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1)
    results = {}
    for name, module in (("ffn", NormalizedFeedForward(cfg)),
                         ("block", MovingAverageGatedAttention(cfg, bidirectional=True, causal=False))):
        x = torch.randn(5, B, DM, requires_grad=True)
        with LaunchCounter() as forward:
            out = module.train()(x)
        out = out[0] if isinstance(out, tuple) else out
        grad = torch.randn_like(out)  # contiguous, as from the next layer
        with LaunchCounter() as backward:
            out.backward(grad)
        if name == "ffn":
            results.update(ffn_forward=forward.total(), ffn_backward=backward.total())
        else:
            results.update(block_forward_kernels=float(sum(forward.triton.values())),
                           block_backward_kernels=float(sum(backward.triton.values())))
    return results


def check_layer_copies(role, seed=33):
    """A post-norm layer on the fused path under float16 autocast (CPU) with each sub-layer's output copied
    for the next projection by its kernel (the default) and with the copies off (autocast's casts): the
    same outputs and gradients (largest difference), and the ATen launches the copies save."""
    cfg = MegaLayerConfig(DM, HM, FM, ZM, NM, 4, max_positions=32, ema_impl="fft", block_impl="triton",
                          prenorm=False, role=role)
    layer = MegaEncoderLayer(cfg) if role == "encoder" else MegaDecoderLayer(cfg, 32)
    randomize_parameters_(layer, seed).train()
    inputs = [randn(9, B, DM, seed=seed).float(), random_padding_mask(B, 9, seed=seed)]
    if role == "decoder":
        inputs = [inputs[0], randn(7, B, DM, seed=seed + 1).float(), random_padding_mask(B, 7, seed=seed + 1)]
    results, launches = [], []
    for copies in (True, False):
        layer.pass_copies = copies
        layer.zero_grad()
        leaves_ = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
        with LaunchCounter() as forward, torch.autocast("cpu", dtype=torch.float16):
            out = layer(*leaves_)
        out = out[0] if isinstance(out, tuple) else out
        with LaunchCounter() as backward:
            (out.float() * randn(*out.shape, seed=seed + 2).float()).sum().backward()
        results.append([out] + [t.grad for t in leaves_ if t.is_floating_point()]
                       + [p.grad for p in layer.parameters()])
        launches.append((forward.aten, backward.aten))
    layer.pass_copies = True
    return {"largest": max(largest_error(a, b) for a, b in zip(*results)),
            "forward_launches_saved": float(launches[1][0] - launches[0][0]),
            "backward_launches_saved": float(launches[1][1] - launches[0][1])}


def main():
    set_tiles(SMALL_TILES)
    results = {
        "mega_gates_silu_dropout": check_mega_gates("silu", 0.3, False, 1),
        "mega_gates_gelu_feature_dropout": check_mega_gates("gelu", 0.25, True, 2),
        "mega_gates_relu": check_mega_gates("relu", 0.0, False, 3),
        "cross_gates": check_cross_gates(4),
        "reset_product": check_reset_product(5),
        "bias_activation_silu_dropout": check_bias_activation("silu", 0.3, False, False, 6),
        "bias_activation_batch_first_feature": check_bias_activation("gelu_accurate", 0.2, True, True, 7),
        "bias_activation_tanh": check_bias_activation("tanh", 0.0, False, True, 8),
        "bias_activation_linear": check_bias_activation("linear", 0.1, False, False, 9),
        "update_layernorm_hx_dropout": check_gated_update("layernorm", True, True, True, "silu", 0.3, False, 10),
        "update_rmsnorm_feature": check_gated_update("rmsnorm", True, False, True, "gelu", 0.2, True, 11),
        "update_scalenorm_residual": check_gated_update("scalenorm", True, False, False, "linear", 0.25, False, 12),
        "update_layernorm_plain": check_gated_update("layernorm", False, False, False, "relu", 0.0, False, 13),
        "update_no_norm": check_gated_update("none", False, True, True, "tanh", 0.0, False, 14),
        "update_copy_layernorm": check_gated_update_copy("layernorm", False, 15),
        "update_copy_alone_rmsnorm": check_gated_update_copy("rmsnorm", True, 16),
        "update_opcheck": check_update_opcheck(),
        "dropout": check_dropout_statistics(),
        "launches": check_launches(),
    }
    set_tiles(DEFAULT_TILES)
    results.update({
        "encoder_block_postnorm": block_case("encoder", 20, prenorm=False, modes=("train", "eval")),
        "encoder_block_chunked_prenorm": block_case("encoder", 21, length=10, prenorm=True, chunk_size=4),
        "decoder_block_chunked_postnorm": block_case("decoder", 22, length=11, prenorm=False, chunk_size=4),
        "decoder_block_prenorm_rmsnorm": block_case("decoder", 23, prenorm=True, norm_type="rmsnorm"),
        "encoder_block_batchnorm_gelu": block_case("encoder", 24, prenorm=False, norm_type="batchnorm",
                                                   activation="gelu"),
        "cross_attention_postnorm": cross_case(25, prenorm=False),
        "cross_attention_prenorm": cross_case(26, prenorm=True),
        "ffn_postnorm": ffn_case(27, prenorm=False, modes=("train", "eval")),
        "ffn_prenorm": ffn_case(28, prenorm=True),
        "ffn_scalenorm": ffn_case(29, prenorm=False, norm_type="scalenorm"),
        "encoder_layer_copies": check_layer_copies("encoder"),
        "decoder_layer_copies": check_layer_copies("decoder"),
        "compiled_block": check_compiled_block(),
        "compiled_ops": check_compiled_ops(),
    })
    print(json.dumps(results))


if __name__ == "__main__":
    main()
