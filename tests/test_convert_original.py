"""The converter of the original Mega checkpoints (mega_fairseq/convert.py, scripts/convert_original_checkpoint.py).

The original code and checkpoints cannot be downloaded here, so original-format checkpoints are
built from the parameter names and shapes of the original modules (facebookresearch/mega:
MovingAverageGatedAttention, MultiHeadEMA, GatedCrossAttention, NormalizedFeedForwardNetwork,
SequenceNorm, Simple/RotaryRelativePositionalBias, fairseq 0.9's AdaptiveInput/AdaptiveSoftmax,
MegaEncoder/MegaDecoder, MegaDecoderNoCrossAttn, MegaLRAEncoder, MegaSCRawEncoder, LRAModel),
random values and an ``args`` namespace with the original option names. Each is converted, loaded
through fairseq's checkpoint_utils, and every original tensor is found under its new name with
its value (after the documented transform). Where the layout differs (simple position bias)
a float64 reference of the original computation is compared with our converted module. The
checkpoint builders are in original_checkpoints.py; the EMA and its two revisions in the original
code are tested in test_convert_ema_revisions.py.
"""
import math
import os
import re
import runpy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_NAME_REGISTRY
from fairseq_cli import eval_lm, generate, preprocess, validate

from fairseq_helpers import USER_DIR
from mega_fairseq import stream_eval
from mega_fairseq.convert import (ConversionError, architectures, convert_args, convert_checkpoint, convert_state_dict,
                                  load_original)
from mega_fairseq.prepare import listops
from mega_fairseq.prepare import lra as lra_prepare
from mega_fairseq.modules import RotaryRelativePositionBias, SimpleRelativePositionBias
from original_checkpoints import (LRA_TASKS, SCRIPT, assert_every_tensor_landed, classifier_state, convert,
                                  dictionary_size, load, lm_args, lm_state, lra_args, make_translation_data, mega_args,
                                  mega_state, save_original, sc_args)


# ------------------------------------------------------------------ data directories

@pytest.fixture(scope="module")
def translation_data(tmp_path_factory):
    return make_translation_data(tmp_path_factory.mktemp("convert_mt"))


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_lm")
    rng = np.random.default_rng(1)
    for split, count in (("train", 30), ("valid", 6), ("test", 6)):
        with open(root / f"{split}.txt", "w", encoding="utf-8") as f:
            for _ in range(count):
                f.write(" ".join(f"t{int(i)}" for i in rng.integers(0, 26, int(rng.integers(3, 9)))) + "\n")
    preprocess.main(options.get_preprocessing_parser().parse_args([
        "--only-source", "--workers", "1", "--destdir", str(root / "data-bin"), "--trainpref",
        str(root / "train.txt"), "--validpref", str(root / "valid.txt"), "--testpref", str(root / "test.txt")]))
    return root / "data-bin"


@pytest.fixture(scope="module")
def listops_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_listops")
    listops.write_splits(str(root / "raw"), {"train": 8, "valid": 6, "test": 6}, seed=2, max_depth=3, max_args=3,
                         min_length=5, max_length=40)
    lra_prepare.prepare_listops(str(root / "raw"), str(root / "data"))
    return root / "data"


@pytest.fixture(scope="module")
def aan_data(tmp_path_factory):
    """Document pairs (the Retrieval task's layout: src-bin, src1-bin, label-bin)."""
    root = tmp_path_factory.mktemp("convert_aan")
    (root / "raw").mkdir()
    for split, name in lra_prepare.AAN_FILE_NAMES.items():
        with open(root / "raw" / name, "w", encoding="utf-8") as f:
            for i in range(4):
                f.write(f"{float(i % 2)}\tid{i}a\tid{i}b\tfirst {split} {i}\tsecond document {i}\n")
    lra_prepare.prepare_aan(str(root / "raw"), str(root / "data"))
    return root / "data"


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_images")
    rng = np.random.default_rng(2)
    for split in ("train", "valid", "test"):
        labels = rng.integers(0, 3, 6)
        labels[0] = 2  # three classes in every split
        pixels = rng.integers(0, 256, (6, 64)).astype(np.uint8)
        lra_prepare.write_image_split(str(root / "data"), split, 6, 64, zip(pixels, labels))
    return root / "data"


