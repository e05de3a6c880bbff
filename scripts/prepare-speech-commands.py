#!/usr/bin/env python3
"""Prepare raw Speech Commands (v0.02) for fairseq-train --task speech_commands.

    prepare-speech-commands.py --input speech_commands_v0.02.tar.gz --out data/speech_commands
    prepare-speech-commands.py --input DIR --out data/speech_commands --all-classes   # 35 classes

--input is the archive (http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz) or its
extracted folder. Writes OUT/raw/ (the 10-class subset, SC10) or OUT/raw_all_classes/; splits and
normalization as the original (mega_fairseq/data/speech_commands_prepare.py). Needs numpy and
scikit-learn; WAV files are read with the standard library. A malformed WAV file stops with a
message naming it.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mega_fairseq.data.speech_commands_prepare import ORIGINAL_EPSILON, prepare_speech_commands  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="speech_commands_v0.02.tar.gz or its extracted folder")
    parser.add_argument("--out", required=True, help="data folder of the task (raw/ or raw_all_classes/ inside)")
    parser.add_argument("--all-classes", action="store_true", help="all 35 words (default: the 10-word subset)")
    parser.add_argument("--epsilon", type=float, default=ORIGINAL_EPSILON,
                        help="added to the per-time-step standard deviation, in int16 units (default: the "
                             "original's 1e-5 on samples scaled by 2^-30, i.e. 1e-5 * 2^30)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    if args.epsilon < 0:
        parser.error(f"--epsilon must be >= 0, got {args.epsilon}")
    start = time.time()
    counts = prepare_speech_commands(args.input, args.out, args.all_classes, args.epsilon)
    print(f"[prepare-speech-commands] {'35 classes' if args.all_classes else 'SC10'}: "
          + ", ".join(f"{split} {n}" for split, n in counts.items()) + f" clips ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"prepare-speech-commands.py: error: {error}")
