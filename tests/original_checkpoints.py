"""Original-format checkpoints (facebookresearch/mega, fairseq 0.9 layout) for the converter tests.

The original code and checkpoints cannot be downloaded here, so original-format checkpoints are
built from the parameter names and shapes of the original modules (MovingAverageGatedAttention,
MultiHeadEMA, GatedCrossAttention, NormalizedFeedForwardNetwork, SequenceNorm,
Simple/RotaryRelativePositionalBias, fairseq 0.9's AdaptiveInput/AdaptiveSoftmax, MegaEncoder/
MegaDecoder, MegaDecoderNoCrossAttn, MegaLRAEncoder, MegaSCRawEncoder, LRAModel), random values
and an ``args`` namespace with the original option names. The EMA parameters are stored in the
declaration order of the chosen revision of the original MultiHeadEMA (main or flash).
"""
import argparse
import os
import re
import runpy

import numpy as np
import torch
from fairseq import checkpoint_utils, options
from fairseq.data import Dictionary
from fairseq_cli import preprocess

from fairseq_helpers import REPO
from mega_fairseq.convert import EMA_PARAMETER_ORDER

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
                   activation_fn="silu", attention_activation_fn="softmax", truncation_length=1024,
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


def mega_state(a, vocab, seed=0, revision="main"):
    """Tied weights are one tensor under several names, as in a real state dict; the EMA parameters
    in the declaration order of ``revision`` of the original MultiHeadEMA."""
    state = in_revision_order(random_state(mega_shapes(a, vocab), seed), revision)
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


def flash_name(name):
    """Our name of a flash EMA's alpha or delta: the two trade names (flash's p = sigmoid(alpha))."""
    return re.sub(r"\.move\.(alpha|delta)$", lambda m: ".move." + {"alpha": "delta", "delta": "alpha"}[m.group(1)],
                  name)


def assert_every_tensor_landed(original, model, revision="main"):
    """Every original entry under its new name with its value. For flash, alpha and delta trade
    names, and a bidirectional EMA's beta and omega are rewritten (checked by function elsewhere)."""
    ours = model.state_dict()
    landed = set()
    for name in original:
        new_name = expected_name(name)
        if new_name is None:
            continue
        if revision == "flash":
            new_name = flash_name(new_name)
        assert new_name in ours, f"{name} -> {new_name} is not in the converted model"
        landed.add(new_name)
        prefix = name.rpartition(".")[0] + "."
        rewritten = (revision == "flash" and re.search(r"\.move\.(beta|omega)$", name)
                     and original[prefix + "gamma"].shape[0] == 2 * original[prefix + "omega"].shape[0])
        if not rewritten:
            torch.testing.assert_close(ours[new_name].double(), expected_value(original, name).double(),
                                       rtol=1e-6, atol=1e-6, msg=f"{name} -> {new_name}")
    assert landed == set(ours), f"converted model entries with no original: {set(ours) - landed}"


def in_revision_order(state, revision):
    """The state dict with every EMA module's parameters in the declaration order of ``revision``
    of the original MultiHeadEMA (main: delta, alpha, ...; flash: alpha, delta, ...), where the
    module's first parameter was."""
    reordered = {}
    for name, tensor in state.items():
        match = re.match(r"(.*\.move\.)(alpha|delta|beta|gamma|omega)$", name)
        if match is None:
            reordered[name] = tensor
        elif match.group(1) + "omega" not in reordered:
            reordered.update({match.group(1) + part: state[match.group(1) + part]
                              for part in EMA_PARAMETER_ORDER[revision]})
    return reordered


def save_original(path, args, state):
    torch.save({"args": args, "model": state, "optimizer_history": [{"num_updates": 1000}],
                "extra_state": {"epoch": 3}, "last_optimizer_state": None}, path)
    return path


def convert(tmp_path, args, state, name="original.pt", flags=()):
    """Write the original checkpoint, convert it with the script's main() (and ``flags``); the converted path."""
    source = save_original(tmp_path / name, args, state)
    target = tmp_path / ("converted_" + name)
    assert runpy.run_path(SCRIPT)["main"]([str(source), str(target), *flags]) == 0
    return target


def load(checkpoint, data):
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data)})
    return models[0].eval(), cfg, task


# ------------------------------------------------------------------ data directories

def make_translation_data(root):
    """A tiny joined-dictionary en-de data-bin under root (train 20, valid 4, test 5 sentences)."""
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


def dictionary_size(path, extra=0):
    return len(Dictionary.load(str(path))) + extra
