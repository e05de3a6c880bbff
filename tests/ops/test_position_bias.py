"""Relative position biases against the formulas (simple: Toeplitz lookup; rotary: sin/cos tables)."""
import pytest
import torch

from mega_fairseq.modules import (MegaConfigError, RotaryRelativePositionBias, SimpleRelativePositionBias,
                                  build_position_bias)
from mega_fairseq.ops import position_bias
from reference import randomize_parameters_, rotary_bias_reference, simple_bias_reference

# (max_positions, query_length, key_length, offset) with offset + Lq <= P and Lk <= P
SPANS = [(1, 1, 1, 0), (5, 5, 5, 0), (8, 3, 8, 5), (8, 1, 6, 5), (13, 7, 13, 2), (16, 16, 9, 0)]


def simple_bias(positions, seed=0):
    return randomize_parameters_(SimpleRelativePositionBias(positions).double(), seed, scale=1.0)


def rotary_bias(z_dim, positions, seed=0):
    return randomize_parameters_(RotaryRelativePositionBias(z_dim, positions).double(), seed, scale=1.0)


@pytest.mark.parametrize("positions, query_length, key_length, offset", SPANS)
def test_simple_bias_is_toeplitz_lookup(positions, query_length, key_length, offset):
    """bias[i, j] = w[P - 1 + j - i] for query positions offset .. offset + Lq - 1."""
    module = simple_bias(positions, seed=positions)
    expected = simple_bias_reference(module.weight, query_length, key_length, offset)
    out = module(query_length, key_length, offset)
    assert out.shape == (query_length, key_length)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("positions, query_length, key_length, offset", SPANS)
def test_simple_bias_gradient_sums_over_each_distance(positions, query_length, key_length, offset):
    module = simple_bias(positions, seed=positions)
    upstream = torch.randn(query_length, key_length, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(offset))
    (module(query_length, key_length, offset) * upstream).sum().backward()
    expected = torch.zeros(2 * positions - 1, dtype=torch.float64)
    for i in range(query_length):
        for j in range(key_length):
            expected[positions - 1 + j - (offset + i)] += upstream[i, j]
    torch.testing.assert_close(module.weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_simple_bias_under_compile_is_the_lookup_with_one_graph_for_all_lengths():
    """Under torch.compile the matrix is skewed out of the vector (symbolic lengths): values and the weight
    gradient equal the reference and the eager path at every span, traced once (dynamic shapes)."""
    traces = []

    def counting_backend(graph, inputs):
        traces.append(graph)
        return graph

    module = simple_bias(16, seed=3)
    compiled = torch.compile(lambda q, k, o: module(q, k, o), backend=counting_backend, dynamic=True, fullgraph=True)
    for positions, query_length, key_length, offset in [(16, 7, 13, 2), (16, 3, 9, 5), (16, 11, 16, 0), (16, 5, 5, 4)]:
        upstream = torch.randn(query_length, key_length, dtype=torch.float64)
        outputs = []
        for run in (compiled, module):
            module.weight.grad = None
            out = run(query_length, key_length, offset)
            (out * upstream).sum().backward()
            outputs.append((out.detach(), module.weight.grad.clone()))
        assert torch.equal(outputs[0][0], simple_bias_reference(module.weight, query_length, key_length, offset))
        torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-12, atol=1e-12)
    assert len(traces) <= 2, "one trace, plus one where a length 1 or equal lengths specialize"
    torch._dynamo.reset()


def test_simple_bias_uses_every_weight_once_per_distance():
    module = SimpleRelativePositionBias(4)
    with torch.no_grad():
        module.weight.copy_(torch.arange(7.0))
    expected = torch.tensor([[3.0, 4, 5, 6], [2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2, 3]])
    assert torch.equal(module(4, 4), expected)
    assert torch.equal(module(2, 4, offset=2), expected[2:])


@pytest.mark.parametrize("z_dim", [2, 4, 8, 16])
@pytest.mark.parametrize("positions, query_length, key_length, offset", SPANS)
def test_rotary_bias_matches_sin_cos_formula(z_dim, positions, query_length, key_length, offset):
    """rot(alpha, i) . rot(beta, j) with float64 sin/cos tables."""
    module = rotary_bias(z_dim, positions, seed=z_dim + positions)
    out = module(query_length, key_length, offset)
    assert out.shape == (query_length, key_length) and out.dtype == torch.float64
    expected = rotary_bias_reference(module.alpha, module.beta, query_length, key_length, offset)
    torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("z_dim", [2, 8])
