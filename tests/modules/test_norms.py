"""SequenceNorm against the formulas; batch norms take statistics over non-pad positions only."""
import pytest
import torch
import torch.nn.functional as F

from mega_fairseq.modules import MegaConfigError, SequenceNorm
from reference import (TOL, batchnorm_reference, batchnorm_statistics_reference, layernorm_reference,
                       norm_reference, randn, random_padding_mask, randomize_parameters_, rms_scale_reference)

D = 6
BATCH_NORMS = ["batchnorm", "syncbatchnorm"]


def make_norm(norm_type, affine=True, seed=0) -> SequenceNorm:
    norm = SequenceNorm(norm_type, D, affine=affine).double()
    return randomize_parameters_(norm, seed, scale=1.0) if affine else norm


def assert_close(actual, expected, tol=TOL):
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("length, batch", [(1, 1), (7, 2), (13, 3)])
def test_layernorm(length, batch, affine):
    norm = make_norm("layernorm", affine, seed=length)
    x = randn(length, batch, D, seed=length) * 3 + 1
    weight = norm.norm.weight if affine else None
    bias = norm.norm.bias if affine else None
    assert_close(norm(x), layernorm_reference(x, weight, bias, 1e-5))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("length, batch", [(1, 1), (7, 2), (13, 3)])
def test_scalenorm_one_scalar(length, batch, affine):
    norm = make_norm("scalenorm", affine, seed=length)
    scalar = norm.norm.scalar if affine else None
    if affine:
        assert scalar.numel() == 1
    x = randn(length, batch, D, seed=length) * 3 + 1
    assert_close(norm(x), rms_scale_reference(x, scalar, 1e-5))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("length, batch", [(1, 1), (7, 2), (13, 3)])
def test_rmsnorm_per_channel_weight(length, batch, affine):
    norm = make_norm("rmsnorm", affine, seed=length)
    weight = norm.norm.weight if affine else None
    if affine:
        assert weight.shape == (D,)
    x = randn(length, batch, D, seed=length) * 3 + 1
    assert_close(norm(x), rms_scale_reference(x, weight, 1e-5))


@pytest.mark.parametrize("norm_type", ["layernorm", "scalenorm", "rmsnorm"])
def test_position_wise_norms_ignore_padding_mask(norm_type):
    norm = make_norm(norm_type)
    x = randn(7, 2, D, seed=1)
    mask = random_padding_mask(2, 7, seed=1)
    assert torch.equal(norm(x, mask), norm(x))


@pytest.mark.parametrize("norm_type", BATCH_NORMS)
@pytest.mark.parametrize("length, batch, seed", [(7, 2, 0), (13, 3, 1), (13, 3, 2)])
def test_batchnorm_statistics_over_non_pad_positions(norm_type, length, batch, seed):
    norm = make_norm(norm_type, seed=seed).train()
    x = randn(length, batch, D, seed=seed) * 2 + 0.5
    mask = random_padding_mask(batch, length, seed=seed)
    out = norm(x, mask)
    real = ~mask.t()

    # hand mean / biased variance over the real rows
    assert_close(out, batchnorm_reference(x, norm.norm.weight, norm.norm.bias, 1e-5, mask))
    # torch's batch norm on the selected rows only
    selected = x[real]
    expected = F.batch_norm(selected, None, None, norm.norm.weight, norm.norm.bias, training=True, eps=1e-5)
    assert_close(out[real], expected)
    # pads come out as zeros
    assert torch.all(out[~real] == 0.0)


@pytest.mark.parametrize("norm_type", BATCH_NORMS)
def test_batchnorm_running_statistics_updated_from_real_positions(norm_type):
    norm = SequenceNorm(norm_type, D).double().train()
    momentum = norm.norm.momentum
    x = randn(9, 3, D, seed=3) * 2 + 1
    mask = random_padding_mask(3, 9, seed=4)
    norm(x, mask)
    mean, var, count = batchnorm_statistics_reference(x, mask)
    assert_close(norm.norm.running_mean, momentum * mean)
    assert_close(norm.norm.running_var, (1 - momentum) * 1.0 + momentum * var * count / (count - 1))


@pytest.mark.parametrize("norm_type", BATCH_NORMS)
def test_batchnorm_without_mask_uses_every_position(norm_type):
    norm = make_norm(norm_type, seed=5).train()
    x = randn(7, 2, D, seed=5)
    assert_close(norm(x), batchnorm_reference(x, norm.norm.weight, norm.norm.bias, 1e-5))


@pytest.mark.parametrize("norm_type", BATCH_NORMS)
@pytest.mark.parametrize("extra", [1, 5])
def test_batchnorm_padding_invariance_in_training(norm_type, extra):
    """Appending pads or changing pad contents leaves the outputs at real positions unchanged."""
    length, batch = 9, 3
    norm = make_norm(norm_type, seed=extra).train()
    x = randn(length, batch, D, seed=6)
    mask = random_padding_mask(batch, length, seed=extra)
    real = ~mask.t()
    out = norm(x, mask)

    longer = torch.cat([x, randn(extra, batch, D, seed=7) * 50])
    longer_mask = torch.cat([mask, torch.ones(batch, extra, dtype=torch.bool)], dim=1)
    assert_close(norm(longer, longer_mask)[:length][real], out[real])

    changed = torch.where(mask.t().unsqueeze(-1), randn(length, batch, D, seed=8) * 50, x)
    assert_close(norm(changed, mask)[real], out[real])


@pytest.mark.parametrize("norm_type", BATCH_NORMS)
def test_batchnorm_eval_uses_running_statistics(norm_type):
    norm = make_norm(norm_type, seed=9).eval()
    x = randn(7, 3, D, seed=9)
    mask = random_padding_mask(3, 7, seed=9)
    expected = batchnorm_reference(x, norm.norm.weight, norm.norm.bias, 1e-5, mask,
                                   norm.norm.running_mean, norm.norm.running_var)
    out = norm(x, mask)
    assert_close(out[~mask.t()], expected[~mask.t()])
    # row by row: independent of the rest of the batch
    assert_close(norm(x[:, :1], mask[:1])[:, 0], out[:, 0])
    assert_close(norm(x), batchnorm_reference(x, norm.norm.weight, norm.norm.bias, 1e-5, None,
                                              norm.norm.running_mean, norm.norm.running_var))


@pytest.mark.parametrize("norm_type", ["layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm"])
@pytest.mark.parametrize("training", [True, False])
def test_norm_reference_dispatch(norm_type, training):
    """The dispatcher used by the block references agrees with the module for every type."""
    norm = make_norm(norm_type, seed=10).train(training)
    x = randn(7, 2, D, seed=10)
    mask = random_padding_mask(2, 7, seed=10)
    real = ~mask.t()
    assert_close(norm(x, mask)[real], norm_reference(norm, x, mask)[real])


@pytest.mark.parametrize("name", ["groupnorm", "LayerNorm", ""])
def test_unknown_norm_raises_config_error(name):
    with pytest.raises(MegaConfigError, match="--normalization-type"):
        SequenceNorm(name, D)
