#!/usr/bin/env python3
"""Prepare raw Speech Commands (v0.02) for fairseq-train --task speech_commands.

The preparation is mega_fairseq/prepare/speech_commands.py; see --help for the options.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mega_fairseq.prepare.speech_commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
