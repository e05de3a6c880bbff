"""--bf16-autocast: bf16 matrix products with float32 weights, float32 outputs, sane numbers."""
import random

import pytest
import torch

from fairseq_helpers import ADAPTIVE, build_lm, build_model, make_dictionary, random_stream, random_tokens
from lra_helpers import TINY_MEGA, build, token_batch


def record_dtypes(module):
    dtypes = []
    module.register_forward_hook(lambda _, __, output: dtypes.append(output.dtype))
    return dtypes


def relative_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_translation_model_runs_matmuls_in_bf16_and_returns_float32():
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", "3"], dictionary).float()
    src = random_tokens(dictionary, [7, 5], random.Random(0), left_pad=True)
    prev = random_tokens(dictionary, [6, 6], random.Random(1), left_pad=False)
    reference, _ = model(src, src.ne(dictionary.pad()).sum(1), prev)
    model.bf16_autocast = True
    dtypes = record_dtypes(model.encoder.layers[0].mega_layer.v_proj)
    out, _ = model(src, src.ne(dictionary.pad()).sum(1), prev)
    assert dtypes == [torch.bfloat16] and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert relative_error(out, reference) < 2e-2


def test_lm_with_adaptive_softmax_gets_float32_features():
    dictionary = make_dictionary(40)
    model = build_lm(["--decoder-chunk-size", "4", *ADAPTIVE], dictionary).float()
    tokens = random_stream(dictionary, 12, seed=3).unsqueeze(0)
    reference = model.get_normalized_probs(model(tokens), log_probs=True)
    model.bf16_autocast = True
    out = model.get_normalized_probs(model(tokens), log_probs=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert relative_error(out, reference) < 2e-2


def test_lra_classifier_under_bf16_autocast():
    model = build("mega_lra_listop", [*TINY_MEGA, "--chunk-size", "4", "--norm-type", "batchnorm"]).float()
    tokens, _ = token_batch([9, 6, 11], extra_pads=2)
    reference = model(tokens)
    model.args.bf16_autocast = True
    out = model(tokens)
    assert out.dtype == torch.float32 and relative_error(out, reference) < 2e-2


@pytest.mark.parametrize("flag_given", [False, True])
def test_flag_reaches_the_model(flag_given):
    model = build_model(["--bf16-autocast"] if flag_given else [])
    assert model.bf16_autocast is flag_given