def test_rotary_bias_depends_only_on_relative_position(z_dim):
    """rot(a, i) . rot(b, j) = a^T R(j - i) b: shifting both positions leaves the bias unchanged."""
    positions = 12
    module = rotary_bias(z_dim, positions, seed=3)
    full = module(positions, positions)
    for i in range(positions):
        for j in range(positions):
            for shift in range(-min(i, j), positions - max(i, j)):
                assert abs(full[i + shift, j + shift] - full[i, j]) < 1e-12
    # a query offset shifts the query rows only
    torch.testing.assert_close(module(4, positions, offset=5), full[5:9], rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["simple", "rotary"])
@pytest.mark.parametrize("query_length, key_length, offset", [(9, 8, 0), (8, 9, 0), (3, 8, 6), (1, 1, 8)])
def test_too_long_span_raises_naming_the_positions(kind, query_length, key_length, offset):
    module = build_position_bias(kind, 4, 8)
    longest = max(query_length + offset, key_length)
    with pytest.raises(ValueError, match=rf"{longest} positions.*\b8 positions"):
        module(query_length, key_length, offset)


@pytest.mark.parametrize("kind", ["simple", "rotary"])
def test_longest_allowed_span_works(kind):
    module = build_position_bias(kind, 4, 8)
    assert module(8, 8).shape == (8, 8)
    assert module(2, 8, offset=6).shape == (2, 8)


@pytest.mark.parametrize("z_dim", [1, 3, 7])
def test_rotary_odd_z_dim_raises_config_error(z_dim):
    with pytest.raises(MegaConfigError, match="z-dim"):
        RotaryRelativePositionBias(z_dim, 8)
    with pytest.raises(MegaConfigError, match="z-dim"):
        build_position_bias("rotary", z_dim, 8)


def test_unknown_bias_kind_and_bad_positions_raise_config_error():
    with pytest.raises(MegaConfigError, match="--rel-pos-bias"):
        build_position_bias("alibi", 4, 8)
    with pytest.raises(MegaConfigError):
        SimpleRelativePositionBias(0)


@pytest.mark.parametrize("positions, query_length, key_length, offset", SPANS[2:])
def test_simple_bias_in_row_blocks(monkeypatch, positions, query_length, key_length, offset):
    """Large biases are flipped in row blocks (a CUDA flip of a >= 4 GiB overlapping view fails):
    the same values and the same gradient as the one-kernel path."""
    module = simple_bias(positions, seed=positions + 1)
    upstream = torch.randn(query_length, key_length, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole = module(query_length, key_length, offset)
    (whole * upstream).sum().backward()
    whole_grad = module.weight.grad.clone()
    module.weight.grad = None
    monkeypatch.setattr(position_bias, "FLIP_BLOCK_ELEMENTS", 2 * key_length)
    blocked = module(query_length, key_length, offset)
    (blocked * upstream).sum().backward()
    assert torch.equal(blocked, whole)
    assert torch.equal(blocked, simple_bias_reference(module.weight, query_length, key_length, offset))
    assert torch.allclose(module.weight.grad, whole_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, z_dim", [("simple", 4), ("rotary", 2), ("rotary", 8)])
@pytest.mark.parametrize("positions, query_length, key_length, offset", SPANS)
def test_relative_vector_holds_the_bias_per_distance(kind, z_dim, positions, query_length, key_length, offset):
    """bias[i, j] = vector[P - 1 + j - (offset + i)] (the fused kernel's reading), values and gradients."""
    module = randomize_parameters_(build_position_bias(kind, z_dim, positions).double(), positions, scale=1.0)
    vector = module.relative_vector(max(offset + query_length, key_length))
    assert vector.shape == (2 * positions - 1,)
    rows = torch.arange(offset, offset + query_length).unsqueeze(1)
    read = vector[positions - 1 + torch.arange(key_length) - rows]
    expected = module(query_length, key_length, offset)
    torch.testing.assert_close(read, expected, rtol=0.0, atol=1e-12)
    upstream = torch.randn(query_length, key_length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = [torch.autograd.grad((m * upstream).sum(), list(module.parameters())) for m in (read, expected)]
    for grad, expected_grad in zip(*grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0.0, atol=1e-12)


def test_rotary_relative_vector_is_accurate_at_64k_positions():
    """Angles in float64: float32 parameters give the float64 bias to float32 rounding at distance 65535."""
    module = randomize_parameters_(RotaryRelativePositionBias(8, 65536), 0, scale=1.0).requires_grad_(False)
    vector = module.relative_vector(65536)
    exact = module.double()(1, 1, 65535)[0, 0]  # distance -65535, float64 angles
    assert abs(float(vector[0]) - float(exact)) < 1e-5 * float(module.alpha.abs().sum() * module.beta.abs().sum())


@pytest.mark.parametrize("kind", ["simple", "rotary"])
def test_relative_vector_checks_the_span(kind):
    module = build_position_bias(kind, 4, 8)
    assert module.relative_vector(8).shape == (15,)
    with pytest.raises(ValueError, match=r"9 positions.*\b8 positions"):
        module.relative_vector(9)
