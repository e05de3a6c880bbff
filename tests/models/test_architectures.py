"""Every registered architecture of the plugin builds the same model (parameter and buffer names and
shapes) through fairseq-train's config path and through the legacy Namespace path
(``task.build_model(args)``), with its own defaults; and those defaults are the original's.

The Mega models are built on the meta device (no memory, no initialization), so the full-size
architectures are compared as they are; the (small) Transformer baselines on the CPU, as fairseq's
BERT initialization copies through the CPU."""
import os

import numpy as np
import pytest
import torch
from fairseq import models, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_helpers import USER_DIR

ADAPTIVE_VOCABULARY = 60_010  # above the adaptive architectures' last cutoff (60000)
TEXT_LRA = ("listop", "imdb", "aan")


def plugin_architectures():
    return sorted(arch for arch, model in models.ARCH_MODEL_REGISTRY.items()
                  if model.__module__.startswith("mega_fairseq."))


def write_dictionary(path, size: int):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"w{index} 1\n" for index in range(size))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One data directory per task, holding only what setting the task up reads."""
    root = tmp_path_factory.mktemp("architectures")
    write_dictionary(str(root / "translation" / "dict.en.txt"), 20)
    write_dictionary(str(root / "translation" / "dict.de.txt"), 20)
    write_dictionary(str(root / "lm" / "dict.txt"), ADAPTIVE_VOCABULARY)
    write_dictionary(str(root / "lra-text" / "src-bin" / "dict.txt"), 20)
    write_dictionary(str(root / "lra-text" / "label-bin" / "dict.txt"), 10)
    os.makedirs(root / "lra-image" / "label")
    (root / "lra-image" / "label" / "train.label").write_text("0\n9\n")
    raw = root / "speech_commands" / "raw"
    os.makedirs(raw)
    (raw / "classes.txt").write_text("\n".join(f"word{index}" for index in range(10)) + "\n")
    np.savez(raw / "normalization.npz", mean=np.zeros(16000, np.float32), scale=np.ones(16000, np.float32))
    return root


def task_arguments(arch: str, root) -> list:
    """The data directory and task flags an architecture trains with."""
    if arch.startswith("mega_lm"):
        return [str(root / "lm"), "--task", "language_modeling"]
    if arch.startswith(("mega_sc", "sc_raw")):
        return [str(root / "speech_commands"), "--task", "speech_commands"]
    if arch == "lra" or arch.endswith(TEXT_LRA):
        return [str(root / "lra-text"), "--task", "lra-text"]
    if "_lra_" in arch:
        return [str(root / "lra-image"), "--task", "lra-image"]
    return [str(root / "translation"), "--task", "translation", "-s", "en", "-t", "de"]


@pytest.fixture(scope="module")
def task_of(data):
    """The task of an architecture's arguments, set up once per data directory (only the model-building
    path differs between the two builds)."""
    cache = {}

    def setup(args):
        if args.data not in cache:
            cache[args.data] = tasks.setup_task(args)
        return cache[args.data]
    return setup


def layout(model) -> list:
    return [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]


# arch: (D, H, FFN, Z, N, layers, truncation), the original's (docs/math.md, section 6)
ORIGINAL_LM_DIMENSIONS = {
    "mega_lm": (512, 1664, 1664, 128, 16, 6, 2048),
    "mega_lm_big": (1024, 2048, 2048, 256, 16, 16, 2048),
    "mega_lm_adaptive_base": (768, 1536, 1536, 128, 16, 16, 2048),
    "mega_lm_enwik8_base": (512, 1024, 1024, 128, 16, 12, 2048),
    "mega_lm_enwik8_large": (1024, 1536, 1536, 128, 16, 24, 2048),
}


def lm_dimensions(model) -> tuple:
    block, ffn = model.decoder.layers[0].mega_layer, model.decoder.layers[0].nffn
    assert model.decoder.embedder.embed_tokens.embedding_dim == block.embed_dim  # --decoder-input-dim follows D
    return (block.embed_dim, block.hidden_dim, ffn.fc1.out_features, block.z_dim, block.move.ndim,
            len(model.decoder.layers), block.move.truncation)


@pytest.mark.parametrize("arch", plugin_architectures())
def test_config_and_namespace_paths_build_the_same_model(arch, data, task_of):
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [*task_arguments(arch, data), "--user-dir", USER_DIR, "--arch", arch])
    cfg = convert_namespace_to_omegaconf(args)
    with torch.device("cpu" if arch.startswith("transformer_") else "meta"):
        from_config = task_of(args).build_model(cfg.model)  # fairseq-train
        from_namespace = task_of(args).build_model(args)  # the legacy path
    assert layout(from_config) == layout(from_namespace)
    if arch in ORIGINAL_LM_DIMENSIONS:
        assert lm_dimensions(from_config) == lm_dimensions(from_namespace) == ORIGINAL_LM_DIMENSIONS[arch]


def test_every_family_is_covered():
    covered = {models.ARCH_MODEL_REGISTRY[arch].__name__ for arch in plugin_architectures()}
    assert covered == {"MegaModel", "MegaLanguageModel", "LRAModel", "SCRawModel"}
    assert set(ORIGINAL_LM_DIMENSIONS) <= set(plugin_architectures())


def test_decoder_dimensions_follow_the_encoder_on_both_paths(data, task_of):
    flags = ["--encoder-embed-dim", "64", "--encoder-hidden-dim", "96", "--encoder-z-dim", "16"]
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [*task_arguments("mega", data), "--user-dir", USER_DIR, "--arch", "mega",
                                        *flags])
    cfg = convert_namespace_to_omegaconf(args)
    with torch.device("meta"):
        for model in (task_of(args).build_model(cfg.model), task_of(args).build_model(args)):
            block = model.decoder.layers[0].mega_layer
            assert (block.embed_dim, block.hidden_dim, block.z_dim) == (64, 96, 16)
            assert model.decoder.layers[0].nffn.fc1.out_features == 96
