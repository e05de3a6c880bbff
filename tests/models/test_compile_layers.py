"""--compile-layers: every Mega layer compiled in place with dynamic shapes gives the eager model's
outputs and gradients, keeps its checkpoint format, and decodes step by step (eagerly) like the
full pass.

These tests are about the wiring of the models (which layers are compiled, what runs through
them): the layers compile with dynamo's ``eager`` backend (graph capture with dynamic shapes, run
by eager autograd; seconds instead of minutes). AOT autograd's tracing of a layer's backward is
tested per layer in test_compile.py (``aot_eager``); inductor with the fused EMA on a GPU there too."""
import pytest
import torch
import torch._dynamo as dynamo

from fairseq_helpers import (assert_same_outputs_and_grads, build_lm, build_model, full_log_probs, make_dictionary,
                             random_stream, translation_batch)
from lra_helpers import TINY_MEGA, build, token_batch
from mega_fairseq.models import compile as compile_module


@pytest.fixture(scope="module", autouse=True)
def graph_capture_backend():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compile_module, "BACKEND", "eager")
        yield
    dynamo.reset()


def compiled_layers(model):
    return [layer for layer in model.modules() if getattr(layer, "_compiled_call_impl", None) is not None]


@pytest.fixture(scope="module")
def translation_models():
    """The same chunked translation model, eager and with --compile-layers (compiled once for the module)."""
    dictionary = make_dictionary()
    flags = ["--encoder-chunk-size", "3", "--decoder-chunk-size", "3"]
    return dictionary, build_model(flags, dictionary, seed=4), build_model([*flags, "--compile-layers"], dictionary,
                                                                           seed=4)


def test_compiled_translation_model_matches_eager(translation_models):
    dictionary, eager, compiled = translation_models
    assert len(compiled_layers(compiled)) == 4 and not compiled_layers(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for seed, sources, targets in ((0, [7, 5, 2], [6, 4, 6]), (1, [11, 9], [9, 3])):
        batch = translation_batch(dictionary, sources, targets, seed)
        assert_same_outputs_and_grads(compiled, eager, batch)


def test_compiled_decoder_steps_match_its_full_pass(translation_models):
    dictionary, _, model = translation_models
    # the second batch above (a padded target too): the full pass reuses the compiled code
    src, src_lengths, prev = translation_batch(dictionary, [11, 9], [9, 3], seed=1)
    encoder_out = model.encoder(src, src_lengths)
    full, _ = model.decoder(prev, encoder_out)  # through the compiled layers, with gradients as they were traced
    with torch.no_grad():
        state, steps = {}, []
        for step in range(prev.size(1)):  # eager: incremental steps bypass the compiled layers
            out, _ = model.decoder(prev[:, : step + 1], encoder_out, incremental_state=state)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full.detach(), rtol=1e-9, atol=1e-9)


def test_compiled_language_model_matches_eager():
    dictionary = make_dictionary(40)
    eager = build_lm(["--decoder-chunk-size", "4"], dictionary, seed=2)
    compiled = build_lm(["--decoder-chunk-size", "4", "--compile-layers"], dictionary, seed=2)
    assert len(compiled_layers(compiled)) == len(compiled.decoder.layers)
    for length in (13, 8):
        tokens = random_stream(dictionary, length, seed=length).unsqueeze(0)
        torch.testing.assert_close(full_log_probs(compiled, tokens), full_log_probs(eager, tokens),
                                   rtol=1e-9, atol=1e-9)


def test_compiled_lra_classifier_matches_eager():
    eager = build("mega_lra_listop", [*TINY_MEGA, "--chunk-size", "4"], seed=1)
    compiled = build("mega_lra_listop", [*TINY_MEGA, "--chunk-size", "4", "--compile-layers"], seed=1)
    assert len(compiled_layers(compiled)) == 2
    tokens, _ = token_batch([9, 6, 11], extra_pads=2)
    torch.testing.assert_close(compiled(tokens), eager(tokens), rtol=1e-9, atol=1e-9)
