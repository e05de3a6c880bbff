#!/usr/bin/env python3
"""Prepare the Long Range Arena tasks for fairseq-train --task lra-text / lra-image.

The preparation is mega_fairseq/prepare/lra.py; see --help for the tasks and their inputs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mega_fairseq.prepare.lra import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
