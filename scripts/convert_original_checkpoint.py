#!/usr/bin/env python
"""Convert a checkpoint of the original Mega code (facebookresearch/mega) for this plugin.

    python scripts/convert_original_checkpoint.py IN.pt OUT.pt

OUT.pt then loads in fairseq-generate, fairseq-eval-lm and fairseq-validate with
``--user-dir mega_fairseq`` (see the README, "Converting the original checkpoints").
A missing, unexpected or misshapen parameter, or an option the plugin does not support,
stops the conversion with a message that names it (exit status 1).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mega_fairseq.convert import ConversionError, convert_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="original checkpoint (args + model, fairseq 0.9 layout)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    try:
        options = convert_checkpoint(args.input, args.output)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({options.family}): {options}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
