"""Datasets of the plugin's tasks (fairseq-dependent)."""
