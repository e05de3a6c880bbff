#!/usr/bin/env python3
"""Generate ListOps as Long Range Arena defines it, in LRA's TSV layout (basic_train.tsv, basic_val.tsv,
basic_test.tsv), the files that scripts/prepare-lra.py listops reads.

The generator is mega_fairseq/prepare/listops.py; see --help for the sizes and limits.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mega_fairseq.prepare.listops import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
