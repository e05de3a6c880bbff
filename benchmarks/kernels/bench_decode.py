"""Language-model decoding latency and memory by position: a chunked Mega LM vs fairseq's transformer_lm.

Both models (random weights, architecture defaults, weights cast to the chosen dtype as
fairseq-generate --fp16 does) decode greedily, one token at a time through fairseq's incremental
path, batch 1 (Mega: step buffers replayed from CUDA graphs on a GPU). Each step is timed on its own
(CUDA synchronized); every bucket of tokens reports the mean ms/token, the allocated and peak GPU memory and the size of the incremental
state (at the bucket's last token: take a bucket size that is a multiple of the chunk size). Mega's
state is the EMA hidden state plus the unfinished chunk, so it stays flat in position; the
Transformer's key/value cache grows with every token.

    python benchmarks/kernels/bench_decode.py --tokens 16384 --chunk 128           # GPU: bf16
    python benchmarks/kernels/bench_decode.py --tokens 300 --bucket 48 --chunk 16 --tiny  # CPU check
"""
import argparse
import dataclasses
import json
import logging
import os
import time
import warnings
from types import SimpleNamespace

import torch
from fairseq import models, options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from mega_fairseq.models.stepping import StepSession

USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "mega_fairseq")
TINY = {
    "mega": ["--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-hidden-dim", "64",
             "--decoder-ffn-embed-dim", "64", "--decoder-z-dim", "16", "--decoder-n-dim", "4"],
    "transformer": ["--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-input-dim", "32",
                    "--decoder-output-dim", "32", "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4"],
}
MIB = 2 ** 20


def build_model(arch, flags, vocab, max_positions, device, dtype):
    """A fairseq language model built as fairseq-train builds it from these options, in eval mode."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data", "--task", "language_modeling", "--user-dir", USER_DIR, "--arch", arch,
        "--tokens-per-sample", str(max_positions), *flags])
    dictionary = Dictionary()
    while len(dictionary) < vocab:
        dictionary.add_symbol(f"w{len(dictionary)}")
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return models.build_model(convert_namespace_to_omegaconf(args).model, task).to(device, dtype).eval()


def state_bytes(incremental_state):
    """Bytes held by the tensors of a fairseq incremental state (Mega's step buffers included)."""
    total = 0
    for value in incremental_state.values():
        if isinstance(value, StepSession):
            buffers = value.entry.buffers
            tensors = [getattr(buffers, field.name) for field in dataclasses.fields(buffers)]
        else:
            tensors = [tensor for tensor in value.values() if torch.is_tensor(tensor)]
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    return total


def decode(model, tokens, bucket, device):
    """Greedy decoding of ``tokens`` tokens; one row per completed bucket (and a note if CUDA ran out of memory)."""
    cuda = device.type == "cuda"
    prefix = torch.full((1, tokens + 1), model.decoder.dictionary.eos(), dtype=torch.long, device=device)
    state, rows, times, note = {}, [], [], None
    with torch.no_grad():
        try:
            for step in range(tokens):
                if cuda and step % bucket == 0:
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.synchronize()
                start = time.perf_counter()
                logits, _ = model.decoder(prefix[:, : step + 1], incremental_state=state)
                prefix[0, step + 1] = logits[0, -1].argmax()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                if (step + 1) % bucket == 0:
                    rows.append({
                        "tokens": f"{step + 1 - bucket}-{step + 1}",
                        "ms_per_token": 1000 * sum(times) / len(times),
                        "allocated_mib": torch.cuda.memory_allocated() / MIB if cuda else None,
                        "peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else None,
                        "state_mib": state_bytes(state) / MIB,
                    })
                    times = []
        except torch.cuda.OutOfMemoryError:
            note = f"out of GPU memory at token {step}"
    return rows, note


def run(name, model, tokens, bucket, warmup, device):
    """Warm up on a throwaway state, decode, print the table; returns the summary."""
    decode(model, warmup, warmup, device)
    rows, note = decode(model, tokens, bucket, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {params / 1e6:.2f}M parameters, {tokens} tokens" + (f" ({note})" if note else ""))
    print(f"{'tokens':>13} {'ms/token':>9} {'allocated MiB':>14} {'peak MiB':>9} {'state MiB':>10}")
    for row in rows:
        memory = [f"{row[k]:.1f}" if row[k] is not None else "-" for k in ("allocated_mib", "peak_mib")]
        print(f"{row['tokens']:>13} {row['ms_per_token']:>9.3f} {memory[0]:>14} {memory[1]:>9} "
              f"{row['state_mib']:>10.3f}")
    summary = {"model": name, "params": params, "tokens": tokens, "note": note, "buckets": rows}
    if rows:
        first, last = rows[0], rows[-1]
        summary["latency_ratio_last_over_first"] = last["ms_per_token"] / first["ms_per_token"]
        summary["state_growth_mib"] = last["state_mib"] - first["state_mib"]
        allocated = ""
        if first["allocated_mib"] is not None:
            summary["allocated_growth_mib"] = last["allocated_mib"] - first["allocated_mib"]
            allocated = f", allocated memory {summary['allocated_growth_mib']:+.1f} MiB"
        print(f"summary {name}: latency last/first bucket {summary['latency_ratio_last_over_first']:.2f}x"
              f"{allocated}, incremental state {summary['state_growth_mib']:+.3f} MiB")
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens to decode")
    parser.add_argument("--bucket", type=int, default=1024, help="tokens per reported bucket")
    parser.add_argument("--chunk", type=int, default=128, help="Mega's --decoder-chunk-size")
    parser.add_argument("--arch", default="mega_lm", help="Mega LM architecture")
    parser.add_argument("--baseline-arch", default="transformer_lm", help="baseline architecture")
    parser.add_argument("--baseline-max-tokens", type=int, default=0, help="cap on the baseline's tokens (0: --tokens)")
    parser.add_argument("--vocab", type=int, default=8000, help="dictionary size")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="weights and activations (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU check)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    baseline_tokens = args.baseline_max_tokens or args.tokens
    warmup = 2 * args.chunk
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", {dtype_name} weights, batch 1, greedy, vocabulary {args.vocab}, warm-up {warmup} tokens")

    torch.manual_seed(0)
    mega = build_model(args.arch, ["--decoder-chunk-size", str(args.chunk), *(TINY["mega"] if args.tiny else [])],
                       args.vocab, args.tokens + 1, device, dtype)
    results = [run(f"{args.arch} (chunk {args.chunk})", mega, args.tokens, args.bucket, warmup, device)]
    del mega
    if device.type == "cuda":
        torch.cuda.empty_cache()
    baseline = build_model(args.baseline_arch, TINY["transformer"] if args.tiny else [],
                           args.vocab, baseline_tokens + 1, device, dtype)
    results.append(run(args.baseline_arch, baseline, baseline_tokens, args.bucket, warmup, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "dtype": dtype_name, "vocab": args.vocab, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
