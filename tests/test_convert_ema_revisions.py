"""The converter and the two EMA revisions of the original code (branch main, branch flash).

Original-format EMA parameters and whole translation checkpoints of each revision are converted
and compared with float64 loop references of that revision (original_ema.py): the EMA alone
(causal, bidirectional, truncated, padded, incremental steps), and a whole translation model
(logits, beam search, fairseq-generate). A wrong revision must change the outputs or be refused.
Detection: each revision from what the checkpoint holds; an undecidable checkpoint is refused.
"""
import math
import random
import re

import pytest
import torch
import torch.nn.functional as F
from fairseq import options, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator
from fairseq_cli import generate

from fairseq_helpers import USER_DIR, random_tokens
from mega_fairseq.convert import (ConversionError, ConversionWarning, EmaRevision, convert_checkpoint,
                                  convert_state_dict, detect_ema_revision)
from mega_fairseq.modules import MultiDimensionalEMA
from original_checkpoints import (assert_every_tensor_landed, convert, dictionary_size, in_revision_order, lm_args,
                                  lm_state, load, make_translation_data, mega_args, mega_state, save_original)
from original_ema import OriginalEMA, original_ema, original_ema_steps

OTHER = {"main": "flash", "flash": "main"}
PREFIX = "encoder.layers.0.mega_layer.move."


def ema_params(dim, ndim, bidirectional, seed, revision="main", scale=1.0):
    """Random original EMA parameters (float64), stored in the revision's declaration order."""
    generator = torch.Generator().manual_seed(seed)
    rows = 2 * dim if bidirectional else dim
    shapes = {"alpha": (rows, ndim, 1), "delta": (rows, ndim, 1), "beta": (rows, ndim, 1), "gamma": (rows, ndim),
              "omega": (dim,)}
    params = {PREFIX + name: torch.randn(shape, generator=generator, dtype=torch.float64) * scale
              for name, shape in shapes.items()}
    return in_revision_order(params, revision)


def our_ema(params, revision, truncation):
    """Our EMA (float64) loaded with the converted original parameters."""
    dim = params[PREFIX + "omega"].shape[0]
    converted = convert_state_dict(params, "mega", revision)
    ema = MultiDimensionalEMA(dim, params[PREFIX + "gamma"].shape[1], params[PREFIX + "gamma"].shape[0] == 2 * dim,
                              truncation if truncation and truncation >= 1 else None, impl="fft").double()
    ema.load_state_dict({name[len(PREFIX):]: tensor for name, tensor in converted.items()})
    return ema


def unprefixed(params):
    return {name[len(PREFIX):]: tensor for name, tensor in params.items()}


