"""MultiDimensionalEMA against the float64 loop references of mega_fairseq/ops/ema_ref.py."""
import math

import pytest
import torch

from mega_fairseq.modules import MegaConfigError, MultiDimensionalEMA
from reference import (TOL, ema_module_reference, ema_reference, generator, randn, random_padding_mask,
                       randomize_parameters_)

LENGTHS = [1, 7, 13, 33]
SEEDS = [0, 1]


def make_ema(dim=6, ndim=4, bidirectional=False, truncation=None, seed=0) -> MultiDimensionalEMA:
    """A float64 EMA with O(1) random parameters (alpha, delta spread so q covers (0, 1))."""
    ema = MultiDimensionalEMA(dim, ndim, bidirectional=bidirectional, truncation=truncation).double()
    return randomize_parameters_(ema, seed, scale=1.5)


def random_split(length: int, seed: int):
    """Random block sizes (>= 1) adding up to ``length``."""
    g = generator(seed)
    sizes = []
    while sum(sizes) < length:
        sizes.append(min(int(torch.randint(1, 10, (1,), generator=g)), length - sum(sizes)))
    return sizes


def assert_close(actual, expected, tol=TOL):
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol)


# ------------------------------------------------------------------ the reference itself


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_reference_recurrence_equals_direct_convolution(length, bidirectional):
    """Sanity check of the two reference forms (loop recurrence vs direct sum over lags)."""
    ema = make_ema(bidirectional=bidirectional, seed=length)
    x = randn(length, 2, 6, seed=length)
    recurrent, _ = ema_module_reference(ema, x, method="recurrence")
    direct, _ = ema_module_reference(ema, x, method="convolution")
    assert_close(recurrent, direct, 1e-12)


