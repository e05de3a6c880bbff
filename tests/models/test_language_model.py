"""The Mega language model: causality, incremental decoding, streamed evaluation, generation, blocks, errors."""
import numpy as np
import pytest
import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

from mega_fairseq.data.variable_block_dataset import variable_block_slices
from mega_fairseq.modules import MegaConfigError
from mega_fairseq.stream_eval import stream_log_probs
from fairseq_helpers import ADAPTIVE, build_lm, full_log_probs, make_dictionary, random_stream


@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("attention_fn", ["softmax", "laplace"])
def test_no_output_depends_on_a_future_token(chunk, attention_fn):
    dictionary = make_dictionary(40)
    model = build_lm(["--decoder-chunk-size", str(chunk), "--attention-activation-fn", attention_fn], dictionary)
    tokens = random_stream(dictionary, 15, seed=chunk).unsqueeze(0)
    with torch.no_grad():
        reference = full_log_probs(model, tokens)
        for position in (0, 5, 8, 14):
            changed = tokens.clone()
            changed[0, position] = dictionary.nspecial + (changed[0, position] - dictionary.nspecial + 1) % 36
            out = full_log_probs(model, changed)
            torch.testing.assert_close(out[:, :position], reference[:, :position], rtol=1e-12, atol=1e-12)
            assert not torch.allclose(out[:, position], reference[:, position])


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("adaptive", [False, True])
def test_incremental_decoding_equals_full_forward(chunk, adaptive):
    dictionary = make_dictionary(40)
    model = build_lm(["--decoder-chunk-size", str(chunk), "--normalize-before", "--rel-pos-bias", "rotary",
                      *(ADAPTIVE if adaptive else [])], dictionary)
    tokens = torch.stack([random_stream(dictionary, 10, seed) for seed in (1, 2)])
    with torch.no_grad():
        full = full_log_probs(model, tokens)
        state = {}
        for step in range(tokens.size(1)):
            out = model.get_normalized_probs(model.decoder(tokens[:, : step + 1], incremental_state=state),
                                             log_probs=True)
            torch.testing.assert_close(out[:, 0], full[:, step], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("block_length", [1, 3, 4, 7, 50])
def test_streamed_evaluation_equals_one_pass(chunk, block_length):
    dictionary = make_dictionary(40)
    model = build_lm(["--decoder-chunk-size", str(chunk), "--max-target-positions", "64", *ADAPTIVE], dictionary)
    tokens = random_stream(dictionary, 23, seed=block_length)
    source = torch.cat([torch.tensor([dictionary.eos()]), tokens[:-1]]).unsqueeze(0)
    with torch.no_grad():
        one_pass = full_log_probs(model, source)[0].gather(1, tokens.unsqueeze(1)).squeeze(1)
    streamed = stream_log_probs(model, tokens, dictionary.eos(), block_length, softmax_batch=5)
    torch.testing.assert_close(streamed, one_pass.float(), rtol=1e-5, atol=1e-6)


def test_streaming_past_the_position_bias_of_an_unchunked_model_is_a_clear_error():
    dictionary = make_dictionary(40)
    model = build_lm(["--max-target-positions", "16"], dictionary)
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        stream_log_probs(model, random_stream(dictionary, 30, seed=0), dictionary.eos(), block_length=8)


def hypothesis_scores(model, dictionary, hypothesis):
    tokens = hypothesis["tokens"].unsqueeze(0)
    source = torch.cat([torch.tensor([[dictionary.eos()]]), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        return full_log_probs(model, source)[0].gather(1, tokens[0].unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("strategy", ["beam", "topk", "topp"])
def test_generation_scores_equal_full_forward(strategy):
    dictionary = make_dictionary(40)
    model = build_lm(["--decoder-chunk-size", "3"], dictionary, seed=4)
    sampling = {"beam": None, "topk": search.Sampling(dictionary, sampling_topk=5),
                "topp": search.Sampling(dictionary, sampling_topp=0.9)}[strategy]
    generator = SequenceGenerator([model], dictionary, beam_size=1 if sampling else 3, max_len_b=12,
                                  search_strategy=sampling)
    prefix = torch.stack([random_stream(dictionary, 4, seed) for seed in (5, 6)])
    torch.manual_seed(0)
    sample = {"net_input": {"src_tokens": prefix, "src_lengths": torch.tensor([4, 4])}}
    hypotheses = generator.generate([model], sample, prefix_tokens=prefix, bos_token=dictionary.eos())
    for beams in hypotheses:
        for hypothesis in beams:
            expected = hypothesis_scores(model, dictionary, hypothesis)
            torch.testing.assert_close(hypothesis["positional_scores"].float(), expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "complete"])
@pytest.mark.parametrize("multiples", [(1, 1), (2, 4)])
def test_variable_blocks_cover_the_stream_in_chunk_multiples(mode, multiples):
    sizes = np.random.RandomState(0).randint(1, 30, size=200)
    slices = variable_block_slices(sizes, mode, 8, multiples, seed=3)
    assert slices[0, 0] == 0 and slices[-1, 1] == sizes.sum()
    assert np.array_equal(slices[1:, 0], slices[:-1, 1])
    lengths = slices[:, 1] - slices[:, 0]
    if mode == "none":
        assert np.all(lengths[:-1] % 8 == 0) and np.all(lengths[:-1] >= 8 * multiples[0])
        assert np.all(lengths <= 8 * multiples[1])
        if multiples[1] > multiples[0]:
            assert len(set(lengths[:-1].tolist())) > 1
    else:
        boundaries = set(np.cumsum(sizes).tolist()) | {0}
        assert set(slices.ravel().tolist()) <= boundaries
        ends = np.cumsum(sizes)
        items_per_block = np.searchsorted(ends, slices[:, 1], side="right") - np.searchsorted(ends, slices[:, 0],
                                                                                             side="right")
        assert np.all(items_per_block[lengths > 8 * multiples[1]] == 1)


@pytest.mark.parametrize("flags, message", [
    (["--tie-adaptive-weights", "--adaptive-softmax-cutoff", "10,20"], "--adaptive-input is not set"),
    (["--adaptive-input", "--adaptive-input-cutoff", "10,20", "--adaptive-softmax-cutoff", "10,30",
      "--tie-adaptive-weights"], "--adaptive-input-cutoff"),
    (["--decoder-chunk-size", "0"], "--decoder-chunk-size"),
])
def test_bad_lm_options_name_the_option(flags, message):
    with pytest.raises(MegaConfigError, match=message):
        build_lm(flags)


@pytest.mark.parametrize("spec", ["blocks:4", "size:0", "splits:x", "size"])
def test_bad_valid_block_spec(spec):
    from mega_fairseq.tasks.mega_language_modeling import parse_valid_block
    with pytest.raises(ValueError, match="--valid-block"):
        parse_valid_block(spec, 1000)
