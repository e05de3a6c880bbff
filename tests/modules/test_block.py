"""Mega block, cross-attention, NFFN and layers against the float64 references of docs/math.md (ops/block_ref.py)."""
import os
import subprocess
import sys

import pytest
import torch

from mega_fairseq.modules import (GatedCrossAttention, MegaDecoderLayer, MegaEncoderLayer, MegaLayerConfig,
                                  MovingAverageGatedAttention, NormalizedFeedForward)
from reference import (TOL, cross_attention_reference, decoder_layer_reference, encoder_layer_reference,
                       generator, mega_block_reference, nffn_reference, randn, random_padding_mask,
                       randomize_parameters_)

D, H, Z, N, FFN = 8, 6, 4, 3, 10
MAX_POSITIONS = 40
FUNCTIONS = ["softmax", "laplace", "relu2"]
ROLES = {"encoder": dict(bidirectional=True, causal=False), "decoder": dict(bidirectional=False, causal=True)}


def config(**options) -> MegaLayerConfig:
    values = dict(embed_dim=D, hidden_dim=H, ffn_dim=FFN, z_dim=Z, n_dim=N, max_positions=MAX_POSITIONS)
    values.update(options)
    return MegaLayerConfig(**values)


def build(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """float64, O(1) random parameters, eval mode (dropout is 0 anyway)."""
    return randomize_parameters_(module.double(), seed, scale=0.5).eval()


def make_block(role="encoder", seed=0, **options) -> MovingAverageGatedAttention:
    return build(MovingAverageGatedAttention(config(role=role, **options), **ROLES[role]), seed)


def assert_close(actual, expected, tol=TOL):
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol)


def random_split(length: int, seed: int):
    """Random step sizes (>= 1) adding up to ``length``."""
    g = generator(seed)
    sizes = []
    while sum(sizes) < length:
        sizes.append(min(int(torch.randint(1, 8, (1,), generator=g)), length - sum(sizes)))
    return sizes


def real_positions(mask):
    """(B, L) padding mask -> (L, B) bool selecting real positions of a time-major tensor."""
    return ~mask.t()


# ------------------------------------------------------------------ Mega block vs reference


@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_block_matches_reference(role, attention_fn, rel_pos_bias, prenorm, chunk_size):
    seed = len(attention_fn) + 3 * prenorm + chunk_size
    block = make_block(role, seed, attention_fn=attention_fn, rel_pos_bias=rel_pos_bias, prenorm=prenorm,
                       chunk_size=chunk_size)
    x = randn(13, 3, D, seed=seed)
    mask = random_padding_mask(3, 13, seed=seed, min_real=2)
    out, _ = block(x, mask)
    expected = mega_block_reference(block, x, mask)
    assert out.shape == x.shape
    real = real_positions(mask)
    assert_close(out[real], expected[real], TOL)


@pytest.mark.parametrize("role", ["encoder", "decoder"])
@pytest.mark.parametrize("length, chunk_size", [(1, -1), (1, 3), (7, 3), (7, 16), (33, 4), (33, -1), (12, 1)])
def test_block_lengths_and_chunks(role, length, chunk_size):
    block = make_block(role, length, attention_fn="laplace", chunk_size=chunk_size)
    x = randn(length, 2, D, seed=length)
    mask = random_padding_mask(2, length, seed=length)
    real = real_positions(mask)
    assert_close(block(x, mask)[0][real], mega_block_reference(block, x, mask)[real])
    assert_close(block(x)[0], mega_block_reference(block, x))


@pytest.mark.parametrize("role", ["encoder", "decoder"])
@pytest.mark.parametrize("norm_type, training", [("scalenorm", False), ("rmsnorm", False), ("batchnorm", True),
                                                 ("batchnorm", False), ("syncbatchnorm", True)])
