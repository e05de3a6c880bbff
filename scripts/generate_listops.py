#!/usr/bin/env python3
"""Generate ListOps as Long Range Arena defines it (mega_fairseq/data/listops.py), in LRA's TSV layout.

    python scripts/generate_listops.py --out-dir data/listops-raw            # LRA's sizes and limits
    python scripts/generate_listops.py --out-dir D --train 2000 --valid 200 --test 200 --max-length 200

Writes basic_train.tsv, basic_val.tsv and basic_test.tsv (header Source<TAB>Target), the files that
scripts/prepare-lra.py listops reads. Standard library only.
"""
import argparse
import importlib.util
import os
import sys
import time

# load the generator by path: importing the mega_fairseq package would import torch and fairseq
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mega_fairseq", "data", "listops.py")
_SPEC = importlib.util.spec_from_file_location("listops", _PATH)
listops = importlib.util.module_from_spec(_SPEC)
sys.modules["listops"] = listops  # worker processes find the generator under this name
_SPEC.loader.exec_module(listops)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--train", type=int, default=96000, help="training examples (LRA: 96000)")
    parser.add_argument("--valid", type=int, default=2000, help="validation examples (LRA: 2000)")
    parser.add_argument("--test", type=int, default=2000, help="test examples (LRA: 2000)")
    parser.add_argument("--max-depth", type=int, default=10, help="deepest operator nesting (LRA: 10)")
    parser.add_argument("--max-args", type=int, default=10, help="most arguments of an operator (LRA: 10)")
    parser.add_argument("--min-length", type=int, default=500, help="tokens > this (LRA: 500)")
    parser.add_argument("--max-length", type=int, default=2000, help="tokens < this (LRA: 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="generating processes (the examples depend on it; LRA's 98000 take ~4 min with 1)")
    args = parser.parse_args(argv)
    for name in ("train", "valid", "test"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    start = time.time()
    try:
        paths = listops.write_splits(args.out_dir, {"train": args.train, "valid": args.valid, "test": args.test},
                             seed=args.seed, jobs=args.jobs, max_depth=args.max_depth, max_args=args.max_args,
                             min_length=args.min_length, max_length=args.max_length)
    except ValueError as error:
        parser.error(str(error))
    print(f"[listops] {args.train}/{args.valid}/{args.test} examples in {time.time() - start:.1f} s: "
          + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
