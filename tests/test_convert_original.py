"""The converter of the original Mega checkpoints (mega_fairseq/convert.py, scripts/convert_original_checkpoint.py).

The original code and checkpoints cannot be downloaded here, so original-format checkpoints are
built from the parameter names and shapes of the original modules (facebookresearch/mega:
MovingAverageGatedAttention, MultiHeadEMA, GatedCrossAttention, NormalizedFeedForwardNetwork,
SequenceNorm, Simple/RotaryRelativePositionalBias, fairseq 0.9's AdaptiveInput/AdaptiveSoftmax,
MegaEncoder/MegaDecoder, MegaDecoderNoCrossAttn, MegaLRAEncoder, MegaSCRawEncoder, LRAModel),
random values and an ``args`` namespace with the original option names. Each is converted, loaded
through fairseq's checkpoint_utils, and every original tensor is found under its new name with
its value (after the documented transform). Where the layout differs (EMA, simple position bias)
a float64 reference of the original computation is compared with our converted module.
"""
import argparse
import math
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils, options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import eval_lm, generate, preprocess, validate

from fairseq_helpers import REPO, USER_DIR
from mega_fairseq import stream_eval
from mega_fairseq.convert import ConversionError, convert_checkpoint, convert_state_dict, load_original
from mega_fairseq.prepare import listops
from mega_fairseq.prepare import lra as lra_prepare
from mega_fairseq.modules import MultiDimensionalEMA, RotaryRelativePositionBias, SimpleRelativePositionBias

SCRIPT = os.path.join(REPO, "scripts", "convert_original_checkpoint.py")


# ------------------------------------------------------------------ original parameter names and shapes

def norm_shapes(prefix, norm_type, dim, affine=True):
    """SequenceNorm(norm_type, dim) at ``prefix`` (its module is ``prefix + 'norm'``)."""
    if not affine:
        return {}
    p = prefix + "norm."
    if norm_type == "layernorm":
        return {p + "weight": (dim,), p + "bias": (dim,)}
    if norm_type == "scalenorm":
        return {p + "scalar": (1,)}
    if norm_type == "rmsnorm":
        return {p + "weight": (dim,)}
    return {p + "weight": (dim,), p + "bias": (dim,), p + "running_mean": (dim,), p + "running_var": (dim,),
            p + "num_batches_tracked": ()}


def bias_shapes(prefix, kind, z_dim, positions):
    if kind == "simple":
        return {prefix + "rel_pos_bias.rel_pos_bias": (2 * positions - 1,)}
    return {prefix + "rel_pos_bias.alpha": (1, z_dim), prefix + "rel_pos_bias.beta": (1, z_dim),
            prefix + "rel_pos_bias._float_tensor": (1,)}


def mega_block_shapes(p, d, z, h, n, bidirectional, norm, bias, positions):
    """MovingAverageGatedAttention with its MultiHeadEMA ``move``."""
    kernel = 2 * d if bidirectional else d
    return {**norm_shapes(p + "norm.", norm, d),
            p + "move.delta": (kernel, n, 1), p + "move.alpha": (kernel, n, 1), p + "move.beta": (kernel, n, 1),
            p + "move.gamma": (kernel, n), p + "move.omega": (d,),
            p + "v_proj.weight": (h, d), p + "v_proj.bias": (h,),
            p + "mx_proj.weight": (z + h + 2 * d, d), p + "mx_proj.bias": (z + h + 2 * d,),
            p + "h_proj.weight": (d, h), p + "h_proj.bias": (d,), p + "gamma": (2, z), p + "beta": (2, z),
            **bias_shapes(p, bias, z, positions)}


def cross_attention_shapes(p, d, z, norm, bias, positions):
    return {**norm_shapes(p + "norm.", norm, d), p + "k_proj.weight": (z, d), p + "k_proj.bias": (z,),
            p + "v_proj.weight": (d, d), p + "v_proj.bias": (d,), p + "q_proj.weight": (2 * d + z, d),
            p + "q_proj.bias": (2 * d + z,), p + "h_proj.weight": (d, d), p + "h_proj.bias": (d,),
            **bias_shapes(p, bias, z, positions)}