@pytest.mark.parametrize("prenorm", [True, False])
def test_block_norm_types(role, norm_type, training, prenorm):
    block = make_block(role, 5, attention_fn="relu2", norm_type=norm_type, prenorm=prenorm, chunk_size=3)
    block.train(training)
    x = randn(11, 3, D, seed=5)
    mask = random_padding_mask(3, 11, seed=5, min_real=2)
    real = real_positions(mask)
    assert_close(block(x, mask)[0][real], mega_block_reference(block, x, mask)[real])


@pytest.mark.parametrize("truncation", [1, 4])
def test_block_with_ema_truncation(truncation):
    block = make_block("encoder", 6, attention_fn="laplace", truncation=truncation)
    x = randn(9, 2, D, seed=6)
    assert_close(block(x)[0], mega_block_reference(block, x))


# ------------------------------------------------------------------ padding invariance (encoder)


def assert_padding_invariant(forward, length=11, extra=5, seed=0, tol=TOL):
    """Appending pad tokens, or changing what the pads hold, leaves real outputs unchanged."""
    x = randn(length, 3, D, seed=seed)
    mask = random_padding_mask(3, length, seed=seed, min_real=2)
    real = real_positions(mask)
    out = forward(x, mask)
    longer = torch.cat([x, randn(extra, 3, D, seed=seed + 1) * 10])
    longer_mask = torch.cat([mask, torch.ones(3, extra, dtype=torch.bool)], dim=1)
    assert_close(forward(longer, longer_mask)[:length][real], out[real], tol)
    changed = torch.where(mask.t().unsqueeze(-1), randn(length, 3, D, seed=seed + 2) * 10, x)
    assert_close(forward(changed, mask)[real], out[real], tol)


@pytest.mark.parametrize("norm_type", ["layernorm", "batchnorm"])
@pytest.mark.parametrize("chunk_size", [-1, 3, 4])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_encoder_block_padding_invariance(attention_fn, chunk_size, norm_type):
    block = make_block("encoder", 7, attention_fn=attention_fn, chunk_size=chunk_size, norm_type=norm_type,
                       prenorm=norm_type == "layernorm").train()
    assert_padding_invariant(lambda x, m: block(x, m)[0], seed=chunk_size + 10, tol=TOL)


@pytest.mark.parametrize("norm_type", ["layernorm", "batchnorm"])
@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_encoder_layer_padding_invariance(attention_fn, chunk_size, norm_type):
    layer = build(MegaEncoderLayer(config(attention_fn=attention_fn, chunk_size=chunk_size, norm_type=norm_type)), 8)
    layer.train()
    assert_padding_invariant(layer, seed=chunk_size + 20, tol=TOL)


# ------------------------------------------------------------------ incremental decoding


def decode_incrementally(module, x, mask, sizes, check_state=None):
    """Feed x (L, B, D) in steps of the given sizes with one state dict; returns the outputs."""
    state, outputs, start = {}, [], 0
    for size in sizes:
        step_mask = None if mask is None else mask[:, start:start + size]
        outputs.append(module(x[start:start + size], step_mask, state)[0])
        start += size
        if check_state is not None:
            check_state(state, start)
    return torch.cat(outputs)


def check_cache_bounded(chunk_size):
    def check(state, decoded):
        assert state["ema_hidden"].shape == (2, D, N)
        if chunk_size > 0:
            assert "keys" not in state or state["keys"].size(1) < chunk_size
            assert ("keys" in state) == (decoded % chunk_size != 0)
            if "keys" in state:
                assert state["keys"].size(1) == decoded % chunk_size
                assert state["values"].size(1) == decoded % chunk_size
        else:
            assert state["keys"].size(1) == decoded
    return check


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("steps", ["tokens", "random"])
@pytest.mark.parametrize("chunk_size", [-1, 1, 3, 4, 16])
@pytest.mark.parametrize("attention_fn", ["softmax", "laplace"])
def test_decoder_block_incremental_equals_full(attention_fn, chunk_size, steps, padded):
    length = 13
    block = make_block("decoder", chunk_size + 2, attention_fn=attention_fn, chunk_size=chunk_size)
    x = randn(length, 2, D, seed=chunk_size + 30)
    mask = random_padding_mask(2, length, seed=chunk_size + 3, min_real=3) if padded else None
    sizes = [1] * length if steps == "tokens" else random_split(length, seed=chunk_size + 40)
    out = decode_incrementally(block, x, mask, sizes, check_cache_bounded(chunk_size))
    full, _ = block(x, mask)
    assert_close(out, full, TOL)
    if padded:
        real = real_positions(mask)
        assert_close(out[real], mega_block_reference(block, x, mask)[real], TOL)


