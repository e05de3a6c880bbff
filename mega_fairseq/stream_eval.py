"""Long-context evaluation of a Mega language model.

The split is read as one token stream and scored in blocks of ``--block-length``
tokens; the EMA hidden states and the keys/values of the unfinished attention
chunk are carried from block to block, so every token is scored with all the
context the model can use, and the result equals scoring the stream in one pass
(memory stays bounded by the block and chunk sizes). The EMA across blocks is the
exact recurrence: for a model trained with ``--truncation-length T`` this is what
its FFT path computes on sequences up to T tokens.

    python -m mega_fairseq.stream_eval DATA --path checkpoint.pt [--gen-subset test] [--block-length 2048]

prints the loss in base 2 per token (bits per byte on byte-level data such as
enwik8) and the perplexity.
"""
import argparse
import json
import logging
import math
import os
from typing import Dict, Optional

import torch
from torch import Tensor

logger = logging.getLogger("mega_fairseq.stream_eval")


def target_log_probs(model, features: Tensor, target: Tensor, softmax_batch: int) -> Tensor:
    """features (1, T, D), target (1, T) -> natural-log probabilities (T,) of the targets,
    computed softmax_batch positions at a time (large vocabularies)."""
    pieces = []
    for start in range(0, target.size(1), softmax_batch):
        piece = features[:, start: start + softmax_batch]
        piece_target = target[:, start: start + softmax_batch]
        lprobs = model.get_normalized_probs((model.decoder.output_layer(piece), None), log_probs=True,
                                            sample={"target": piece_target})
        pieces.append(lprobs.gather(-1, piece_target.unsqueeze(-1)).squeeze(-1))
    return torch.cat(pieces, dim=1)[0].float()


@torch.no_grad()
def stream_log_probs(model, tokens: Tensor, eos: int, block_length: int, softmax_batch: int = 1024,
                     state: Optional[Dict] = None) -> Tensor:
    """Log-probability (N,) of every token of the stream tokens (N,) given all tokens before it
    (the first given eos), computed block_length tokens at a time with carried state."""
    from .models.mega import MegaDecoder

    if not isinstance(model.decoder, MegaDecoder):
        raise TypeError(f"stream evaluation needs a Mega language model (--arch mega_lm...), "
                        f"got {type(model.decoder).__name__}")
    if block_length <= 0:
        raise ValueError(f"--block-length must be positive, got {block_length}")
    model.eval()
    source = torch.cat([tokens.new_tensor([eos]), tokens[:-1]])
    state = {} if state is None else state
    scores = []
    for start in range(0, tokens.numel(), block_length):
        block = source[start: start + block_length].unsqueeze(0)
        features, _ = model.decoder.extract_block_features(block, None, state)
        scores.append(target_log_probs(model, features, tokens[start: start + block_length].unsqueeze(0),
                                       softmax_batch))
    return torch.cat(scores)


def load_stream(data: str, split: str, dictionary) -> Tensor:
    """All tokens of a binarized split, in order, as one stream (each line ends with eos)."""
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(os.path.join(data, split), dictionary)
    if dataset is None:
        raise FileNotFoundError(f"no binarized split {split!r} in {data}")
    return torch.cat([dataset[i] for i in range(len(dataset))]).long()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="binarized data directory (fairseq-preprocess --only-source)")
    parser.add_argument("--path", required=True, help="model checkpoint")
    parser.add_argument("--gen-subset", default="test", help="split to score (default: test)")
    parser.add_argument("--block-length", type=int, default=2048, help="tokens per forward pass (default 2048)")
    parser.add_argument("--softmax-batch", type=int, default=1024, help="positions per output-softmax call")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the stream")
    parser.add_argument("--model-overrides", default="{}", help="JSON dict of model options to override")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)

    from fairseq import checkpoint_utils

    import mega_fairseq  # noqa: F401  (registers the plugin, allows weights-only loading)

    overrides = {"data": args.data, **json.loads(args.model_overrides)}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([args.path], arg_overrides=overrides)
    model = models[0]
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    model.to(device)
    tokens = load_stream(args.data, args.gen_subset, task.source_dictionary)[: args.max_tokens].to(device)
    log_probs = stream_log_probs(model, tokens, task.source_dictionary.eos(), args.block_length, args.softmax_batch)
    loss = -log_probs.mean().item() / math.log(2)
    logger.info(f"Evaluated {tokens.numel():,} tokens of '{args.gen_subset}' as one stream in blocks of "
                f"{args.block_length}")
    logger.info(f"Loss (base 2): {loss:.4f}, Perplexity: {2 ** loss:.2f}")
    return loss


if __name__ == "__main__":
    main()
