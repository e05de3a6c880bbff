"""A fairseq data-bin whose training split is another's repeated N times, for throughput runs that need long epochs.

    python benchmarks/e2e/repeat_corpus.py DATA_BIN OUT_DIR --times 8 [--split train]

Multi30k's 29,000 training sentences make ~25 batches an epoch at 32,768 tokens a GPU: on 2 GPUs an epoch then
ends every 13 updates (each end costs ~65-90 ms), and with an odd batch count one update an epoch has a batch on
one GPU only. A corpus of N copies keeps the batches' shapes and spaces those events N times wider, as a larger
dataset would. The split's binarized files (every language side; fairseq-preprocess's default mmap format) are
written N times one after the other; every other file and folder of DATA_BIN (dictionaries, the other splits, raw
references) is copied as it is.
"""
import argparse
import glob
import os
import shutil

from fairseq.data.indexed_dataset import (MMapIndexedDataset, MMapIndexedDatasetBuilder, data_file_path,
                                          index_file_path)


def split_prefixes(data: str, split: str) -> list:
    """The path prefixes of ``split``'s binarized datasets in ``data`` (one a language side), in mmap format."""
    prefixes = sorted(path[:-len(".idx")] for path in glob.glob(os.path.join(data, f"{split}.*.idx")))
    if not prefixes:
        raise SystemExit(f"{data} has no binarized '{split}' split ({split}.*.idx)")
    for prefix in prefixes:
        if not os.path.exists(data_file_path(prefix)):
            raise SystemExit(f"{index_file_path(prefix)} has no data file {data_file_path(prefix)}")
        with open(index_file_path(prefix), "rb") as index:
            if index.read(len(MMapIndexedDataset.Index._HDR_MAGIC)) != MMapIndexedDataset.Index._HDR_MAGIC:
                raise SystemExit(f"{index_file_path(prefix)} is not in fairseq's mmap format "
                                 "(fairseq-preprocess --dataset-impl mmap, its default)")
    return prefixes


def repeat_corpus(data: str, out: str, times: int, split: str = "train") -> None:
    """Write ``data`` to ``out`` with ``split`` repeated ``times`` times."""
    if times < 1:
        raise SystemExit(f"--times {times}: give a positive number of copies")
    if os.path.abspath(data) == os.path.abspath(out):
        raise SystemExit("OUT_DIR is DATA_BIN: write the repeated corpus to a new folder")
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(f"{out} exists and is not empty")
    prefixes = split_prefixes(data, split)
    repeated = {os.path.basename(path) for prefix in prefixes for path in (data_file_path(prefix),
                                                                            index_file_path(prefix))}
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(data):
        source, target = os.path.join(data, name), os.path.join(out, name)
        if name in repeated:
            continue
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    for prefix in prefixes:
        target = os.path.join(out, os.path.basename(prefix))
        builder = MMapIndexedDatasetBuilder(data_file_path(target), dtype=MMapIndexedDataset.Index(
            index_file_path(prefix)).dtype)
        for _ in range(times):
            builder.merge_file_(prefix)
        builder.finalize(index_file_path(target))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a fairseq data-bin (fairseq-preprocess's output)")
    parser.add_argument("out", help="a new folder for the repeated corpus")
    parser.add_argument("--times", type=int, required=True, help="how many copies of the split")
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    repeat_corpus(args.data, args.out, args.times, args.split)
    print(f"wrote {args.out}: '{args.split}' repeated {args.times} times")


if __name__ == "__main__":
    main()