@pytest.mark.parametrize("chunk_size", [-1, 3])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_decoder_block_left_padding_incremental_equals_full(attention_fn, chunk_size):
    """Left padding: pad queries before every real key keep only the causal mask (docs/math.md, section 5), the
    laplace / relu2 normalizer is i + 1; incremental = full at every position, pads included."""
    length = 10
    block = make_block("decoder", 4, attention_fn=attention_fn, chunk_size=chunk_size)
    x = randn(length, 2, D, seed=4)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :1] = True
    full, _ = block(x, mask)
    assert torch.isfinite(full).all()
    out = decode_incrementally(block, x, mask, [1] * length, check_cache_bounded(chunk_size))
    assert_close(out, full, TOL)
    assert_close(decode_incrementally(block, x, mask, [3, 1, 4, 2]), full, TOL)
    real = real_positions(mask)
    assert_close(full[real], mega_block_reference(block, x, mask)[real], TOL)


@pytest.mark.parametrize("chunk_size", [-1, 4])
def test_decoder_block_steps_with_and_without_padding_mask(chunk_size):
    """Steps that pass no mask (no pads) mixed with steps that pass one: the cached key padding
    mask is extended with False for the mask-less steps."""
    length = 12
    block = make_block("decoder", 5, attention_fn="laplace", chunk_size=chunk_size)
    x = randn(length, 2, D, seed=5)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[1, 3] = mask[1, 9:] = True
    state, outputs, start = {}, [], 0
    for size in [2, 3, 1, 3, 3]:
        step_mask = mask[:, start:start + size]
        outputs.append(block(x[start:start + size], step_mask if step_mask.any() else None, state)[0])
        start += size
    full, _ = block(x, mask)
    assert_close(torch.cat(outputs), full)


def test_decoder_block_incremental_with_rotary_and_relu2():
    block = make_block("decoder", 3, attention_fn="relu2", rel_pos_bias="rotary", chunk_size=5, prenorm=False)
    x = randn(17, 2, D, seed=3)
    out = decode_incrementally(block, x, None, [2, 1, 6, 3, 5], check_cache_bounded(5))
    assert_close(out, block(x)[0])


def test_encoder_block_refuses_state():
    block = make_block("encoder")
    with pytest.raises(ValueError, match="causal"):
        block(randn(3, 2, D, seed=0), None, {})


# ------------------------------------------------------------------ gated cross-attention


def make_cross(seed=0, **options) -> GatedCrossAttention:
    return build(GatedCrossAttention(config(role="decoder", **options), MAX_POSITIONS), seed)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_cross_attention_matches_reference(attention_fn, rel_pos_bias, prenorm, padded):
    cross = make_cross(len(attention_fn), attention_fn=attention_fn, rel_pos_bias=rel_pos_bias, prenorm=prenorm)
    target, source = randn(7, 3, D, seed=1), randn(11, 3, D, seed=2)
    memory_mask = random_padding_mask(3, 11, seed=3) if padded else None
    out, weights = cross(target, source, memory_mask)
    assert weights.shape == (3, 7, 11)
    expected = cross_attention_reference(cross, target, source, memory_mask)
    assert_close(out, expected, TOL)
    if padded:
        assert torch.all(weights.masked_select(memory_mask.unsqueeze(1)) == 0.0)