def padded_batch(length, dim, seed):
    """x (L, 3, D) float64 and a padding mask (3, L): a full row, a right-padded and a left-padded one."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(length, 3, dim, generator=generator, dtype=torch.float64)
    padding_mask = torch.zeros(3, length, dtype=torch.bool)
    padding_mask[1, length - (length - 1) // 2:] = True
    padding_mask[2, : length // 3] = True
    return x, padding_mask


# ------------------------------------------------------------------ the references are the original code

def main_fft(x, params, truncation):
    """main's FFT construction: a causal kernel alone (FFT length 2L), or the forward kernel at lags
    0..K-1 and the reversed backward kernel at -(K-1)..0 as one kernel of 2K-1 taps, the input
    shifted by K-1 and the output read from 2K-2."""
    length, _, dim = x.shape
    size = length if truncation is None else min(truncation, length)
    kernel = reference_kernel(params, "main", size)
    signal, start = x.permute(1, 2, 0), 0
    if kernel.shape[0] == 2 * dim:
        kernel = F.pad(kernel[:dim], (size - 1, 0)) + F.pad(kernel[dim:].flip(-1), (0, size - 1))
        signal, start = F.pad(signal, (size - 1, 0)), 2 * size - 2
    n = 2 * signal.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(signal, n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., start: start + length]
    return F.silu(y.permute(2, 0, 1) + params["omega"] * x)


def flash_fft(x, params, truncation):
    """flash's FFT construction (7d00ee4, shift=True): one circular convolution of length L + K;
    the forward kernel at the start, the reversed backward kernel at the end, so that its entry 0
    lands on lag -1 (x[t + 1])."""
    length, _, dim = x.shape
    size = length if truncation is None or truncation < 1 else min(truncation, length)
    kernel = reference_kernel(params, "flash", size)
    n = length + size
    if kernel.shape[0] == 2 * dim:
        kernel = F.pad(kernel[:dim], (0, length)) + F.pad(kernel[dim:].flip(-1), (length, 0))
    y = torch.fft.irfft(torch.fft.rfft(x.permute(1, 2, 0), n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., :length]
    return F.silu(y.permute(2, 0, 1) + params["omega"] * x)


def reference_kernel(params, revision, size):
    """(D', K) kernel scale * sum_n gamma p beta q^j, j < K, with the revision's p and q."""
    if revision == "main":
        p, decay = torch.sigmoid(params["delta"]), torch.sigmoid(params["alpha"])
    else:
        p, decay = torch.sigmoid(params["alpha"]), torch.sigmoid(params["delta"])
    q = 1.0 - p * decay
    lags = torch.arange(size, dtype=torch.float64)
    return torch.einsum("dnl,dn->dl", p * params["beta"] * q ** lags, params["gamma"]) / params["gamma"].shape[1] ** 0.5


@pytest.mark.parametrize("revision, truncation", [("main", None), ("main", 4), ("flash", None), ("flash", 0),
                                                  ("flash", 4)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_references_are_the_original_fft_constructions(revision, truncation, bidirectional):
    params = unprefixed(ema_params(3, 2, bidirectional, seed=6))
    x = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    construction = main_fft if revision == "main" else flash_fft
    torch.testing.assert_close(original_ema(x, params, revision, truncation), construction(x, params, truncation),
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the converted EMA is the original EMA

@pytest.mark.parametrize("revision, bidirectional, truncation", [
    ("main", True, None), ("main", True, 3), ("main", False, None), ("main", False, 3),
    ("flash", True, 0), ("flash", True, None), ("flash", False, 0), ("flash", False, 3)])
@pytest.mark.parametrize("length", [1, 6, 9])
def test_converted_ema_computes_the_original_ema(revision, bidirectional, truncation, length):
    params = ema_params(5, 3, bidirectional, seed=length, revision=revision)
    x, padding_mask = padded_batch(length, 5, seed=length + 1)
    expected = original_ema(x, unprefixed(params), revision, truncation, padding_mask)
    ours = our_ema(params, revision, truncation)(x, padding_mask)
    real = ~padding_mask.t()  # flash's lag-0 weight moves to omega: pad positions differ (and are never read)
    torch.testing.assert_close(ours[real], expected[real], rtol=1e-10, atol=1e-10)
    if revision == "main":
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_truncated_flash_bidirectional_is_exact_up_to_the_truncation_length():
    """flash's backward kernel covers lags 1..K, ours 0..K-1: rows of at most K real positions match,
    a longer one does not."""
    params = ema_params(4, 2, True, seed=3, revision="flash")
    x, padding_mask = padded_batch(9, 4, seed=4)
    padding_mask[1:, 4:] = True  # rows 1 and 2: 4 and 1 real positions; row 0: 9
    padding_mask[2, :3] = True
    expected = original_ema(x, unprefixed(params), "flash", 4, padding_mask)
    ours = our_ema(params, "flash", 4)(x, padding_mask)
    real = ~padding_mask.t()
    torch.testing.assert_close(ours[:, 1:][real[:, 1:]], expected[:, 1:][real[:, 1:]], rtol=1e-10, atol=1e-10)
    assert (ours[:, 0] - expected[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("revision", ["main", "flash"])
def test_converted_causal_ema_steps_are_the_original_steps(revision):
    params = ema_params(4, 3, False, seed=8, revision=revision)
    x = torch.randn(9, 2, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    full = original_ema(x, unprefixed(params), revision)
    steps, _ = original_ema_steps(x, unprefixed(params), revision)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    ema, state, outputs, start = our_ema(params, revision, None), {}, [], 0
    for size in (1, 3, 1, 4):
        outputs.append(ema(x[start: start + size], None, state))
        start += size
    torch.testing.assert_close(torch.cat(outputs), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("revision", ["main", "flash"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_the_wrong_revision_gives_other_outputs(revision, bidirectional):
    params = ema_params(5, 3, bidirectional, seed=10, revision=revision)
    x, padding_mask = padded_batch(8, 5, seed=11)
    expected = original_ema(x, unprefixed(params), revision, None, padding_mask)
    wrong = our_ema(params, OTHER[revision], None)(x, padding_mask)
    real = ~padding_mask.t()
    assert (wrong[real] - expected[real]).abs().max() > 0.1


def test_large_lag_zero_weight_warns_and_zero_decay_is_refused():
    params = ema_params(3, 2, True, seed=12, revision="flash")
    params[PREFIX + "alpha"].fill_(9.0)  # q = 1 - sigmoid(9)^2 ~ 2.5e-4
    params[PREFIX + "delta"].fill_(9.0)
    params[PREFIX + "beta"].fill_(1.0)
    params[PREFIX + "gamma"].fill_(1.0)
    with pytest.warns(ConversionWarning, match=r"encoder\.layers\.0\.mega_layer\.move: flash's backward kernel "
                                               r"moves a lag-0 weight of up to [\d.e+]+ into omega"):
        convert_state_dict(params, "mega", "flash")
    params[PREFIX + "alpha"].fill_(40.0)  # sigmoid(40) rounds to 1 in float64: q = 0
    params[PREFIX + "delta"].fill_(40.0)
    with pytest.raises(ConversionError, match=r"encoder\.layers\.0\.mega_layer\.move: an EMA decay .* is 0"):
        convert_state_dict(params, "mega", "flash")


# ------------------------------------------------------------------ which revision made a checkpoint

@pytest.mark.parametrize("args, state_revision, expected, reasons", [
    (mega_args(), "main", "main", ["main's declaration order (delta, alpha,"]),
    (mega_args(), "flash", "flash", ["flash's declaration order (alpha, delta,"]),
    (mega_args(truncation_length=0), "flash", "flash", ["flash's declaration order",
                                                        "truncation_length 0 means no truncation on flash"]),
    (mega_args(truncation_length=0), "sorted", "flash", ["truncation_length 0 means no truncation on flash, while "
                                                         "main cannot run it (the bidirectional EMA kernel"]),
    (lm_args(truncation_length=-1), "sorted", "flash", ["truncation_length -1", "the causal EMA kernel"]),
    (lm_args(), "flash", "flash", ["its 2 EMA modules store their parameters in flash's"]),
], ids=["main_order", "flash_order", "flash_order_and_truncation", "truncation_only", "lm_truncation_only",
        "lm_flash_order"])
def test_revision_is_detected(args, state_revision, expected, reasons):
    builder = mega_state if args.arch.startswith("mega_wmt") else lm_state
    state = builder(args, 20)
    state = dict(sorted(state.items())) if state_revision == "sorted" else in_revision_order(state, state_revision)
    revision = detect_ema_revision(args, state)
    assert revision.name == expected
    for reason in reasons:
        assert reason in revision.reason


@pytest.mark.parametrize("truncation, state_revision, message", [
    (1024, "sorted", r"cannot tell which revision .* matches no revision \(EMA modules: 4 in neither's order; "
                     r"main declares delta, alpha, .*\), and truncation_length 1024 runs on both revisions"),
    (0, "main", r"contradicts itself .* main's declaration order .*, but truncation_length 0 means no truncation"),
], ids=["no_evidence", "contradiction"])
def test_undecidable_revision_is_refused(tmp_path, capsys, truncation, state_revision, message):
    args = mega_args(truncation_length=truncation)
    state = mega_state(args, 20)
    state = dict(sorted(state.items())) if state_revision == "sorted" else in_revision_order(state, state_revision)
    with pytest.raises(ConversionError, match=message + r".*; pass --ema-revision main or --ema-revision flash"):
        detect_ema_revision(args, state)
    source = save_original(tmp_path / "original.pt", args, state)
    with pytest.raises(ConversionError, match="--ema-revision"):
        convert_checkpoint(str(source), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()


def test_requested_revision_overrides_the_evidence():
    args = mega_args()
    flash_state = mega_state(args, 20, revision="flash")
    assert detect_ema_revision(args, flash_state, "flash") == EmaRevision("flash", "--ema-revision flash was given")
    overridden = detect_ema_revision(args, flash_state, "main")
    assert overridden.name == "main"
    assert overridden.reason.startswith("--ema-revision main was given, although its 4 EMA modules store their "
                                        "parameters in flash's declaration order")
    with pytest.raises(ConversionError, match="--ema-revision main cannot be reproduced: truncation_length 0"):
        detect_ema_revision(mega_args(truncation_length=0), flash_state, "main")
    with pytest.raises(ConversionError, match="--ema-revision 'shift': expected one of main, flash"):
        detect_ema_revision(args, flash_state, "shift")


# ------------------------------------------------------------------ whole translation models

@pytest.fixture(scope="module")
def translation_data(tmp_path_factory):
    return make_translation_data(tmp_path_factory.mktemp("revisions_mt"))


def translation_state(args, data, seed, revision):
    """An original translation state dict whose decoding depends on the source: norm biases zeroed
    (random ones outweigh the input and every sentence decodes to the same tokens)."""
    state = mega_state(args, dictionary_size(data / "dict.en.txt"), seed, revision)
    return {name: tensor.mul(0) if re.search(r"norm\.bias$", name) else tensor for name, tensor in state.items()}


def original_model(checkpoint, data, original, args, revision):
    """Our model (float64) with every EMA replaced by the revision's loop reference on the
    original parameters: the original model."""
    model, _, task = load(checkpoint, data)
    model.double()
    for name, module in list(model.named_modules()):
        if name.endswith("mega_layer.move"):
            params = {part: original[f"{name}.{part}"] for part in ("alpha", "delta", "beta", "gamma", "omega")}
            layer = model.get_submodule(name[: -len(".move")])
            layer.move = OriginalEMA(params, revision, args.truncation_length)
    model.decoder.steps_supported = False  # the loop reference runs on the block path only
    return model, task


def converted_model(tmp_path, data, args, original, flags=(), name="original.pt"):
    model, _, task = load(convert(tmp_path, args, original, name, flags), data)
    return model.double(), task


def translation_batch(dictionary, seed):
    """Left-padded sources of odd and even lengths and right-padded previous target tokens."""
    generator = random.Random(seed)
    source = random_tokens(dictionary, [7, 4, 1, 6], generator, left_pad=True)
    target_lengths = [5, 2, 6, 3]
    target = random_tokens(dictionary, target_lengths, generator, left_pad=False)
    previous = torch.full_like(target, dictionary.pad())  # eos, then the target without its final eos
    previous[:, 0] = dictionary.eos()
    for row, length in enumerate(target_lengths):
        previous[row, 1:length] = target[row, : length - 1]
    lengths = source.ne(dictionary.pad()).sum(1)
    return {"src_tokens": source, "src_lengths": lengths, "prev_output_tokens": previous}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch)[0]


def beam_search(model, dictionary, batch):
    generator = SequenceGenerator([model], dictionary, beam_size=3, max_len_b=8)
    with torch.no_grad():
        hypotheses = generator.forward({"net_input": {k: batch[k] for k in ("src_tokens", "src_lengths")}})
    return [[(h["tokens"].tolist(), h["score"].item()) for h in sentence] for sentence in hypotheses]


@pytest.mark.parametrize("revision, changes", [
    ("flash", dict(truncation_length=0)),
    ("flash", dict(truncation_length=0, encoder_chunk_size=4, normalize_before=True, rel_pos_bias="rotary")),
    ("flash", dict(truncation_length=8)),
    ("main", dict()),
], ids=["flash_wmt_recipe", "flash_chunked_prenorm", "flash_truncated", "main"])
def test_converted_translation_model_gives_the_original_outputs(translation_data, tmp_path, capsys, revision,
                                                               changes):
    args = mega_args(**changes)
    original = translation_state(args, translation_data, seed=1, revision=revision)
    ours, task = converted_model(tmp_path, translation_data, args, original)
    printed = capsys.readouterr()
    assert f"EMA revision {revision}: its 4 EMA modules store their parameters in {revision}'s" in printed.out
    assert ("at most 8 tokens" in printed.err) == (changes.get("truncation_length") == 8)
    assert_every_tensor_landed(original, ours, revision)
    reference, _ = original_model(tmp_path / "converted_original.pt", translation_data, original, args, revision)
    dictionary = task.target_dictionary
    batch = translation_batch(dictionary, seed=2)
    expected = logits(reference, batch)
    # the converted checkpoint is float32: flash's rewritten beta and omega are rounded there
    tolerance = 1e-9 if revision == "main" else 1e-6
    torch.testing.assert_close(logits(ours, batch), expected, rtol=tolerance, atol=tolerance)
    found, wanted = beam_search(ours, dictionary, batch), beam_search(reference, dictionary, batch)
    assert [[tokens for tokens, _ in sentence] for sentence in found] == [
        [tokens for tokens, _ in sentence] for sentence in wanted]
    torch.testing.assert_close(torch.tensor([[s for _, s in sentence] for sentence in found]),
                               torch.tensor([[s for _, s in sentence] for sentence in wanted]),
                               rtol=tolerance, atol=tolerance)
    if changes.get("truncation_length") == 0:  # main cannot run truncation 0: the wrong revision is refused
        source = tmp_path / "original.pt"
        with pytest.raises(ConversionError, match="--ema-revision main cannot be reproduced"):
            convert_checkpoint(str(source), str(tmp_path / "wrong.pt"), ema_revision="main")
        return
    wrong, _ = converted_model(tmp_path, translation_data, args, original, ["--ema-revision", OTHER[revision]],
                               name="wrong.pt")
    assert f"--ema-revision {OTHER[revision]} was given, although" in capsys.readouterr().out
    assert (logits(wrong, batch) - expected).abs().max() > 1e4 * tolerance  # far outside the right one's error
    assert [[tokens for tokens, _ in sentence] for sentence in beam_search(wrong, dictionary, batch)] != [
        [tokens for tokens, _ in sentence] for sentence in wanted]


def test_fairseq_generate_gives_the_original_hypotheses(translation_data, tmp_path):
    """The issue's check: convert an original flash translation checkpoint with the script, then
    fairseq-generate gives the hypotheses of the original model (beam 2, length penalty 0.5)."""
    args = mega_args(truncation_length=0)
    original = translation_state(args, translation_data, seed=3, revision="flash")
    checkpoint = convert(tmp_path, args, original)
    argv = [str(translation_data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--beam", "2", "--lenpen",
            "0.5", "--max-len-b", "6", "--batch-size", "4", "--num-workers", "0", "--results-path", str(tmp_path)]
    generate.main(options.parse_args_and_arch(options.get_generation_parser(), argv))
    found = {index: (float(score), text) for index, score, text in
             re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", (tmp_path / "generate-test.txt").read_text(), flags=re.M)}

    reference, task = original_model(checkpoint, translation_data, original, args, "flash")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), argv))
    generator = task.build_generator([reference], cfg.generation)
    task.load_dataset("test")
    # generate's batches: the cross-attention position bias counts the left pads (in the original too)
    batches = task.get_batch_iterator(
        task.dataset("test"), max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), reference.max_positions()),
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple).next_epoch_itr(shuffle=False)
    wanted = {}
    for sample in batches:
        with torch.no_grad():
            hypotheses = task.inference_step(generator, [reference], sample)
        for index, sentence in zip(sample["id"].tolist(), hypotheses):
            wanted[str(index)] = (sentence[0]["score"].item() / math.log(2),
                                  task.target_dictionary.string(sentence[0]["tokens"]))
    assert len(wanted) == 5 and len({text for _, text in wanted.values()}) > 1
    assert {index: text for index, (_, text) in found.items()} == {index: text for index, (_, text) in wanted.items()}
    for index, (score, _) in wanted.items():
        assert found[index][0] == pytest.approx(score, abs=1e-5)
