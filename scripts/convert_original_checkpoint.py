#!/usr/bin/env python
"""Convert a checkpoint of the original Mega code (facebookresearch/mega) for this plugin.

    python scripts/convert_original_checkpoint.py IN.pt OUT.pt [--ema-revision main|flash]

OUT.pt then loads in fairseq-generate, fairseq-eval-lm and fairseq-validate with
``--user-dir mega_fairseq`` (see docs/conversion.md). The original code has two revisions of its
EMA (branches main and flash); the converter tells from the checkpoint which one trained it and
prints why, or stops and asks for --ema-revision where it cannot tell.
A missing, unexpected or misshapen parameter, or an option the plugin does not support,
stops the conversion with a message that names it (exit status 1).
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mega_fairseq.convert import EMA_REVISIONS, ConversionError, ConversionWarning, convert_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="original checkpoint (args + model, fairseq 0.9 layout)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    parser.add_argument("--ema-revision", choices=EMA_REVISIONS, default=None,
                        help="the original code's EMA revision that trained the checkpoint (branch main, or "
                             "branch flash with its swapped alpha/delta and lag-1 backward kernel); default: "
                             "detected from the checkpoint")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conversion = convert_checkpoint(args.input, args.output, args.ema_revision)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in caught:
        if issubclass(warning.category, ConversionWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    revision = conversion.ema_revision
    print(f"EMA revision {revision.name}: {revision.reason}")
    print(f"wrote {args.output} ({conversion.options.family}): {conversion.options}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