def ffn_shapes(p, d, f, norm):
    if f <= 0:
        return {}
    return {**norm_shapes(p + "norm.", norm, d), p + "fc1.weight": (f, d), p + "fc1.bias": (f,),
            p + "fc2.weight": (d, f), p + "fc2.bias": (d,)}


def random_state(shapes, seed):
    """Random tensors of these shapes (positive running variances, integer batch counts)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(17)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith(("._float_tensor", ".version")):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.5
    return state


def original_args(**options):
    """An original training command's args: the given options plus training-only ones the converter ignores."""
    return argparse.Namespace(lr=[0.001], optimizer="adam", adam_betas="(0.9, 0.98)", clip_norm=1.0, seed=1,
                              max_update=100, save_dir="/original/checkpoints", fp16=False, **options)


def mega_args(**changes):
    """mega_wmt_en_de after the original's architecture function, tiny dimensions."""
    options = dict(arch="mega_wmt_en_de", task="translation", data="/original/data-bin", source_lang="en",
                   target_lang="de", criterion="label_smoothed_cross_entropy", label_smoothing=0.1,
                   encoder_embed_dim=16, encoder_hidden_dim=24, encoder_ffn_embed_dim=20, encoder_z_dim=8,
                   encoder_n_dim=4, encoder_layers=2, encoder_chunk_size=-1, encoder_embed_path=None,
                   decoder_embed_dim=16, decoder_hidden_dim=24, decoder_ffn_embed_dim=20, decoder_z_dim=8,
                   decoder_n_dim=4, decoder_layers=2, decoder_chunk_size=-1, decoder_embed_path=None,
                   decoder_input_dim=16, dropout=0.15, attention_dropout=0.1, hidden_dropout=0.1,
                   activation_dropout=0.1, feature_dropout=False, rel_pos_bias="simple",
                   normalization_type="layernorm", normalize_before=False, normalize_embedding=False,
                   no_scale_embedding=False, adaptive_softmax_cutoff=None, adaptive_softmax_dropout=0,
                   share_decoder_input_output_embed=True, share_all_embeddings=True, adaptive_input=False,
                   activation_fn="silu", attention_activation_fn="softmax", truncation_length=0,
                   tie_adaptive_weights=False, max_source_positions=40, max_target_positions=48)
    options.update(changes)
    return original_args(**options)


def mega_shapes(a, vocab):
    """MegaModel: MegaEncoder + MegaDecoder (shared or separate embeddings)."""
    shapes = {"encoder.version": (1,), "decoder.version": (1,), "encoder.embed_tokens.weight": (vocab, 16)}
    if not a.share_all_embeddings:
        shapes["decoder.embed_tokens.weight"] = (vocab + 3, 16)
    for i in range(a.encoder_layers):
        p = f"encoder.layers.{i}."
        shapes.update(mega_block_shapes(p + "mega_layer.", 16, 8, 24, 4, True, a.normalization_type, a.rel_pos_bias,
                                        a.encoder_chunk_size if a.encoder_chunk_size > 0 else a.max_source_positions))
        shapes.update(ffn_shapes(p + "nffn.", 16, 20, a.normalization_type))
    for i in range(a.decoder_layers):
        p = f"decoder.layers.{i}."
        shapes.update(mega_block_shapes(p + "mega_layer.", 16, 8, 24, 4, False, a.normalization_type, a.rel_pos_bias,
                                        a.decoder_chunk_size if a.decoder_chunk_size > 0 else a.max_target_positions))
        shapes.update(cross_attention_shapes(p + "cross_attn.", 16, 8, a.normalization_type, a.rel_pos_bias,
                                             max(a.max_source_positions, a.max_target_positions)))
        shapes.update(ffn_shapes(p + "nffn.", 16, 20, a.normalization_type))
    if a.normalize_before:
        shapes.update(norm_shapes("encoder.final_norm.", a.normalization_type, 16))
        shapes.update(norm_shapes("decoder.final_norm.", a.normalization_type, 16))
    if a.normalize_embedding:
        shapes.update(norm_shapes("encoder.embed_norm.", a.normalization_type, 16))
        shapes.update(norm_shapes("decoder.embed_norm.", a.normalization_type, 16))
    return shapes