@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_cross_attention_query_offset(attention_fn):
    """Queries at target positions offset ..: the bias of target i and source j uses i + offset."""
    cross = make_cross(4, attention_fn=attention_fn)
    target, source = randn(3, 2, D, seed=4), randn(9, 2, D, seed=5)
    out, _ = cross(target, source, query_offset=6)
    assert_close(out, cross_attention_reference(cross, target, source, query_offset=6), TOL)


@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_cross_attention_incremental_equals_full(attention_fn, rel_pos_bias):
    cross = make_cross(5, attention_fn=attention_fn, rel_pos_bias=rel_pos_bias)
    target, source = randn(9, 2, D, seed=6), randn(7, 2, D, seed=7)
    memory_mask = random_padding_mask(2, 7, seed=8)
    full, full_weights = cross(target, source, memory_mask)
    state, outputs, start = {}, [], 0
    for size in [1, 3, 1, 4]:
        memory = source if start == 0 else None  # the state holds the projected encoder output
        out, weights = cross(target[start:start + size], memory, memory_mask if start == 0 else None,
                             state=state, query_offset=start)
        assert_close(weights, full_weights[:, start:start + size], TOL)
        outputs.append(out)
        start += size
    assert_close(torch.cat(outputs), full, TOL)


@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_cross_attention_fully_padded_source(attention_fn):
    """A batch row whose source is all padding: softmax leaves it unmasked, laplace / relu2 give
    zero weights; no NaN; the other rows are unaffected."""
    cross = make_cross(6, attention_fn=attention_fn)
    target, source = randn(4, 2, D, seed=8), randn(5, 2, D, seed=9)
    memory_mask = torch.zeros(2, 5, dtype=torch.bool)
    memory_mask[1] = True
    out, weights = cross(target, source, memory_mask)
    assert torch.isfinite(out).all()
    assert_close(out, cross_attention_reference(cross, target, source, memory_mask), TOL)
    if attention_fn != "softmax":
        assert torch.all(weights[1] == 0.0)
    assert_close(out[:, 0], cross(target[:, :1], source[:, :1])[0][:, 0], TOL)


