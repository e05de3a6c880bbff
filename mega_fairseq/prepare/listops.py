"""ListOps (Nangia & Bowman, 2018) as defined by Long Range Arena (Tay et al., 2021).

An expression is a value 0-9 or an operator applied to 2..max_args expressions::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]

MAX, MIN, MED (median of the values, rounded down) and SM (sum modulo 10);
the label is the value of the whole expression. LRA draws trees top-down: at
depth < max_depth a node is an operator with probability 1/4 (else a value), at
max_depth always a value; it keeps trees whose length (values, operators and
closing brackets, not the parentheses) is strictly between min_length and
max_length, without duplicates. LRA's defaults: depth 10, 10 arguments,
lengths 500-2000, 96,000 / 2,000 / 2,000 examples.

The TSV files use LRA's layout (header ``Source\tTarget``; the source wraps
every operator application in parentheses, ``( ( ( [MAX 4 ) 3 ) ] )``), so the
generated files and LRA's released ones go through the same preparation
(``scripts/prepare-lra.py listops``). Entry point: ``scripts/generate-listops.py``
(``python -m mega_fairseq.prepare.listops``)::

    generate-listops.py --out-dir data/listops-raw            # LRA's sizes and limits
    generate-listops.py --out-dir D --train 2000 --valid 200 --test 200 --max-length 200
"""
import argparse
import csv
import itertools
import multiprocessing
import os
import random
import sys
import time
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from .common import DataError, iter_lines, staged_output

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
VALUES = tuple(range(10))
CLOSE = "]"
OPERATOR_PROBABILITY = 0.25
VOCABULARY = (*OPERATORS, CLOSE, *(str(v) for v in VALUES))  # every token of a prepared expression
LRA_FILE_NAMES = {"train": "basic_train.tsv", "valid": "basic_val.tsv", "test": "basic_test.tsv"}

Tree = Union[int, Tuple[str, list]]


class _TooLong(Exception):
    """Raised while drawing a tree as soon as it cannot be kept (it is rejected anyway)."""


def _draw(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: List[int]) -> Tree:
    """One node and its subtree; ``budget[0]`` counts the tokens still allowed."""
    is_operator = depth < max_depth and rng.random() <= OPERATOR_PROBABILITY
    if not is_operator:
        budget[0] -= 1
        value = rng.choice(VALUES)
        if budget[0] < 0:
            raise _TooLong
        return value
    budget[0] -= 2  # the operator and its closing bracket
    arguments = [_draw(rng, depth + 1, max_depth, max_args, budget) for _ in range(rng.randint(2, max_args))]
    operator = rng.choice(OPERATORS)
    if budget[0] < 0:
        raise _TooLong
    return operator, arguments


def generate_tree(rng: random.Random, max_depth: int = 10, max_args: int = 10, max_tokens: int = None) -> Tree:
    """A random expression drawn as LRA does (root at depth 1). With ``max_tokens`` a tree that
    grows longer is abandoned early and None is returned (LRA would reject it after drawing it)."""
    budget = [max_tokens if max_tokens is not None else float("inf")]
    try:
        return _draw(rng, 1, max_depth, max_args, budget)
    except _TooLong:
        return None


def tokens(tree: Tree) -> List[str]:
    """The expression as tokens without parentheses: ``[MAX 4 3 ]``."""
    if isinstance(tree, int):
        return [str(tree)]
    operator, arguments = tree
    out = [operator]
    for argument in arguments:
        out.extend(tokens(argument))
    out.append(CLOSE)
    return out


def to_lra_string(tree: Tree) -> str:
    """LRA's source string: each operator application left-nested in parentheses."""
    if isinstance(tree, int):
        return str(tree)
    operator, arguments = tree
    text = operator
    for item in [*(to_lra_string(a) for a in arguments), CLOSE]:
        text = f"( {text} {item} )"
    return text


def evaluate(tree: Tree) -> int:
    """The value of an expression."""
    if isinstance(tree, int):
        return tree
    operator, arguments = tree
    values = sorted(evaluate(a) for a in arguments)
    if operator == "[MAX":
        return values[-1]
    if operator == "[MIN":
        return values[0]
    if operator == "[SM":
        return sum(values) % 10
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) // 2


def source_tokens(source: str) -> List[str]:
    """Tokens of an LRA source string (parentheses dropped, closing brackets kept)."""
    return [token for token in source.split() if token not in ("(", ")")]


