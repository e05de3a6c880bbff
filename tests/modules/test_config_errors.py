"""Bad options raise MegaConfigError naming the option; bad inputs raise ValueError naming the shape."""
import pytest
import torch

from mega_fairseq.modules import (GatedCrossAttention, MegaConfigError, MegaDecoderLayer, MegaEncoderLayer,
                                  MegaLayerConfig, MovingAverageGatedAttention, get_activation)
from reference import randn

D = 8
SMALL = dict(embed_dim=D, hidden_dim=6, ffn_dim=10, z_dim=4, n_dim=2, max_positions=8)


def config(**options) -> MegaLayerConfig:
    return MegaLayerConfig(**{**SMALL, **options})


def test_config_error_is_a_value_error():
    assert issubclass(MegaConfigError, ValueError)
    config()  # the small configuration itself is valid


@pytest.mark.parametrize("options, option_name", [
    (dict(attention_fn="sigmoid"), "--attention-activation-fn"),
    (dict(norm_type="groupnorm"), "--normalization-type"),
    (dict(rel_pos_bias="alibi"), "--rel-pos-bias"),
    (dict(activation="swish"), "--activation-fn"),
    (dict(chunk_size=0), "--encoder-chunk-size"),
    (dict(chunk_size=-2), "--encoder-chunk-size"),
    (dict(chunk_size=0, role="decoder"), "--decoder-chunk-size"),
    (dict(chunk_size=-2, role="decoder"), "--decoder-chunk-size"),
    (dict(rel_pos_bias="rotary", z_dim=5), "z-dim"),
    (dict(rel_pos_bias="rotary", z_dim=5, role="decoder"), "--decoder-z-dim"),
    (dict(embed_dim=0), "--encoder-embed-dim"),
    (dict(hidden_dim=-1), "--encoder-hidden-dim"),
    (dict(z_dim=0), "--encoder-z-dim"),
    (dict(n_dim=0), "--encoder-n-dim"),
    (dict(n_dim=-3, role="decoder"), "--decoder-n-dim"),
    (dict(ffn_dim=-1), "--encoder-ffn-embed-dim"),
    (dict(max_positions=0), "max"),
    (dict(truncation=-1), "--truncation-length"),
    (dict(dropout=1.0), "--dropout"),
    (dict(dropout=-0.1), "--dropout"),
    (dict(attention_dropout=1.5), "--attention-dropout"),
    (dict(hidden_dropout=-0.5), "--hidden-dropout"),
    (dict(activation_dropout=1.0), "--activation-dropout"),
])
def test_bad_option_raises_naming_the_option(options, option_name):
    with pytest.raises(MegaConfigError, match=option_name):
        config(**options)


@pytest.mark.parametrize("options", [dict(chunk_size=-1), dict(chunk_size=1), dict(truncation=0),
                                     dict(rel_pos_bias="rotary", z_dim=6), dict(ffn_dim=0), dict(dropout=0.0),
                                     dict(attention_fn="relu2", norm_type="syncbatchnorm", activation="gelu")])
def test_good_options_accepted(options):
    config(**options)


def test_unknown_activation_function():
    with pytest.raises(MegaConfigError, match="--activation-fn"):
        get_activation("swish")


# ------------------------------------------------------------------ input shapes


@pytest.mark.parametrize("make", [
    lambda: MovingAverageGatedAttention(config(), bidirectional=True, causal=False),
    lambda: MovingAverageGatedAttention(config(), bidirectional=False, causal=True),
    lambda: MegaEncoderLayer(config()),
    lambda: MegaDecoderLayer(config(), cross_max_positions=8),
], ids=["encoder-block", "decoder-block", "encoder-layer", "decoder-layer"])
def test_wrong_width_raises_naming_the_expected_shape(make):
    module = make().double()
    with pytest.raises(ValueError, match=rf"\(L, B, {D}\).*\(5, 2, {D + 1}\)"):
        module(randn(5, 2, D + 1, seed=0))


def test_wrong_padding_mask_shape_raises():
    block = MovingAverageGatedAttention(config(), bidirectional=True, causal=False).double()
    with pytest.raises(ValueError, match=r"\(batch, length\) = \(2, 5\).*\(5, 2\)"):
        block(randn(5, 2, D, seed=0), torch.zeros(5, 2, dtype=torch.bool))


def test_cross_attention_wrong_widths():
    cross = GatedCrossAttention(config(role="decoder"), max_positions=8).double()
    with pytest.raises(ValueError, match=rf"\(T, B, {D}\)"):
        cross(randn(3, 2, D - 1, seed=0), randn(4, 2, D, seed=1))
    with pytest.raises(ValueError, match=rf"\(S, 2, {D}\).*\(4, 2, {D - 1}\)"):
        cross(randn(3, 2, D, seed=0), randn(4, 2, D - 1, seed=1))


# ------------------------------------------------------------------ lengths beyond the position bias


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
def test_unchunked_input_longer_than_max_positions_raises(causal, rel_pos_bias):
    block = MovingAverageGatedAttention(config(rel_pos_bias=rel_pos_bias), bidirectional=not causal,
                                        causal=causal).double()
    block(randn(8, 2, D, seed=0))  # max_positions itself is fine
    with pytest.raises(ValueError, match=r"9 positions.*\b8 positions"):
        block(randn(9, 2, D, seed=0))


def test_encoder_layer_input_longer_than_max_positions_raises():
    with pytest.raises(ValueError, match="positions"):
        MegaEncoderLayer(config()).double()(randn(12, 1, D, seed=0))


def test_chunked_input_may_exceed_max_positions():
    block = MovingAverageGatedAttention(config(chunk_size=4), bidirectional=True, causal=False).double()
    assert block(randn(21, 2, D, seed=0))[0].shape == (21, 2, D)


def test_incremental_decoding_past_max_positions_raises():
    block = MovingAverageGatedAttention(config(), bidirectional=False, causal=True).double()
    state = {}
    block(randn(6, 1, D, seed=0), None, state)
    block(randn(2, 1, D, seed=1), None, state)
    with pytest.raises(ValueError, match="positions"):
        block(randn(1, 1, D, seed=2), None, state)


def test_cross_attention_past_max_positions_raises():
    cross = GatedCrossAttention(config(role="decoder"), max_positions=8).double()
    with pytest.raises(ValueError, match="positions"):
        cross(randn(3, 1, D, seed=0), randn(9, 1, D, seed=1))
    with pytest.raises(ValueError, match="positions"):
        cross(randn(3, 1, D, seed=0), randn(4, 1, D, seed=1), query_offset=6)