@pytest.mark.parametrize("norm_type", ["batchnorm", "rmsnorm"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_cross_attention_norms_use_target_padding(norm_type, prenorm):
    cross = make_cross(7, attention_fn="relu2", norm_type=norm_type, prenorm=prenorm).train()
    target, source = randn(6, 3, D, seed=10), randn(5, 3, D, seed=11)
    mask, memory_mask = random_padding_mask(3, 6, seed=10), random_padding_mask(3, 5, seed=11)
    out, _ = cross(target, source, memory_mask, mask)
    real = real_positions(mask)
    expected = cross_attention_reference(cross, target, source, memory_mask, mask)
    assert_close(out[real], expected[real])


def test_cross_attention_shape_errors():
    cross = make_cross()
    with pytest.raises(ValueError, match=rf"\(T, B, {D}\)"):
        cross(randn(3, 2, D + 1, seed=0), randn(4, 2, D, seed=1))
    with pytest.raises(ValueError, match=rf"\(S, 2, {D}\)"):
        cross(randn(3, 2, D, seed=0), randn(4, 3, D, seed=1))
    with pytest.raises(ValueError, match="encoder output"):
        cross(randn(3, 2, D, seed=0), None)


# ------------------------------------------------------------------ NFFN and layers


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "batchnorm"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_normalized_feed_forward(prenorm, norm_type):
    nffn = build(NormalizedFeedForward(config(prenorm=prenorm, norm_type=norm_type)), 9).train()
    x = randn(7, 3, D, seed=9)
    mask = random_padding_mask(3, 7, seed=9)
    real = real_positions(mask)
    assert_close(nffn(x, mask)[real], nffn_reference(nffn, x, mask)[real])


@pytest.mark.parametrize("chunk_size", [-1, 4])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_encoder_layer_matches_reference(attention_fn, chunk_size):
    layer = build(MegaEncoderLayer(config(attention_fn=attention_fn, chunk_size=chunk_size)), 10)
    x = randn(13, 3, D, seed=10)
    mask = random_padding_mask(3, 13, seed=10)
    real = real_positions(mask)
    assert_close(layer(x, mask)[real], encoder_layer_reference(layer, x, mask)[real], TOL)


def test_layers_without_ffn():
    assert MegaEncoderLayer(config(ffn_dim=0)).nffn is None
    layer = build(MegaDecoderLayer(config(ffn_dim=0, role="decoder", attention_fn="laplace")), 11)
    assert layer.nffn is None and layer.cross_attn is None
    x = randn(6, 2, D, seed=11)
    assert_close(layer(x)[0], decoder_layer_reference(layer, x))


def make_decoder_layer(seed, **options) -> MegaDecoderLayer:
    return build(MegaDecoderLayer(config(role="decoder", **options), cross_max_positions=MAX_POSITIONS), seed)


@pytest.mark.parametrize("chunk_size", [-1, 3])
@pytest.mark.parametrize("attention_fn", FUNCTIONS)
def test_decoder_layer_matches_reference(attention_fn, chunk_size):
    layer = make_decoder_layer(12, attention_fn=attention_fn, chunk_size=chunk_size)
    x, source = randn(10, 3, D, seed=12), randn(8, 3, D, seed=13)
    mask, source_mask = random_padding_mask(3, 10, seed=12), random_padding_mask(3, 8, seed=13)
    out, attn = layer(x, source, source_mask, mask)
    assert attn.shape == (3, 10, 8)
    real = real_positions(mask)
    expected = decoder_layer_reference(layer, x, source, source_mask, mask)
    assert_close(out[real], expected[real], TOL)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("steps", ["tokens", "random"])
@pytest.mark.parametrize("chunk_size", [-1, 3])
@pytest.mark.parametrize("attention_fn", ["softmax", "laplace"])
def test_decoder_layer_incremental_equals_full(attention_fn, chunk_size, steps, padded):
    layer = make_decoder_layer(14, attention_fn=attention_fn, chunk_size=chunk_size)
    length = 11
    x, source = randn(length, 2, D, seed=14), randn(6, 2, D, seed=15)
    source_mask = random_padding_mask(2, 6, seed=15)
    mask = random_padding_mask(2, length, seed=17, min_real=2) if padded else None
    full, full_attn = layer(x, source, source_mask, mask)
    sizes = [1] * length if steps == "tokens" else random_split(length, seed=16)
    self_state, cross_state, outputs, start = {}, {}, [], 0
    for size in sizes:
        step_mask = None if mask is None else mask[:, start:start + size]
        out, attn = layer(x[start:start + size], source, source_mask, step_mask, self_state=self_state,
                          cross_state=cross_state, position_offset=start)
        assert_close(attn, full_attn[:, start:start + size], TOL)
        outputs.append(out)
        start += size
        if chunk_size > 0:
            assert "keys" not in self_state or self_state["keys"].size(1) < chunk_size
    assert_close(torch.cat(outputs), full, TOL)


# ------------------------------------------------------------------ no fairseq needed


def test_modules_work_without_fairseq():
    """mega_fairseq.modules imports and runs with fairseq unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fairseq' or name.startswith('fairseq.'):\n"
        "            raise ImportError('fairseq blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from mega_fairseq.modules import MegaEncoderLayer, MegaLayerConfig\n"
        "layer = MegaEncoderLayer(MegaLayerConfig(embed_dim=8, hidden_dim=6, ffn_dim=8, z_dim=4, n_dim=2))\n"
        "assert layer(torch.randn(5, 2, 8)).shape == (5, 2, 8)\n"
        "assert not any(m == 'fairseq' or m.startswith('fairseq.') for m in sys.modules)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
