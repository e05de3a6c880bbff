"""torch.compile: the Mega layers trace as one graph (no graph breaks) on the reference paths and
the compiled layer gives the eager output."""
import pytest
import torch
import torch._dynamo as dynamo

from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig
from reference import random_padding_mask


def config(chunk: int, role: str) -> MegaLayerConfig:
    return MegaLayerConfig(32, 64, 64, 16, 4, chunk, max_positions=64, role=role)


@pytest.mark.parametrize("chunk", [8, -1])
def test_encoder_layer_has_no_graph_break(chunk):
    layer = MegaEncoderLayer(config(chunk, "encoder")).eval()
    x, mask = torch.randn(37, 3, 32), random_padding_mask(3, 37, seed=0)
    explanation = dynamo.explain(layer)(x, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.parametrize("chunk", [8, -1])
def test_decoder_layer_has_no_graph_break(chunk):
    layer = MegaDecoderLayer(config(chunk, "decoder")).eval()
    x, memory = torch.randn(21, 2, 32), torch.randn(13, 2, 32)
    explanation = dynamo.explain(layer)(x, memory, random_padding_mask(2, 13, seed=1))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.slow
def test_compiled_encoder_layer_matches_eager():
    layer = MegaEncoderLayer(config(8, "encoder")).eval()
    x, mask = torch.randn(37, 3, 32), random_padding_mask(3, 37, seed=0)
    torch.testing.assert_close(torch.compile(layer)(x, mask), layer(x, mask), rtol=1e-5, atol=1e-5)
    dynamo.reset()
