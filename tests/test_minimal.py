"""mega_fairseq/minimal.py, the one-file Mega layer, equals the modules (MovingAverageGatedAttention then
NormalizedFeedForward, on the torch path) with the same parameters, in float64."""
import pytest
import torch

from mega_fairseq.minimal import mega_layer
from mega_fairseq.modules import MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig
from reference import randn, randomize_parameters_


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("prenorm", [False, True])
def test_minimal_layer_equals_the_modules(causal, chunk, prenorm):
    cfg = MegaLayerConfig(embed_dim=6, hidden_dim=10, ffn_dim=7, z_dim=4, n_dim=3, chunk_size=chunk, max_positions=16,
                          prenorm=prenorm, ema_impl="fft", attention_impl="matmul")
    layer = MegaDecoderLayer(cfg) if causal else MegaEncoderLayer(cfg)
    randomize_parameters_(layer.double().eval(), seed=chunk + 7 * causal)
    x = randn(12, 2, 6, seed=3)
    expected = layer(x)[0] if causal else layer(x)
    actual = mega_layer(x, dict(layer.named_parameters()), chunk=chunk, causal=causal, prenorm=prenorm)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