@pytest.fixture(scope="module")
def sc_data(tmp_path_factory):
    """The speech_commands task's folder: raw/{classes.txt, normalization.npz, test.npy, test.label}."""
    folder = tmp_path_factory.mktemp("convert_sc") / "raw"
    folder.mkdir()
    (folder / "classes.txt").write_text("\n".join(f"word{i}" for i in range(10)) + "\n")
    np.savez(folder / "normalization.npz", mean=np.zeros(16000, np.float32), scale=np.full(16000, 3000.0, np.float32))
    rng = np.random.default_rng(3)
    np.save(folder / "test.npy", rng.integers(-3000, 3000, (3, 16000)).astype(np.int16))
    (folder / "test.label").write_text("1\n4\n7\n")
    return folder.parent


# ------------------------------------------------------------------ every family: names, values, loading

@pytest.mark.parametrize("changes, revision", [
    (dict(truncation_length=0), "flash"),
    (dict(share_all_embeddings=False, share_decoder_input_output_embed=True, normalize_before=True,
          rel_pos_bias="rotary", encoder_chunk_size=4, decoder_chunk_size=4, truncation_length=6,
          attention_activation_fn="laplace", normalization_type="rmsnorm"), "main"),
    (dict(normalize_embedding=True, normalization_type="scalenorm", attention_activation_fn="relu2",
          activation_fn="gelu_fast", truncation_length=None), "main"),
], ids=["wmt_recipe", "prenorm_rotary_chunked", "embed_norm_scalenorm"])
def test_translation_checkpoint_converts_and_loads(translation_data, tmp_path, changes, revision):
    args = mega_args(**changes)
    vocab = dictionary_size(translation_data / "dict.en.txt")
    if not args.share_all_embeddings:  # separate target embedding: a data-bin with its own target dictionary
        target_dict = Dictionary.load(str(translation_data / "dict.de.txt"))
        for index in range(3):
            target_dict.add_symbol(f"extra{index}")
        data = tmp_path / "data-bin"
        data.mkdir()
        for file in os.listdir(translation_data):
            os.symlink(translation_data / file, data / file)
        os.remove(data / "dict.de.txt")
        target_dict.save(str(data / "dict.de.txt"))
    else:
        data = translation_data
    original = mega_state(args, vocab, revision=revision)
    model, cfg, task = load(convert(tmp_path, args, original), data)
    assert_every_tensor_landed(original, model, revision)
    assert cfg.model._name == "mega_wmt_en_de" and cfg.task._name == "translation"
    assert (cfg.task.source_lang, cfg.task.target_lang) == ("en", "de")
    assert cfg.criterion._name == "label_smoothed_cross_entropy" and cfg.criterion.label_smoothing == 0.1
    layer = model.encoder.layers[0].mega_layer
    assert layer.move.truncation == (args.truncation_length or None)
    assert layer.attention_fn == args.attention_activation_fn and layer.prenorm == args.normalize_before
    assert model.encoder.layers[0].mega_layer.rel_pos_bias.max_positions == (
        args.encoder_chunk_size if args.encoder_chunk_size > 0 else 40)
    assert model.decoder.layers[0].cross_attn.rel_pos_bias.max_positions == 48


