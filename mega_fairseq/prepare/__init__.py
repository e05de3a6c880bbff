"""Data preparation: raw corpora to the data folders the tasks read, one module per corpus family.

* ``translation``: WMT'16 en-de and Multi30k (Moses or raw text, joint BPE, cleaning, fairseq-preprocess)
* ``language_model``: WikiText-103 and enwik8 (byte tokens)
* ``lra``: the Long Range Arena tasks (ListOps, IMDB, AAN, CIFAR-10, Pathfinder, Path-X)
* ``listops``: the ListOps generator, as LRA defines the task
* ``speech_commands``: raw Speech Commands (SC10 and all 35 classes)
* ``common``: what they share: UTF-8 reading with errors naming file and line (or replacements,
  counted), checks of missing or empty splits, outputs staged and then published whole

The entry points are the scripts in ``scripts/`` (``prepare-*.sh``, ``prepare-*.py``,
``generate-listops.py``); each module also runs as ``python -m mega_fairseq.prepare.MODULE``.
The datasets used at training time are in ``mega_fairseq.data``.
"""