# ------------------------------------------------------------------ full-sequence paths


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", LENGTHS)
def test_fft_path_matches_recurrence_causal(length, batch, seed):
    ema = make_ema(seed=seed)
    x = randn(length, batch, 6, seed=100 + seed)
    expected, _ = ema_module_reference(ema, x)
    assert_close(ema(x), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
def test_bidirectional_matches_reference(length, seed):
    """Forward kernel on lags >= 0 plus backward kernel on lags >= 0 (docs/math.md, section 1)."""
    ema = make_ema(bidirectional=True, seed=seed)
    x = randn(length, 2, 6, seed=200 + seed)
    expected, _ = ema_module_reference(ema, x)
    assert_close(ema(x), expected)


def test_bidirectional_weighs_lag_zero_with_both_kernels():
    """With the backward kernel switched off (gamma = 0) the output is the causal EMA; with the
    forward one off, the last position sees only x[L-1], weighed by the backward kernel's lag 0."""
    ema = make_ema(dim=3, bidirectional=True, seed=5)
    causal = make_ema(dim=3, seed=5)
    x = randn(9, 2, 3, seed=6)
    with torch.no_grad():
        for name in ("alpha", "delta", "beta", "gamma"):
            getattr(causal, name).copy_(getattr(ema, name)[:3])
        causal.omega.copy_(ema.omega)
        ema.gamma[3:] = 0.0
    assert_close(ema(x), causal(x))
    with torch.no_grad():
        ema.gamma[:3] = 0.0
        ema.gamma[3:] = 1.0
    p = torch.sigmoid(ema.delta[3:])
    lag_zero = math.sqrt(1.0 / ema.ndim) * (p * ema.beta[3:]).sum(-1)
    assert_close(ema(x)[-1], torch.nn.functional.silu((lag_zero + ema.omega) * x[-1]))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("truncation", [1, 3, 5, 100])
@pytest.mark.parametrize("length", [7, 13, 33])
def test_truncation_matches_direct_truncated_convolution(length, truncation, bidirectional):
    ema = make_ema(bidirectional=bidirectional, truncation=truncation, seed=truncation)
    x = randn(length, 2, 6, seed=300 + length)
    expected, _ = ema_reference(x, ema.alpha, ema.delta, ema.beta, ema.gamma, ema.omega, bidirectional,
                                truncation, method="convolution")
    assert_close(ema(x), expected)


@pytest.mark.parametrize("truncation", [0, None])
def test_no_truncation_values(truncation):
    ema = make_ema(truncation=truncation)
    assert ema.truncation is None
    x = randn(13, 2, 6, seed=4)
    assert_close(ema(x), ema_module_reference(ema, x)[0])


@pytest.mark.parametrize("length", [7, 33])
def test_float32_module_close_to_float64_reference(length):
    ema = make_ema(bidirectional=True, seed=3)
    x = randn(length, 2, 6, seed=3)
    expected, _ = ema_module_reference(ema, x)
    out = ema.float()(x.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ incremental paths


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_incremental_one_step_equals_full(length, padded):
    ema = make_ema(seed=length)
    x = randn(length, 3, 6, seed=400 + length)
    mask = random_padding_mask(3, length, seed=length) if padded else None
    full = ema(x, mask)
    state = {}
    steps = [ema(x[t:t + 1], None if mask is None else mask[:, t:t + 1], state) for t in range(length)]
    assert_close(torch.cat(steps), full)
    expected, last_hidden = ema_module_reference(ema, x, mask)
    assert_close(torch.cat(steps), expected)
    assert_close(state["ema_hidden"], last_hidden)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("length", [13, 33])
def test_incremental_multi_step_equals_full(length, seed, padded):
    """Blocks of random sizes (e.g. 5, 1, 9, ...) with the carried state = one full pass."""
    ema = make_ema(seed=seed)
    x = randn(length, 2, 6, seed=500 + seed)
    mask = random_padding_mask(2, length, seed=seed) if padded else None
    state, outputs, start = {}, [], 0
    for size in random_split(length, seed):
        block_mask = None if mask is None else mask[:, start:start + size]
        outputs.append(ema(x[start:start + size], block_mask, state))
        start += size
        _, hidden = ema_module_reference(ema, x[:start], None if mask is None else mask[:, :start])
        assert_close(state["ema_hidden"], hidden)
    assert_close(torch.cat(outputs), ema(x, mask))
    assert_close(torch.cat(outputs), ema_module_reference(ema, x, mask)[0])


@pytest.mark.parametrize("truncation", [13, 40])
def test_incremental_equals_truncated_full_when_length_within_truncation(truncation):
    """The incremental path is the exact recurrence; it agrees with the truncated FFT path for
    sequences no longer than the truncation length (docs/math.md, section 5)."""
    ema = make_ema(truncation=truncation, seed=2)
    x = randn(13, 2, 6, seed=2)
    state = {}
    steps = [ema(x[start:start + size], state=state) for start, size in ((0, 1), (1, 5), (6, 7))]
    assert_close(torch.cat(steps), ema(x))


def test_incremental_path_is_not_truncated():
    ema = make_ema(truncation=3, seed=2)
    x = randn(13, 2, 6, seed=2)
    state = {}
    steps = torch.cat([ema(x[t:t + 1], state=state) for t in range(13)])
    untruncated, _ = ema_reference(x, ema.alpha, ema.delta, ema.beta, ema.gamma, ema.omega)
    assert_close(steps, untruncated)
    assert (ema(x) - untruncated).abs().max() > 1e-6  # while the full path is truncated


def test_multi_step_from_carried_state_matches_reference_recurrence():
    """Several steps at once from an arbitrary hidden state = the loop from that state."""
    ema = make_ema(seed=7)
    hidden = randn(2, 6, 4, seed=8)
    x = randn(9, 2, 6, seed=9)
    state = {"ema_hidden": hidden.clone()}
    expected, last = ema_module_reference(ema, x, hidden=hidden)
    assert_close(ema(x, state=state), expected)
    assert_close(state["ema_hidden"], last)


# ------------------------------------------------------------------ padding


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", [7, 13])
def test_padding_is_zeroed_before_the_ema(length, bidirectional):
    ema = make_ema(bidirectional=bidirectional, seed=length)
    x = randn(length, 3, 6, seed=600 + length)
    mask = random_padding_mask(3, length, seed=length)
    assert mask.any()
    expected, _ = ema_module_reference(ema, x, mask)
    out = ema(x, mask)
    assert_close(out, expected)
    # At pads the output is silu(y + omega * x) with x the input before zeroing.
    pads = mask.t()
    zeroed = x.clone()
    zeroed[pads] = 0.0
    differs = (out - ema(zeroed, mask))[pads]
    assert (differs.abs() > 0).any()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("extra", [1, 6])
def test_real_positions_ignore_appended_and_changed_pads(bidirectional, extra):
    length, batch = 11, 3
    ema = make_ema(bidirectional=bidirectional, seed=extra)
    x = randn(length, batch, 6, seed=700)
    mask = random_padding_mask(batch, length, seed=extra)
    real = ~mask.t()
    out = ema(x, mask)

    longer = torch.cat([x, randn(extra, batch, 6, seed=701)])
    longer_mask = torch.cat([mask, torch.ones(batch, extra, dtype=torch.bool)], dim=1)
    assert_close(ema(longer, longer_mask)[:length][real], out[real])

    changed = torch.where(mask.t().unsqueeze(-1), randn(length, batch, 6, seed=702) * 10, x)
    assert_close(ema(changed, mask)[real], out[real])


# ------------------------------------------------------------------ parameter roles


def test_parameter_roles_delta_input_weight_alpha_damping():
    """p = sigmoid(delta), q = 1 - p * sigmoid(alpha) (docs/math.md, section 1): for an impulse,
    y_0 = gamma * p * beta and y_t / y_{t-1} = q (D = N = 1, so scale = 1)."""
    ema = MultiDimensionalEMA(1, 1).double()
    alpha, delta, beta, gamma = 0.7, -1.3, 0.9, 1.1
    with torch.no_grad():
        ema.alpha.fill_(alpha)
        ema.delta.fill_(delta)
        ema.beta.fill_(beta)
        ema.gamma.fill_(gamma)
        ema.omega.fill_(0.0)
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    p, q = sigmoid(delta), 1.0 - sigmoid(delta) * sigmoid(alpha)
    x = torch.zeros(6, 1, 1, dtype=torch.float64)
    x[0] = 1.0
    out = ema(x).reshape(-1)
    expected = torch.tensor([gamma * p * beta * q ** t for t in range(6)], dtype=torch.float64)
    assert_close(out, torch.nn.functional.silu(expected), 1e-12)
    # q is symmetric in alpha and delta; swapping the roles would change y_0, and the chosen
    # values tell the two apart.
    assert abs(gamma * sigmoid(alpha) * beta - gamma * p * beta) > 0.1


# ------------------------------------------------------------------ errors


def test_bidirectional_ema_with_state_raises():
    ema = make_ema(bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        ema(randn(3, 2, 6, seed=0), state={})


def test_wrong_channel_count_raises_naming_the_shape():
    ema = make_ema(dim=6)
    with pytest.raises(ValueError, match=r"6 channels.*\(4, 2, 5\)"):
        ema(randn(4, 2, 5, seed=0))


@pytest.mark.parametrize("dim, ndim", [(0, 4), (4, 0), (-1, 4)])
def test_non_positive_sizes_raise(dim, ndim):
    with pytest.raises(MegaConfigError):
        MultiDimensionalEMA(dim, ndim)


@pytest.mark.parametrize("bidirectional, length", [(False, 13), (True, 7)])
def test_forward_and_input_under_autocast_on_the_fft_path(bidirectional, length):
    """Under bf16 autocast the EMA's output and the block's copy of x come in bf16 (the copy exactly x
    rounded, the output within bf16 error of the float32 one: autocast also lowers the FFT path's own
    products), with x's gradient summing both paths; without autocast x itself and the float32 output."""
    ema = make_ema(dim=5, ndim=4, bidirectional=bidirectional, seed=3).float()
    x = randn(length, 3, 5, seed=4).float().requires_grad_()
    mask = random_padding_mask(3, length, seed=5)
    plain, same_x = ema.forward_and_input(x, mask)
    assert same_x is x and plain.dtype == torch.float32
    weights = [randn(length, 3, 5, seed=6 + i).float() for i in range(2)]
    expected = torch.autograd.grad((plain * weights[0]).sum(), x)[0] + weights[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, x_copy = ema.forward_and_input(x, mask)
        assert ema(x, mask).dtype == torch.bfloat16
    assert out.dtype == x_copy.dtype == torch.bfloat16 and torch.equal(x_copy, x.detach().bfloat16())
    assert float((out.float() - plain).abs().max() / plain.abs().max()) < 3e-2
    ((out.float() * weights[0]).sum() + (x_copy.float() * weights[1]).sum()).backward()
    assert float((x.grad - expected).abs().max() / expected.abs().max()) < 3e-2


def test_forward_and_input_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(L, B, D\) with 6 channels.*\(4, 6\)"):
        make_ema(dim=6).forward_and_input(randn(4, 6, seed=0))
