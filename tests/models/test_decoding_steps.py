"""Token-by-token decoding on step buffers (models/stepping.py, modules/decoding.py): the same outputs
as the block path and the full forward pass, step by step and through fairseq's beam search; CUDA
graph replay equal to eager steps on a GPU."""
import random

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from fairseq_helpers import build_model, make_dictionary, random_tokens
from mega_fairseq.models import stepping
from mega_fairseq.models.stepping import StepSession

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def decode_steps(model, src, src_lengths, prev, blocks: bool):
    """Logits (B, T, V) of prev fed one token at a time, on step buffers or (blocks) on the block path."""
    encoder_out = model.encoder(src, src_lengths)
    state, outputs = {}, []
    with torch.set_grad_enabled(blocks):
        for step in range(prev.size(1)):
            logits, extra = model.decoder(prev[:, : step + 1], encoder_out, incremental_state=state)
            outputs.append(logits.detach())
    uses_steps = any(isinstance(value, StepSession) for value in state.values())
    assert uses_steps != blocks
    return torch.cat(outputs, dim=1), extra["attn"][0]


def inputs(dictionary, seed, lengths, target_length, target_pads=0):
    rng = random.Random(seed)
    src = random_tokens(dictionary, lengths, rng, left_pad=True)
    target = random_tokens(dictionary, [target_length] * len(lengths), rng, left_pad=False)
    prev = torch.cat([torch.full((len(lengths), 1), dictionary.eos()), target[:, :-1]], dim=1)
    if target_pads:
        prev[-1, :target_pads] = dictionary.pad()
    return src, src.ne(dictionary.pad()).sum(1), prev


@pytest.mark.parametrize("chunk, attention_fn, rel_pos_bias, prenorm", [
    (-1, "softmax", "simple", False),
    (-1, "laplace", "rotary", True),
    (1, "relu2", "simple", False),
    (3, "softmax", "rotary", False),
    (3, "laplace", "simple", True),
])
def test_steps_equal_blocks_and_full_forward(chunk, attention_fn, rel_pos_bias, prenorm):
    dictionary = make_dictionary()
    extra = ["--decoder-chunk-size", str(chunk), "--attention-activation-fn", attention_fn,
             "--rel-pos-bias", rel_pos_bias] + (["--normalize-before"] if prenorm else [])
    model = build_model(extra, dictionary, seed=chunk + 5)
    src, src_lengths, prev = inputs(dictionary, seed=chunk + 11, lengths=[9, 4, 6], target_length=8)
    with torch.no_grad():
        full, full_extra = model(src, src_lengths, prev)
    steps, step_attn = decode_steps(model, src, src_lengths, prev, blocks=False)
    blocks, block_attn = decode_steps(model, src, src_lengths, prev, blocks=True)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(blocks, full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(step_attn, block_attn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(step_attn[:, 0], full_extra["attn"][0][:, -1], rtol=1e-10, atol=1e-10)


def test_padded_target_tokens_match_the_block_path():
    """A row whose first tokens are padding (a left-padded prompt) decodes as on the block path."""
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", "2"], dictionary, seed=2)
    src, src_lengths, prev = inputs(dictionary, seed=4, lengths=[5, 7], target_length=7, target_pads=3)
    steps, _ = decode_steps(model, src, src_lengths, prev, blocks=False)
    blocks, _ = decode_steps(model, src, src_lengths, prev, blocks=True)
    torch.testing.assert_close(steps, blocks, rtol=1e-10, atol=1e-10)


def test_unchunked_capacity_doubles_past_the_first(monkeypatch):
    """An unchunked decoder outgrowing its slots moves to a twice larger entry, outputs unchanged."""
    monkeypatch.setattr(stepping, "FIRST_CAPACITY", 2)
    dictionary = make_dictionary()
    model = build_model([], dictionary, seed=6)
    src, src_lengths, prev = inputs(dictionary, seed=8, lengths=[6, 3], target_length=9)
    with torch.no_grad():
        full, _ = model(src, src_lengths, prev)
    steps, _ = decode_steps(model, src, src_lengths, prev, blocks=False)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    assert sorted(key[1] for key in model.decoder.step_entries) == [2, 4, 8, 16]


def test_entries_are_reused_by_batches_of_the_same_shape():
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", "3"], dictionary, seed=1)
    first = inputs(dictionary, seed=1, lengths=[5, 7], target_length=6)
    second = inputs(dictionary, seed=2, lengths=[6, 6], target_length=6)
    decode_steps(model, *first, blocks=False)
    buffers = [entry.buffers for entry in model.decoder.step_entries.values()]
    steps, _ = decode_steps(model, *second, blocks=False)
    reused = [entry.buffers for entry in model.decoder.step_entries.values()]
    assert len(reused) == len(buffers) == 1 and reused[0] is buffers[0]
    with torch.no_grad():
        full, _ = model(*second)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)


def test_step_past_the_position_bias_is_a_clear_error():
    dictionary = make_dictionary()
    model = build_model(["--max-target-positions", "4"], dictionary, seed=1)
    src, src_lengths, prev = inputs(dictionary, seed=3, lengths=[3], target_length=6)
    with pytest.raises(ValueError, match="longer than the 4 positions .* --max-target-positions"):
        decode_steps(model, src, src_lengths, prev, blocks=False)


def beam_search(model, dictionary, src, force_blocks: bool, beam: int = 4):
    model.decoder.steps_supported = not force_blocks
    search = SequenceGenerator([model], dictionary, beam_size=beam, max_len_b=12)
    src_lengths = src.ne(dictionary.pad()).sum(1)
    return search.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src_lengths}})