def mega_state(a, vocab, seed=0):
    """Tied weights are one tensor under several names, as in a real state dict."""
    state = random_state(mega_shapes(a, vocab), seed)
    if a.share_all_embeddings:
        state["decoder.embed_tokens.weight"] = state["encoder.embed_tokens.weight"]
    state["decoder.output_projection.weight"] = state["decoder.embed_tokens.weight"]
    state["encoder.version"] = state["decoder.version"] = torch.tensor([3.0])
    return state


def lm_args(**changes):
    """mega_lm_adaptive_big (= the WikiText-103 recipe's flags) with tiny dimensions and cutoffs."""
    options = dict(arch="mega_lm_adaptive_big", task="language_modeling", data="/original/wt103",
                   criterion="adaptive_loss", tokens_per_sample=32, max_target_positions=64,
                   sample_break_mode="complete", add_bos_token=False, output_dictionary_size=-1,
                   variant_block_multiple_min=2, variant_block_multiple_max=3, valid_block="splits:2",
                   decoder_embed_path=None, decoder_embed_dim=16, decoder_hidden_dim=24, decoder_ffn_embed_dim=20,
                   decoder_z_dim=8, decoder_n_dim=4, decoder_layers=2, decoder_chunk_size=4, decoder_input_dim=16,
                   adaptive_softmax_cutoff="10,20", adaptive_softmax_dropout=0.2, adaptive_softmax_factor=4,
                   tie_adaptive_weights=True, tie_adaptive_proj=True, attention_dropout=0.1, hidden_dropout=0.1,
                   activation_dropout=None, dropout=0.3, feature_dropout=False, rel_pos_bias="rotary",
                   normalization_type="layernorm", normalize_before=True, normalize_embedding=False,
                   no_scale_embedding=False, no_affine_final_norm=True, adaptive_input=True,
                   adaptive_input_factor=4, adaptive_input_cutoff="10,20", share_decoder_input_output_embed=False,
                   share_all_embeddings=False, activation_fn="silu", attention_activation_fn="softmax",
                   truncation_length=64)
    options.update(changes)
    return original_args(**options)


