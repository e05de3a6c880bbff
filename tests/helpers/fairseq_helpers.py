"""Building Mega translation models and language models through fairseq's own option parsing, and their
inputs, for the model-level tests."""
import json
import multiprocessing
import os
import random
import socket
from types import SimpleNamespace

import torch
from fairseq import options
from fairseq.data import Dictionary

import mega_fairseq  # noqa: F401  (registers the plugin)
from mega_fairseq.models.mega import MegaModel
from mega_fairseq.models.mega_lm import MegaLanguageModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "mega_fairseq")

TINY = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16",
        "--encoder-hidden-dim", "24", "--encoder-ffn-embed-dim", "20", "--encoder-z-dim", "8",
        "--encoder-n-dim", "4", "--dropout", "0", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--activation-dropout", "0"]


def make_dictionary(num_words: int = 30) -> Dictionary:
    dictionary = Dictionary()
    for index in range(num_words):
        dictionary.add_symbol(f"w{index}")
    return dictionary


def parse_model_args(extra_args, arch: str = "mega_wmt_en_de"):
    """The model arguments fairseq-train would build from this command line."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data", "--arch", arch, "--user-dir", USER_DIR, *extra_args])


def build_model(extra_args=(), dictionary=None, arch: str = "mega_wmt_en_de", seed: int = 0) -> MegaModel:
    """A Mega translation model in eval mode, float64, from command-line style arguments."""
    torch.manual_seed(seed)
    dictionary = dictionary or make_dictionary()
    args = parse_model_args([*TINY, "--share-all-embeddings", *extra_args], arch)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return MegaModel.build_model(args, task).double().eval()


def random_tokens(dictionary: Dictionary, lengths, generator: random.Random, left_pad: bool) -> torch.Tensor:
    """(B, max(lengths)) real-word tokens ending with eos, padded on the left or right."""
    width = max(lengths)
    rows = []
    for length in lengths:
        words = [generator.randrange(dictionary.nspecial, len(dictionary)) for _ in range(length - 1)]
        pads = [dictionary.pad()] * (width - length)
        sentence = words + [dictionary.eos()]
        rows.append(pads + sentence if left_pad else sentence + pads)
    return torch.tensor(rows)


def translation_batch(dictionary: Dictionary, source_lengths, target_lengths, seed: int):
    """(src_tokens left-padded, src_lengths, prev_output_tokens right-padded) of random words."""
    src = random_tokens(dictionary, source_lengths, random.Random(seed), left_pad=True)
    prev = random_tokens(dictionary, target_lengths, random.Random(seed + 1), left_pad=False)
    return src, src.ne(dictionary.pad()).sum(1), prev


def translation_loss(logits):
    """A loss of a translation model's logits (B, T, V) that weighs every output (for gradient checks)."""
    return logits.log_softmax(-1).square().mean()


def parameter_grads(model):
    """Copies of the model's parameter gradients, by parameter name (parameters without one left out)."""
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(model, batch):
    """The model's logits on a translation batch and the gradients of translation_loss, by parameter name."""
    model.zero_grad()
    out, _ = model(*batch)
    translation_loss(out).backward()
    return out.detach(), parameter_grads(model)


def assert_same_outputs_and_grads(model, reference, batch):
    """model and reference give the same logits and parameter gradients (loss_and_grads) on batch."""
    (out, grads), (expected, expected_grads) = loss_and_grads(model, batch), loss_and_grads(reference, batch)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-8, atol=1e-10, msg=name)


TINY_LM = ["--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-hidden-dim", "24",
           "--decoder-ffn-embed-dim", "20", "--decoder-z-dim", "8", "--decoder-n-dim", "4", "--dropout", "0",
           "--attention-dropout", "0", "--hidden-dropout", "0", "--activation-dropout", "0", "--truncation-length", "0"]
ADAPTIVE = ["--adaptive-input", "--adaptive-input-cutoff", "10,20", "--adaptive-softmax-cutoff", "10,20",
            "--tie-adaptive-weights", "--tie-adaptive-proj", "--adaptive-softmax-dropout", "0"]


def build_lm(extra=(), dictionary=None, seed=0):
    torch.manual_seed(seed)
    dictionary = dictionary or make_dictionary(40)
    args = parse_model_args(["--task", "language_modeling", *TINY_LM, *extra], arch="mega_lm")
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return MegaLanguageModel.build_model(args, task).double().eval()


def random_stream(dictionary, length, seed):
    rng = random.Random(seed)
    return torch.tensor([rng.randrange(dictionary.nspecial, len(dictionary)) for _ in range(length)])


def full_log_probs(model, tokens):
    """(B, T) tokens -> (B, T, V) log-probabilities of the next token, one forward pass."""
    return model.get_normalized_probs(model(tokens), log_probs=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PARENT_MARKS = []  # set in a process at run time: a worker forked from it sees them, a fresh interpreter does not


class ForkedWorkerProbe(torch.utils.data.Dataset):
    """Item i is 1 where the data-loader worker reading it was forked from the process that set PARENT_MARKS."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return int(bool(PARENT_MARKS))


def report_data_loader_workers(cfg, report):
    """A fairseq main for ``call_main``: writes to ``report`` the process's multiprocessing start method and, per
    item of a 2-worker data loader, whether its worker was forked from this process."""
    PARENT_MARKS.append(os.getpid())
    forked = [int(item) for item in torch.utils.data.DataLoader(ForkedWorkerProbe(), batch_size=1, num_workers=2)]
    with open(report, "w") as file:
        json.dump({"start_method": multiprocessing.get_start_method(), "forked": forked}, file)