@pytest.mark.parametrize("chunk", [-1, 2])
def test_beam_search_on_steps_equals_block_path(chunk):
    """Same hypotheses, scores and alignments whether the state lives in step buffers (reordered and
    shrunk as sentences finish) or in per-layer blocks."""
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", str(chunk)], dictionary, seed=9)
    src = random_tokens(dictionary, [6, 9, 3, 5], random.Random(chunk + 3), left_pad=True)
    steps = beam_search(model, dictionary, src, force_blocks=False)
    blocks = beam_search(model, dictionary, src, force_blocks=True)
    for step_beams, block_beams in zip(steps, blocks):
        for ours, theirs in zip(step_beams, block_beams):
            assert torch.equal(ours["tokens"], theirs["tokens"])
            torch.testing.assert_close(ours["positional_scores"], theirs["positional_scores"], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(ours["attention"], theirs["attention"], rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("chunk, dtype", [(-1, torch.float16), (2, torch.float32)])
def test_cuda_graph_steps_equal_eager_steps(monkeypatch, chunk, dtype):
    """Beam search replaying CUDA graphs gives the eager steps' hypotheses and scores."""
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", str(chunk)], dictionary, seed=4).to("cuda", dtype)
    src = random_tokens(dictionary, [6, 9, 3, 5, 11, 2], random.Random(7), left_pad=True).cuda()
    monkeypatch.setenv("MEGA_CUDA_GRAPHS", "0")
    eager = beam_search(model, dictionary, src, force_blocks=False)
    model.decoder.step_entries.clear()
    monkeypatch.setenv("MEGA_CUDA_GRAPHS", "1")
    graphed = beam_search(model, dictionary, src, force_blocks=False)
    graphs = [entry.step.graph for entry in model.decoder.step_entries.values()]
    assert any(graph is not None for graph in graphs)
    for eager_beams, graph_beams in zip(eager, graphed):
        for ours, theirs in zip(graph_beams, eager_beams):
            assert torch.equal(ours["tokens"], theirs["tokens"])
            torch.testing.assert_close(ours["positional_scores"], theirs["positional_scores"], rtol=1e-3, atol=1e-3)