def lm_state(a, vocab, seed=0):
    """MegaLanguageModel: MegaDecoderNoCrossAttn with AdaptiveInput / AdaptiveSoftmax, or an embedding."""
    shapes = {"decoder.version": (1,)}
    if a.adaptive_input:
        cutoff = [int(c) for c in a.adaptive_input_cutoff.split(",")] + [vocab]
        for band, (low, high) in enumerate(zip([0] + cutoff[:-1], cutoff)):
            dim = int(16 // (a.adaptive_input_factor ** band))
            shapes[f"decoder.embed_tokens.embeddings.{band}.0.weight"] = (high - low, dim)
            shapes[f"decoder.embed_tokens.embeddings.{band}.1.weight"] = (16, dim)
        shapes["decoder.embed_tokens._float_tensor"] = (1,)
    else:
        shapes["decoder.embed_tokens.weight"] = (vocab, a.decoder_input_dim)
        if a.decoder_input_dim != a.decoder_embed_dim:
            shapes["decoder.project_in_dim.weight"] = (16, a.decoder_input_dim)
    for i in range(a.decoder_layers):
        p = f"decoder.layers.{i}."
        shapes.update(mega_block_shapes(p + "mega_layer.", 16, 8, 24, 4, False, a.normalization_type, a.rel_pos_bias,
                                        a.decoder_chunk_size if a.decoder_chunk_size > 0 else a.max_target_positions))
        shapes.update(ffn_shapes(p + "nffn.", 16, 20, a.normalization_type))
    if a.normalize_before:
        shapes.update(norm_shapes("decoder.final_norm.", a.normalization_type, 16, not a.no_affine_final_norm))
    state = random_state(shapes, seed)
    if a.adaptive_softmax_cutoff is not None:  # tied to the adaptive input (the WikiText-103 model)
        tails = len(cutoff) - 1
        state["decoder.adaptive_softmax.head.word_proj.weight"] = state["decoder.embed_tokens.embeddings.0.0.weight"]
        state["decoder.adaptive_softmax.head.class_proj.weight"] = torch.randn(tails, 16)
        state["decoder.adaptive_softmax.head._float_tensor"] = torch.zeros(1)
        for t in range(tails):
            band = f"decoder.embed_tokens.embeddings.{t + 1}."
            state[f"decoder.adaptive_softmax.tail.{t}.0.weight"] = state[band + "1.weight"]  # tied projection
            state[f"decoder.adaptive_softmax.tail.{t}.2.weight"] = state[band + "0.weight"]  # tied embedding
        state["decoder.adaptive_softmax.version"] = torch.tensor([1])
    elif a.share_decoder_input_output_embed:
        state["decoder.output_projection.weight"] = state["decoder.embed_tokens.weight"]
    else:
        state["decoder.output_projection.weight"] = torch.randn(vocab, 16)
    return state


LRA_TASKS = {
    # arch: (task, input type, norm, attention, chunk, max positions, classes, paired)
    "mega_lra_listop": ("lra-text", "text", "scalenorm", "softmax", -1, 64, 10, False),
    "mega_lra_aan": ("lra-text", "text", "scalenorm", "softmax", 8, 64, 2, True),
    "mega_lra_cifar10": ("lra-image", "image", "batchnorm", "laplace", 16, 64, 3, False),
    "mega_lra_pf128": ("lra-image", "image", "syncbatchnorm", "laplace", 16, 64, 3, False),
}


def lra_args(arch, **changes):
    task, input_type, norm, attention, chunk, positions, classes, paired = LRA_TASKS[arch]
    options = dict(arch=arch, task=task, data="/original/lra", criterion="lra_cross_entropy", input_type=input_type,
                   layer_type="mega", norm_type=norm, attention_activation_fn=attention, chunk_size=chunk,
                   max_positions=positions, sentence_class_num=classes, encoder_layers=2, encoder_embed_dim=16,
                   encoder_hidden_dim=24, encoder_ffn_embed_dim=20, z_dim=8, n_dim=4, classifier_layers=1,
                   classifier_out_dim=12, classifier_in_dim=32 if paired else 16, classifier_activation_fn="gelu",
                   activation_fn="silu", dropout=0.1, attention_dropout=0.0, act_dropout=0.0, feature_dropout=False,
                   encoder_normalize_before=input_type == "image", normalize_embedding=False,
                   truncation_length=32, rel_pos_bias="simple", sen_rep_type="mp", use_p=False, apply_bert_init=False,
                   encoder_attention_heads=8, encoder_learned_pos=False, pixel_normalization=None,
                   shorten_method="none")
    options.update(changes)
    return original_args(**options)


def classifier_state(a, vocab, seed=0):
    """LRAModel / SCRawModel: encoder.encoder = MegaLRAEncoder / MegaSCRawEncoder, classifier, projection."""
    p = "encoder.encoder."
    if getattr(a, "input_type", "image") == "text":
        shapes = {p + "embed_tokens.embed.weight": (vocab, 16)}
    else:
        shapes = {p + "embed_tokens.weight": (16,), p + "embed_tokens.bias": (16,)}
    for i in range(a.encoder_layers):
        shapes.update(mega_block_shapes(f"{p}layers.{i}.mega_layer.", 16, 8, 24, 4, True, a.norm_type,
                                        a.rel_pos_bias, a.chunk_size if a.chunk_size > 0 else a.max_positions))
        shapes.update(ffn_shapes(f"{p}layers.{i}.nffn.", 16, 20, a.norm_type))
    if a.encoder_normalize_before:
        shapes.update(norm_shapes(p + "final_norm.", a.norm_type, 16))
    if a.normalize_embedding:
        shapes.update(norm_shapes(p + "embed_norm.", a.norm_type, 16))
    shapes.update({"classifier.0.0.weight": (12, a.classifier_in_dim), "classifier.0.0.bias": (12,),
                   "sentence_projection_layer.weight": (a.sentence_class_num, 12)})
    return random_state(shapes, seed)


def sc_args(**changes):
    """mega_sc_raw_base after the original's architecture function (tiny dimensions, short chunks)."""
    options = dict(arch="mega_sc_raw_base", task="speech_commands", data="/original/sc", criterion="lra_cross_entropy",
                   layer_type="mega", encoder_layers=2, encoder_embed_dim=16, encoder_hidden_dim=24,
                   encoder_ffn_embed_dim=20, z_dim=8, n_dim=4, dropout=0.0, attention_dropout=0.0, act_dropout=0.0,
                   feature_dropout=False, activation_fn="silu", attention_activation_fn="laplace",
                   norm_type="batchnorm",
                   encoder_normalize_before=True, normalize_embedding=False, classifier_layers=1, classifier_out_dim=12,
                   sentence_class_num=10, classifier_activation_fn="gelu", classifier_in_dim=16, chunk_size=1000,
                   truncation_length=1000, max_positions=16000, sen_rep_type="mp", rel_pos_bias="simple",
                   sc_all_classes=False, sc_dropped_rate=0.0, mfcc=False, apply_bert_init=False)
    options.update(changes)
    return original_args(**options)


# ------------------------------------------------------------------ where each original tensor must land

def expected_name(name):
    """Our name of an original entry (the documented mapping), None for the dropped ones."""
    if re.search(r"^(encoder|decoder)\.version$|\.rel_pos_bias\._float_tensor$", name):
        return None
    name = re.sub(r"\.rel_pos_bias\.rel_pos_bias$", ".rel_pos_bias.weight", name)
    if name.startswith("encoder.encoder."):  # the LRA and Speech Commands classifiers
        return re.sub(r"^encoder\.encoder\.(embed_tokens\.)(embed\.)?|^encoder\.encoder\.", r"encoder.\1", name)
    name = re.sub(r"^(encoder|decoder)\.(embed_tokens|embed_norm)\.", r"\1.embedder.\2.", name)
    return re.sub(r"^decoder\.project_in_dim\.", "decoder.embedder.project_in.", name)


def expected_value(state, name):
    """The original tensor after the documented transform (EMA alpha/delta/beta lose their last axis)."""
    if re.search(r"\.move\.(alpha|delta|beta)$", name):
        return state[name][..., 0]
    return state[name]


def assert_every_tensor_landed(original, model):
    ours = model.state_dict()
    landed = set()
    for name in original:
        new_name = expected_name(name)
        if new_name is None:
            continue
        assert new_name in ours, f"{name} -> {new_name} is not in the converted model"
        torch.testing.assert_close(ours[new_name].double(), expected_value(original, name).double(),
                                   rtol=1e-6, atol=1e-6, msg=f"{name} -> {new_name}")
        landed.add(new_name)
    assert landed == set(ours), f"converted model entries with no original: {set(ours) - landed}"


def save_original(path, args, state):
    torch.save({"args": args, "model": state, "optimizer_history": [{"num_updates": 1000}],
                "extra_state": {"epoch": 3}, "last_optimizer_state": None}, path)
    return path


def convert(tmp_path, args, state, name="original.pt"):
    """Write the original checkpoint, convert it with the script's main(); the converted path."""
    source = save_original(tmp_path / name, args, state)
    target = tmp_path / ("converted_" + name)
    assert runpy.run_path(SCRIPT)["main"]([str(source), str(target)]) == 0
    return target


def load(checkpoint, data):
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data)})
    return models[0].eval(), cfg, task


