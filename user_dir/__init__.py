"""A fairseq user dir that registers the installed mega_fairseq package.

After ``pip install .``: ``fairseq-train ... --user-dir /path/to/user_dir`` from any directory.
"""
import mega_fairseq  # noqa: F401  (registers models, architectures, schedulers)