def test_converted_translation_model_decodes_with_fairseq_generate(translation_data, tmp_path):
    args = mega_args(normalize_before=True)
    checkpoint = convert(tmp_path, args, mega_state(args, dictionary_size(translation_data / "dict.en.txt")))
    state = torch.load(checkpoint)  # torch's default weights_only=True
    assert state["cfg"]["common"]["user_dir"] is None and state["args"] is None
    parser = options.get_generation_parser()
    generate.main(options.parse_args_and_arch(parser, [
        str(translation_data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--beam", "2", "--lenpen", "0.5",
        "--max-len-b", "6", "--batch-size", "4", "--num-workers", "0", "--results-path", str(tmp_path)]))
    output = (tmp_path / "generate-test.txt").read_text()
    assert len(re.findall(r"^H-\d+\t", output, flags=re.M)) == 5


@pytest.mark.parametrize("changes", [
    {},
    dict(arch="mega_lm_enwik8_base", criterion="cross_entropy", adaptive_input=False, adaptive_input_cutoff=None,
         adaptive_softmax_cutoff=None, tie_adaptive_weights=False, tie_adaptive_proj=False,
         share_decoder_input_output_embed=True, no_affine_final_norm=False),
    dict(arch="mega_lm", criterion="cross_entropy", adaptive_input=False, adaptive_input_cutoff=None,
         adaptive_softmax_cutoff=None, tie_adaptive_weights=False, tie_adaptive_proj=False, decoder_input_dim=12,
         decoder_chunk_size=-1, variant_block_multiple_min=1, variant_block_multiple_max=1, rel_pos_bias="simple",
         normalize_before=False, normalization_type="scalenorm"),
], ids=["wikitext103_adaptive", "enwik8_shared", "project_in_unchunked"])
def test_lm_checkpoint_converts_loads_and_evaluates(lm_data, tmp_path, changes, caplog):
    args = lm_args(**changes)
    original = lm_state(args, dictionary_size(lm_data / "dict.txt"))
    checkpoint = convert(tmp_path, args, original)
    model, cfg, _ = load(checkpoint, lm_data)
    assert_every_tensor_landed(original, model)
    assert cfg.task._name == "mega_language_modeling" and cfg.task.valid_block == "splits:2"
    assert (cfg.task.variant_block_multiple_min, cfg.task.variant_block_multiple_max) == (
        args.variant_block_multiple_min, args.variant_block_multiple_max)
    assert cfg.criterion._name == args.criterion
    parser = options.get_eval_lm_parser()
    eval_args = options.parse_args_and_arch(parser, [str(lm_data), "--user-dir", USER_DIR, "--path", str(checkpoint),
                                                     "--tokens-per-sample", "16", "--max-tokens", "256",
                                                     "--num-workers", "0"])
    with caplog.at_level("INFO"):
        eval_lm.main(convert_namespace_to_omegaconf(eval_args))
    assert re.search(r"Loss \(base 2\): \d+\.\d+, Perplexity: \d", caplog.text)
    if args.rel_pos_bias == "rotary":  # the original's long-context evaluation, with a longer chunk
        loss = stream_eval.main([str(lm_data), "--path", str(checkpoint), "--block-length", "8", "--cpu",
                                 "--model-overrides", '{"decoder_chunk_size": 8}'])
        assert 0 < loss < 20


def run_validate(data, task, checkpoint, capfd):
    """fairseq-validate (it takes --task from the command line, the criterion from the checkpoint)."""
    argv = [str(data), "--user-dir", USER_DIR, "--task", task, "--path", str(checkpoint), "--valid-subset", "test",
            "--batch-size", "4", "--num-workers", "0"]
    args = options.parse_args_and_arch(options.get_validation_parser(), argv)
    overrides = options.parse_args_and_arch(options.get_validation_parser(), argv, suppress_defaults=True)
    validate.main(convert_namespace_to_omegaconf(args), override_args=overrides)
    output = capfd.readouterr()
    assert re.search(r"valid on 'test' subset \| loss [\d.]+ \| accuracy [\d.]+", output.out + output.err)


@pytest.mark.parametrize("arch", list(LRA_TASKS))
def test_lra_checkpoint_converts_loads_and_validates(listops_data, aan_data, image_data, tmp_path, arch, capfd):
    args = lra_args(arch)
    data = {"mega_lra_listop": listops_data, "mega_lra_aan": aan_data}.get(arch, image_data)
    text = args.input_type == "text"
    vocab = dictionary_size(data / "src-bin" / "dict.txt", extra=1) if text else None  # + <CLS>
    original = classifier_state(args, vocab)
    checkpoint = convert(tmp_path, args, original)
    model, cfg, _ = load(checkpoint, data)
    assert_every_tensor_landed(original, model)
    assert cfg.task._name == args.task and cfg.criterion._name == "lra_cross_entropy"
    assert model.paired == (arch == "mega_lra_aan") and cfg.model.pair_features == ("concat" if model.paired
                                                                                     else "full")
    if text:
        assert cfg.task.shorten_method == "truncate"
    else:
        norm = model.encoder.final_norm
        assert norm.norm_type == args.norm_type and not norm.norm.training
        torch.testing.assert_close(norm.norm.running_var, original["encoder.encoder.final_norm.norm.running_var"])
    run_validate(data, args.task, checkpoint, capfd)


def test_sc_checkpoint_converts_loads_and_validates(sc_data, tmp_path, capfd):
    args = sc_args(chunk_size=500, truncation_length=800)
    original = classifier_state(args, None)
    checkpoint = convert(tmp_path, args, original)
    model, cfg, task = load(checkpoint, sc_data)
    assert_every_tensor_landed(original, model)
    assert cfg.task._name == "speech_commands" and model.encoder.layers[0].mega_layer.attention_fn == "laplace"
    run_validate(sc_data, "speech_commands", checkpoint, capfd)


# ------------------------------------------------------------------ same outputs where the layout differs
# (the EMA and its two original revisions: test_convert_ema_revisions.py)

def original_simple_bias(weight, max_positions, length):
    """The original SimpleRelativePositionalBias: the 2L-1 window around the centre, padded by L,
    tiled L times and re-read as L rows of 3L-2 (each row shifted by one), centre columns kept."""
    window = weight[max_positions - length: max_positions + length - 1]
    tiled = torch.tile(F.pad(window, (0, length)), (length,))[:-length].view(length, 3 * length - 2)
    return tiled[:, length - 1: 2 * length - 1]


def test_converted_simple_bias_is_the_original_bias():
    weight = torch.randn(2 * 6 - 1, dtype=torch.float64)
    converted = convert_state_dict({"encoder.layers.0.mega_layer.rel_pos_bias.rel_pos_bias": weight}, "mega",
                                   "main")
    bias = SimpleRelativePositionBias(6).double()
    bias.load_state_dict({"weight": converted["encoder.layers.0.mega_layer.rel_pos_bias.weight"]})
    for length in (1, 4, 6):
        torch.testing.assert_close(bias(length, length), original_simple_bias(weight, 6, length), rtol=0, atol=0)


def test_converted_rotary_bias_is_the_original_bias():
    """Same parameters; the original rotates alpha and beta with sin/cos tables of max_positions rows."""
    z_dim, positions, length = 8, 10, 7
    alpha, beta = torch.randn(1, z_dim), torch.randn(1, z_dim)
    prefix = "decoder.layers.1.mega_layer.rel_pos_bias."
    converted = convert_state_dict({prefix + "alpha": alpha, prefix + "beta": beta,
                                    prefix + "_float_tensor": torch.zeros(1)}, "mega_lm", "main")
    assert sorted(converted) == [prefix + "alpha", prefix + "beta"]
    half = z_dim // 2
    angles = torch.arange(positions, dtype=torch.float).unsqueeze(1) * torch.exp(
        torch.arange(half, dtype=torch.float) * -(math.log(10000) / half)).unsqueeze(0)
    sin, cos = torch.sin(angles)[:length], torch.cos(angles)[:length]

    def rotate(v):
        first, second = v.expand(length, z_dim).chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=1)

    bias = RotaryRelativePositionBias(z_dim, positions)
    bias.load_state_dict({"alpha": alpha, "beta": beta})
    torch.testing.assert_close(bias(length, length), rotate(alpha) @ rotate(beta).t())


