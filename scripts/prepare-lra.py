#!/usr/bin/env python3
"""Prepare the Long Range Arena tasks for fairseq-train --task lra-text / lra-image.

    prepare-lra.py listops    --input DIR  --out OUT   # basic_{train,val,test}.tsv (lra_release/listops-1000,
                                                        #   or scripts/generate_listops.py)
    prepare-lra.py imdb       --input DIR  --out OUT   # the aclImdb release (train/ and test/, pos/ and neg/)
    prepare-lra.py aan        --input DIR  --out OUT   # lra_release/tsv_data: new_aan_pairs.{train,eval,test}.tsv
    prepare-lra.py cifar10    --input PATH --out OUT   # CIFAR-10 python or binary release (.tar.gz or folder)
    prepare-lra.py pathfinder --input DIR  --out OUT --resolution 32    # lra_release/pathfinder32
    prepare-lra.py pathfinder --input DIR  --out OUT --resolution 128   # Path-X: lra_release/pathfinder128

Output layouts and splits: mega_fairseq/data/lra_prepare.py. Pathfinder needs Pillow (pip install
'mega-fairseq[lra]'; tensorboard already depends on it). A missing or malformed input stops with a
message naming the file (and line).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mega_fairseq.data import lra_prepare  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["listops", "imdb", "aan", "cifar10", "pathfinder"])
    parser.add_argument("--input", required=True, help="the task's raw input (see above)")
    parser.add_argument("--out", required=True, help="data directory to write")
    parser.add_argument("--max-length", type=int, default=lra_prepare.TEXT_MAX_LENGTH,
                        help="imdb, aan: keep the first bytes of each text (LRA: 4000)")
    parser.add_argument("--resolution", type=int, choices=[32, 64, 128, 256], default=32,
                        help="pathfinder: image side (32: Pathfinder, 128: Path-X)")
    parser.add_argument("--difficulty", default="curv_contour_length_14",
                        help="pathfinder: subfolder of the release (the original's: curv_contour_length_14)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    start = time.time()
    if args.task == "listops":
        counts = lra_prepare.prepare_listops(args.input, args.out)
    elif args.task == "imdb":
        counts = lra_prepare.prepare_imdb(args.input, args.out, args.max_length)
    elif args.task == "aan":
        counts = lra_prepare.prepare_aan(args.input, args.out, args.max_length)
    elif args.task == "cifar10":
        counts = lra_prepare.prepare_cifar10(args.input, args.out)
    else:
        counts = lra_prepare.prepare_pathfinder(args.input, args.out, args.resolution, args.difficulty)
    print(f"[prepare-lra] {args.task}: " + ", ".join(f"{split} {n}" for split, n in counts.items())
          + f" examples in {args.out} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"prepare-lra.py: error: {error}")