# ------------------------------------------------------------------ data directories

@pytest.fixture(scope="module")
def translation_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_mt")
    words = [f"w{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("valid", 4), ("test", 5)):
        for lang in ("en", "de"):
            with open(root / f"{split}.{lang}", "w", encoding="utf-8") as f:
                for _ in range(count):
                    f.write(" ".join(rng.choice(words, int(rng.integers(2, 7)))) + "\n")
    preprocess.main(options.get_preprocessing_parser().parse_args([
        "--source-lang", "en", "--target-lang", "de", "--joined-dictionary", "--workers", "1",
        "--trainpref", str(root / "train"), "--validpref", str(root / "valid"), "--testpref", str(root / "test"),
        "--destdir", str(root / "data-bin")]))
    return root / "data-bin"


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


def dictionary_size(path, extra=0):
    return len(Dictionary.load(str(path))) + extra


# ------------------------------------------------------------------ every family: names, values, loading

@pytest.mark.parametrize("changes", [
    {},
    dict(share_all_embeddings=False, share_decoder_input_output_embed=True, normalize_before=True,
         rel_pos_bias="rotary", encoder_chunk_size=4, decoder_chunk_size=4, truncation_length=6,
         attention_activation_fn="laplace", normalization_type="rmsnorm"),
    dict(normalize_embedding=True, normalization_type="scalenorm", attention_activation_fn="relu2",
         activation_fn="gelu_fast", truncation_length=None),
], ids=["wmt_recipe", "prenorm_rotary_chunked", "embed_norm_scalenorm"])
def test_translation_checkpoint_converts_and_loads(translation_data, tmp_path, changes):
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
    original = mega_state(args, vocab)
    model, cfg, task = load(convert(tmp_path, args, original), data)
    assert_every_tensor_landed(original, model)
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

def original_ema(x, delta, alpha, beta, gamma, omega, bidirectional, truncation=None, padding_mask=None):
    """The original MultiHeadEMA forward, slowly, in float64, from (D', N, 1) parameters:
    p = sigmoid(delta), q = 1 - p * sigmoid(alpha), k[d, j] = sqrt(1/N) sum_n gamma p beta q^j (j < K,
    K = min(L, truncation)); causal y_t = sum_j k[d, j] x_{t-j}; bidirectional adds, with the second
    D kernels, sum_m k[D + d, m] x_{t+m} for m >= 0 (lag 0 weighed by both); out = silu(y + omega x)."""
    length, batch, dim = x.shape
    p = torch.sigmoid(delta[..., 0])
    q = 1.0 - p * torch.sigmoid(alpha[..., 0])
    size = length if truncation is None else min(truncation, length)
    kernel = torch.stack([(gamma * p * beta[..., 0] * q ** j).sum(-1) for j in range(size)], -1)
    kernel = kernel / math.sqrt(gamma.shape[1])
    signal = x if padding_mask is None else x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
    y = torch.zeros_like(x)
    for t in range(length):
        for j in range(min(t + 1, size)):
            y[t] += kernel[:dim, j] * signal[t - j]
        if bidirectional:
            for m in range(min(length - t, size)):
                y[t] += kernel[dim:, m] * signal[t + m]
    return F.silu(y + omega * x)


@pytest.mark.parametrize("truncation", [None, 4])
def test_reference_is_the_original_fft_construction(truncation):
    """The original computes the bidirectional EMA as one FFT convolution: the forward kernel placed
    at lags 0..K-1 and the reversed backward kernel at lags -(K-1)..0 of one 2K-1 kernel, the input
    shifted by K-1; both kernels land on lag 0. The loop reference above is the same function."""
    dim, ndim, length = 3, 2, 7
    generator = torch.Generator().manual_seed(6)
    delta, alpha, beta = (torch.randn(2 * dim, ndim, 1, generator=generator, dtype=torch.float64) for _ in range(3))
    gamma = torch.randn(2 * dim, ndim, generator=generator, dtype=torch.float64)
    omega = torch.randn(dim, generator=generator, dtype=torch.float64)
    x = torch.randn(length, 2, dim, generator=generator, dtype=torch.float64)
    size = length if truncation is None else truncation
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    lags = torch.arange(size, dtype=torch.float64)
    kernel = torch.einsum("dnl,dn->dl", p * beta * q ** lags, gamma) / math.sqrt(ndim)
    two_sided = F.pad(kernel[:dim], (size - 1, 0)) + F.pad(kernel[dim:].flip(-1), (0, size - 1))
    n = 2 * (length + size - 1)
    signal = F.pad(x.permute(1, 2, 0), (size - 1, 0))
    y = torch.fft.irfft(torch.fft.rfft(signal, n=n) * torch.fft.rfft(two_sided, n=n), n=n)
    expected = F.silu(y[..., 2 * size - 2: 2 * size - 2 + length].permute(2, 0, 1) + omega * x)
    torch.testing.assert_close(original_ema(x, delta, alpha, beta, gamma, omega, True, truncation), expected)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("truncation", [None, 3])
def test_converted_ema_computes_the_original_ema(bidirectional, truncation):
    dim, ndim, length = 5, 3, 9
    generator = torch.Generator().manual_seed(4)
    kernel_dim = 2 * dim if bidirectional else dim
    prefix = "encoder.layers.0.mega_layer.move."
    original = {prefix + name: torch.randn(shape, generator=generator, dtype=torch.float64)
                for name, shape in (("delta", (kernel_dim, ndim, 1)), ("alpha", (kernel_dim, ndim, 1)),
                                    ("beta", (kernel_dim, ndim, 1)), ("gamma", (kernel_dim, ndim)), ("omega", (dim,)))}
    converted = convert_state_dict(original, "mega")
    ema = MultiDimensionalEMA(dim, ndim, bidirectional, truncation).double()
    ema.load_state_dict({name[len(prefix):]: tensor for name, tensor in converted.items()})
    x = torch.randn(length, 2, dim, generator=generator, dtype=torch.float64)
    padding_mask = torch.zeros(2, length, dtype=torch.bool)
    padding_mask[1, -3:] = True
    reference = original_ema(x, *(original[prefix + n] for n in ("delta", "alpha", "beta", "gamma", "omega")),
                             bidirectional, truncation, padding_mask)
    torch.testing.assert_close(ema(x, padding_mask), reference, rtol=1e-10, atol=1e-10)


def original_simple_bias(weight, max_positions, length):
    """The original SimpleRelativePositionalBias: the 2L-1 window around the centre, padded by L,
    tiled L times and re-read as L rows of 3L-2 (each row shifted by one), centre columns kept."""
    window = weight[max_positions - length: max_positions + length - 1]
    tiled = torch.tile(F.pad(window, (0, length)), (length,))[:-length].view(length, 3 * length - 2)
    return tiled[:, length - 1: 2 * length - 1]


def test_converted_simple_bias_is_the_original_bias():
    weight = torch.randn(2 * 6 - 1, dtype=torch.float64)
    converted = convert_state_dict({"encoder.layers.0.mega_layer.rel_pos_bias.rel_pos_bias": weight}, "mega")
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
                                    prefix + "_float_tensor": torch.zeros(1)}, "mega_lm")
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


def test_script_reports_errors_with_exit_status_1(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "junk.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "error: " in result.stderr and "junk.pt is not a readable PyTorch checkpoint" in result.stderr
