"""torch.compile: the Mega layers trace as one graph (no graph breaks) on the reference paths and
the compiled layer gives the eager output."""
import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig
from reference import random_padding_mask


def config(chunk: int, role: str) -> MegaLayerConfig:
    return MegaLayerConfig(32, 64, 64, 16, 4, chunk, max_positions=64, role=role)


# chunked layers: traced whole (fullgraph) by test_aot_traced_layer_matches_eager_with_gradients below
@pytest.mark.parametrize("chunk", [-1])
def test_encoder_layer_has_no_graph_break(chunk):
    layer = MegaEncoderLayer(config(chunk, "encoder")).eval()
    x, mask = torch.randn(37, 3, 32), random_padding_mask(3, 37, seed=0)
    explanation = dynamo.explain(layer)(x, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.parametrize("chunk", [-1])
def test_decoder_layer_has_no_graph_break(chunk):
    layer = MegaDecoderLayer(config(chunk, "decoder")).eval()
    x, memory = torch.randn(21, 2, 32), torch.randn(13, 2, 32)
    explanation = dynamo.explain(layer)(x, memory, random_padding_mask(2, 13, seed=1))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_aot_traced_layer_matches_eager_with_gradients(role):
    """The layer traced whole (fullgraph) with dynamic shapes, its backward by AOT autograd (the tracing
    inductor compiles from; aot_eager runs the traced graphs without generating code): outputs and
    every gradient equal the eager layer's at three lengths, compiled once (the counter must not grow)."""
    torch.manual_seed(0)
    cfg = config(4, role)
    build = (lambda: MegaEncoderLayer(cfg)) if role == "encoder" else (lambda: MegaDecoderLayer(cfg, 64))
    eager = build().double()
    traced = build().double()
    traced.load_state_dict(eager.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    traced.compile(dynamic=True, fullgraph=True, backend=counter)
    compilations = []
    for length in (13, 22, 17):
        x = torch.randn(length, 2, 32, dtype=torch.float64)
        mask = random_padding_mask(2, length, seed=length)
        inputs = (x, mask) if role == "encoder" else (x, torch.randn(9, 2, 32, dtype=torch.float64), None, mask)
        results = []
        for layer in (traced, eager):
            layer.zero_grad()
            out = layer(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            out.square().mean().backward()
            results.append([out.detach()] + [p.grad for p in layer.parameters()])
        for actual, expected in zip(*results):
            torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
        compilations.append(counter.frame_count)
    assert compilations[0] > 0 and compilations == compilations[:1] * 3, compilations  # no recompilation
    dynamo.reset()


@pytest.mark.slow
def test_compiled_encoder_layer_matches_eager():
    """Inductor's CPU code (C++ compilation: slow) for the encoder layer equals eager."""
    layer = MegaEncoderLayer(config(8, "encoder")).eval()
    x, mask = torch.randn(37, 3, 32), random_padding_mask(3, 37, seed=0)
    torch.testing.assert_close(torch.compile(layer)(x, mask), layer(x, mask), rtol=1e-5, atol=1e-5)
    dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_inductor_compiled_layer_with_fused_ema_matches_eager_on_gpu(role):
    """As --compile-layers compiles them (in place, dynamic shapes, inductor), with the fused Triton
    EMA between the compiled graphs: outputs and gradients of the eager layer at several lengths."""
    torch.manual_seed(0)
    cfg = MegaLayerConfig(64, 128, 128, 32, 16, 16, max_positions=512, role=role, ema_impl="triton")
    build = (lambda: MegaEncoderLayer(cfg)) if role == "encoder" else (lambda: MegaDecoderLayer(cfg, 512))
    eager = build().cuda()
    compiled = build().cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(dynamic=True)
    for length in (37, 100, 300):
        x = torch.randn(length, 3, 64, device="cuda")
        mask = random_padding_mask(3, length, seed=length).cuda()
        inputs = (x, mask) if role == "encoder" else (x, torch.randn(29, 3, 64, device="cuda"), None, mask)
        results = []
        for layer in (compiled, eager):
            layer.zero_grad()
            out = layer(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            out.square().mean().backward()
            results.append([out.detach()] + [p.grad.clone() for p in layer.parameters() if p.grad is not None])
        for actual, expected in zip(*results):
            torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)
    dynamo.reset()
