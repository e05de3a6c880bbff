"""The fused Triton EMA: selection logic (CPU), the kernels through Triton's interpreter (CPU,
when triton is installed) and on a GPU (marked gpu) against the FFT reference path."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mega_fairseq.modules import MegaConfigError, MegaLayerConfig, MultiDimensionalEMA
from mega_fairseq.ops import triton as ops_triton
from mega_fairseq.ops.triton import ema_scan as ema_triton
from reference import randn, random_padding_mask, randomize_parameters_

HERE = os.path.dirname(os.path.abspath(__file__))
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


@pytest.mark.parametrize("length, programs", [(1, 1), (100, 16), (4096, 256), (65536, 256), (65536, 1)])
def test_chunk_length_is_a_power_of_two_that_fills_the_machine(length, programs):
    chunk = ema_triton.chunk_length(length, programs)
    assert chunk >= 64 and chunk & (chunk - 1) == 0
    chunks = -(-length // chunk)
    assert chunk == 64 or programs * chunks * 2 > ema_triton.TARGET_PROGRAMS
    assert chunks * programs <= max(ema_triton.TARGET_PROGRAMS, programs)


def test_scan_terms_cover_directions_and_truncation():
    ema = MultiDimensionalEMA(3, 2, bidirectional=True, truncation=5)
    assert [(t.reverse, t.shift) for t in ema.scan_terms(4)] == [(False, 0), (True, 0)]
    assert [(t.reverse, t.shift) for t in ema.scan_terms(9)] == [(False, 0), (True, 0), (False, 5), (True, 5)]
    assert all(t.q.shape == (3, 2) for t in ema.scan_terms(9))


# ------------------------------------------------------------------ kernels through the interpreter (CPU)


@needs_triton
def test_kernels_in_triton_interpreter_match_float64_reference():
    """Forward, dx and all parameter gradients (causal, bidirectional, truncated, padded, several
    chunks, channels not a multiple of the block) and the carried state, in float32; a whole encoder
    layer (outputs and gradients) against the same layer on the FFT path; a decoder layer fed step
    by step against its full forward pass; the encoder layer compiled with dynamic shapes (the fused
    EMA between compiled graphs) against the eager layer."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, os.path.join(HERE, "ema_interpreted.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(results) == {"causal", "causal_truncated_padded", "bidirectional_padded",
                            "bidirectional_truncated", "carried_state", "encoder_layer", "decoder_steps",
                            "compiled_encoder_layer"}
    for case, errors in results.items():
        tolerance = 1e-5 if case == "encoder_layer" else 2e-6  # float32 through norms and attention
        for name, error in errors.items():
            assert error < tolerance, (case, name, error)


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
    return [y.float(), x.grad.float()] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.gpu
@needs_gpu
@needs_triton
@pytest.mark.parametrize("length, batch, dim, bidirectional, truncation, padded", [
    (1, 2, 32, False, None, False),
    (1000, 3, 64, True, None, True),
    (4097, 2, 48, False, 2048, False),
    (777, 4, 1024, True, 300, True),
    (20000, 1, 40, True, None, False),
])
def test_fused_matches_fft_on_gpu(length, batch, dim, bidirectional, truncation, padded):
    fused, fft = _pair(dim, 16, bidirectional, truncation, seed=length)
    x = randn(length, batch, dim, seed=1).cuda()
    mask = random_padding_mask(batch, length, seed=2).cuda() if padded else None
    weight = randn(length, batch, dim, seed=3).cuda()
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 3e-2)):
        for module in (fused, fft):
            module.zero_grad()
        for name, a, b in zip(["y", "dx", "alpha", "delta", "beta", "gamma", "omega"],
                              _grads(fused, x, mask, weight, dtype), _grads(fft, x, mask, weight, dtype)):
            error = float((a - b).abs().max() / b.abs().max().clamp(min=1.0))
            assert error < tol, (dtype, name, error)


@pytest.mark.gpu
@needs_gpu
@needs_triton
def test_fused_carried_state_on_gpu():
    fused, fft = _pair(64, 16, False, None, seed=0)
    x = randn(300, 2, 64, seed=1).cuda()
    states = {}, {}
    with torch.no_grad():
        outputs = [torch.cat([m(x[:1], state=s), m(x[1:129], state=s), m(x[129:], state=s)])
                   for m, s in zip((fused, fft), states)]
        assert fused.use_fused(x, states[0])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states[0]["ema_hidden"], states[1]["ema_hidden"], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ compilation for an H100 (CPU)


@needs_triton
def test_kernels_compile_for_h100_with_half_precision_inputs():
    """Every kernel compiles to an sm_90a cubin (ptxas ships with triton; no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    scan = {"TC": 64, "N": 16, "BLOCK": 32}
    states = ["*fp32"] * 2
    kernels = [
        (ema_triton._chunk_states_kernel, ["*bf16", "*fp32"] + states + ["i32"] * 5,
         dict(scan, REVERSE=True, NEED_V=True)),
        (ema_triton._chunk_prefix_kernel, ["*fp32"] * 9 + ["i32"] * 2,
         dict(scan, NUM_CHUNKS=3, NEED_V=True, HAS_H0=True, STORE_FINAL=True)),
        (ema_triton._chunk_outputs_kernel, ["*bf16", "*bf16"] + ["*fp32"] * 4 + ["i32"] * 6,
         dict(scan, REVERSE=False, ACCUMULATE=True)),
        (ema_triton._param_grads_kernel, ["*bf16", "*bf16"] + ["*fp32"] * 5 + ["i32"] * 7,
         dict(scan, REVERSE=False)),
        (ema_triton._residual_silu_kernel, ["*bf16", "*bf16", "*fp32", "*fp32", "i64", "i32"], {"BLOCK": 1024}),
        (ema_triton._residual_silu_backward_kernel, ["*fp32", "*bf16", "*bf16", "*fp32", "*bf16", "*bf16", "*fp32",
                                                     "i32", "i32"], {"ROWS": 32, "BLOCK": 64}),
    ]
    for kernel, types, constants in kernels:
        names = [name for name in kernel.arg_names if name not in constants]
        assert len(names) == len(types), kernel.fn.__name__
        signature = dict(zip(names, types), **{name: "constexpr" for name in constants})
        compiled = triton_compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
        assert compiled.asm["cubin"], kernel.fn.__name__