def generate_examples(count: int, seed: int, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
                      max_length: int = 2000) -> Iterator[Tuple[str, int]]:
    """``count`` distinct (LRA source string, label) pairs with min_length < tokens < max_length."""
    if max_args < 2 or max_depth < 2:
        raise DataError(f"--max-args ({max_args}) and --max-depth ({max_depth}) must be at least 2")
    if min_length + 1 > max_length - 1:
        raise DataError(f"no length fits strictly between --min-length {min_length} and --max-length {max_length}")
    longest = 1
    for _ in range(max_depth - 1):  # the longest tree: every node an operator with max_args arguments
        longest = 2 + max_args * longest
    if longest <= min_length:
        raise DataError(f"trees of depth <= {max_depth} with <= {max_args} arguments have at most {longest} tokens, "
                         f"not more than --min-length {min_length}")
    rng = random.Random(seed)
    seen = set()
    while len(seen) < count:
        tree = generate_tree(rng, max_depth, max_args, max_tokens=max_length - 1)
        if tree is None or len(tokens(tree)) <= min_length:
            continue
        source = to_lra_string(tree)
        if source not in seen:
            seen.add(source)
            yield source, evaluate(tree)


def _generate_share(share: Tuple[int, int, Dict[str, int]]) -> List[Tuple[str, int]]:
    count, seed, limits = share
    return list(generate_examples(count, seed, **limits))


def generate_in_parallel(count: int, seed: int, jobs: int, **limits) -> Iterator[Tuple[str, int]]:
    """``count`` distinct examples from ``jobs`` processes, worker i seeded with (seed, i); the
    examples depend on ``jobs``. Duplicates across workers are dropped and topped up."""
    if jobs <= 1:
        yield from generate_examples(count, seed, **limits)
        return
    shares = [(count // jobs + (i < count % jobs), seed * 1_000_003 + i, limits) for i in range(jobs)]
    with multiprocessing.Pool(jobs) as pool:
        parts = pool.map(_generate_share, shares)
    seen = set()
    for source, label in itertools.chain(*parts, generate_examples(count, seed * 1_000_003 + jobs, **limits)):
        if len(seen) == count:
            return
        if source not in seen:
            seen.add(source)
            yield source, label


def write_splits(out_dir: str, sizes: Dict[str, int], seed: int = 1, jobs: int = 1, **limits) -> Dict[str, str]:
    """Write LRA-style ListOps TSV files (``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``)
    with the given numbers of examples (each > 0); no example appears twice across splits.
    ``jobs``: generating processes; ``limits``: max_depth, max_args, min_length, max_length.
    Returns the paths by split."""
    empty = [split for split, size in sizes.items() if size <= 0]
    if empty:
        raise DataError(f"every split needs examples: --{' --'.join(empty)} must be > 0")
    examples = generate_in_parallel(sum(sizes.values()), seed, jobs, **limits)
    with staged_output(out_dir) as staging:
        for split, size in sizes.items():
            with open(os.path.join(staging, LRA_FILE_NAMES[split]), "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["Source", "Target"])
                for _ in range(size):
                    writer.writerow(next(examples))
    return {split: os.path.join(out_dir, LRA_FILE_NAMES[split]) for split in sizes}


def read_tsv(path: str) -> Sequence[Tuple[int, str, str]]:
    """(line number, source, target) rows of an LRA ListOps TSV file (header ``Source\tTarget``)."""
    rows = []
    for number, line in enumerate(iter_lines(path), start=1):
        fields = line.split("\t")
        if number == 1:
            if fields != ["Source", "Target"]:
                raise DataError(f"{path}: line 1 must be the header 'Source<TAB>Target' of an LRA ListOps file, "
                                f"got {fields!r}")
        elif fields != [""]:
            if len(fields) != 2:
                raise DataError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected 2 "
                                f"(Source, Target)")
            rows.append((number, fields[0], fields[1]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="generate-listops.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--train", type=int, default=96000, help="training examples (LRA: 96000)")
    parser.add_argument("--valid", type=int, default=2000, help="validation examples (LRA: 2000)")
    parser.add_argument("--test", type=int, default=2000, help="test examples (LRA: 2000)")
    parser.add_argument("--max-depth", type=int, default=10, help="deepest operator nesting (LRA: 10)")
    parser.add_argument("--max-args", type=int, default=10, help="most arguments of an operator (LRA: 10)")
    parser.add_argument("--min-length", type=int, default=500, help="tokens > this (LRA: 500)")
    parser.add_argument("--max-length", type=int, default=2000, help="tokens < this (LRA: 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="generating processes (the examples depend on it; LRA's 98000 take ~4 min with 1)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        paths = write_splits(args.out_dir, {"train": args.train, "valid": args.valid, "test": args.test},
                             seed=args.seed, jobs=args.jobs, max_depth=args.max_depth, max_args=args.max_args,
                             min_length=args.min_length, max_length=args.max_length)
    except DataError as error:
        parser.error(str(error))
    print(f"[listops] {args.train}/{args.valid}/{args.test} examples in {time.time() - start:.1f} s: "
          + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