# ------------------------------------------------------------------ clear errors

def convert_error(tmp_path, args, state):
    source = save_original(tmp_path / "original.pt", args, state)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(str(source), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()
    return str(error.value)


def test_missing_parameter_is_named(tmp_path):
    state = mega_state(mega_args(), 20)
    del state["encoder.layers.1.nffn.fc2.bias"]
    assert "missing from the original checkpoint: encoder.layers.1.nffn.fc2.bias" in convert_error(
        tmp_path, mega_args(), state)


def test_unexpected_parameter_is_named(tmp_path):
    state = mega_state(mega_args(), 20)
    state["decoder.layers.0.mega_layer.extra_proj.weight"] = torch.zeros(3)
    assert "unexpected): decoder.layers.0.mega_layer.extra_proj.weight" in convert_error(tmp_path, mega_args(), state)


def test_shape_mismatch_is_named(tmp_path):
    state = mega_state(mega_args(), 20)
    state["decoder.layers.1.cross_attn.k_proj.weight"] = torch.zeros(9, 16)
    message = convert_error(tmp_path, mega_args(), state)
    assert "shape mismatch: decoder.layers.1.cross_attn.k_proj.weight is (9, 16)" in message
    assert "needs (8, 16)" in message


def test_ema_in_an_unknown_layout_is_named(tmp_path):
    state = mega_state(mega_args(), 20)
    state["encoder.layers.0.mega_layer.move.alpha"] = state["encoder.layers.0.mega_layer.move.alpha"][..., 0]
    message = convert_error(tmp_path, mega_args(), state)
    assert "encoder.layers.0.mega_layer.move" in message and "'alpha' has shape (32, 4)" in message


def test_bias_for_other_positions_is_a_shape_mismatch(tmp_path):
    """--max-source-positions comes from the args: a bias vector of another length does not fit."""
    state = mega_state(mega_args(), 20)
    assert "rel_pos_bias.weight is (79,)" in convert_error(tmp_path, mega_args(max_source_positions=30,
                                                                                max_target_positions=30), state)


@pytest.mark.parametrize("args, message", [
    (mega_args(normalization_type="groupnorm"), "--normalization-type 'groupnorm' of the original model is not "
                                                "supported"),
    (mega_args(activation_fn="swish"), "--activation-fn 'swish'"),
    (mega_args(adaptive_softmax_cutoff="10,20"), "--adaptive-softmax-cutoff '10,20'"),
    (mega_args(arch="transformer_wmt_en_de"), "--arch 'transformer_wmt_en_de' of the original checkpoint is not"),
    (lra_args("mega_lra_listop", layer_type="transformer"), "only Mega LRA models"),
    (lra_args("mega_lra_listop", use_p=True), "--use-p True"),
    (lra_args("mega_lra_listop", classifier_in_dim=24), "--classifier-in-dim 24"),
    (lra_args("mega_lra_aan", norm_type=None), "no value for 'norm_type'"),
    (sc_args(mfcc=True), "--mfcc True"),
    (sc_args(sc_dropped_rate=50.0), "--sc-dropped-rate 50.0"),
    (lm_args(output_dictionary_size=100), "--output-dictionary-size 100"),
], ids=["norm", "activation", "mt_adaptive_softmax", "arch", "layer_type", "use_p", "classifier_in_dim",
        "missing_option", "mfcc", "dropped_rate", "output_dictionary"])
def test_unsupported_options_are_named(tmp_path, args, message):
    assert message in convert_error(tmp_path, args, {})


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 4)
    with pytest.raises(ConversionError, match="broken.pt is not a readable PyTorch checkpoint"):
        load_original(str(path))


def test_files_that_are_not_original_checkpoints(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")
    with pytest.raises(ConversionError, match=r"dict.pt is not a fairseq checkpoint: .*keys \['weights'\]"):
        load_original(str(tmp_path / "dict.pt"))
    torch.save({"cfg": {"model": {}}, "model": {}, "args": None}, tmp_path / "new.pt")
    with pytest.raises(ConversionError, match="fairseq >= 0.10 checkpoint, which needs no conversion"):
        load_original(str(tmp_path / "new.pt"))
    with pytest.raises(ConversionError, match="no such file"):
        load_original(str(tmp_path / "absent.pt"))


class _Payload:
    """Unpickling this would run a command: the weights-only loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_reading_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"args": _Payload(marker), "model": {}}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        load_original(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_script_reports_errors_with_exit_status_1(tmp_path, monkeypatch, capsys):
    """The script run as a program (in this process: a subprocess would spend seconds importing fairseq)."""
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    monkeypatch.setattr(sys, "argv", [SCRIPT, str(tmp_path / "junk.pt"), str(tmp_path / "out.pt")])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_status.value.code == 1
    stderr = capsys.readouterr().err
    assert "error: " in stderr and "junk.pt is not a readable PyTorch checkpoint" in stderr


def test_architectures_come_from_fairseq_registry(monkeypatch):
    known = architectures()
    assert known["mega_wmt_en_de"] == "mega" and known["mega_lm_adaptive_big"] == "mega_lm"
    assert known["mega_lra_pf128"] == "lra" and known["mega_sc_raw_big"] == "sc_raw"
    monkeypatch.setitem(ARCH_MODEL_NAME_REGISTRY, "mega_registered_in_a_test", "mega")
    assert architectures()["mega_registered_in_a_test"] == "mega"
    with pytest.raises(ConversionError, match="'transformer_wmt_en_de' of the original checkpoint is not a Mega "
                                              "architecture this converter knows .*mega_wmt_en_de"):
        convert_args(mega_args(arch="transformer_wmt_en_de"))
