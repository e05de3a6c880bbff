"""The ListOps generator (mega_fairseq/prepare/listops.py) against LRA's definition and an independent evaluator."""
import csv
import os
import runpy
import statistics
import sys

import pytest

from mega_fairseq.prepare import listops

from fairseq_helpers import REPO

SCRIPT = os.path.join(REPO, "scripts", "generate-listops.py")


def reference_value(tokens):
    """Evaluate a flat token sequence with a stack (independent of the tree code): MED is the median
    rounded down (LRA's int(np.median)), SM the sum modulo 10."""
    stack = []
    for token in tokens:
        if token.startswith("["):
            stack.append((token, []))
        elif token == "]":
            operator, arguments = stack.pop()
            value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
                     "[MED": lambda a: int(statistics.median(a))}[operator](arguments)
            if not stack:
                return value
            stack[-1][1].append(value)
        else:
            if not stack:
                return int(token)
            stack[-1][1].append(int(token))
    raise AssertionError("unbalanced expression")


def structure(tokens):
    """(depth, most arguments of an operator) of a flat token sequence."""
    depth, deepest, counts, most = 0, 0, [], 0
    for token in tokens:
        if token.startswith("["):
            if counts:
                counts[-1] += 1
            depth += 1
            deepest = max(deepest, depth)
            counts.append(0)
        elif token == "]":
            most = max(most, counts.pop())
            depth -= 1
        else:
            if counts:
                counts[-1] += 1
            deepest = max(deepest, depth + 1)
    return deepest, most


def test_examples_follow_the_lra_definition():
    examples = list(listops.generate_examples(300, seed=3, max_depth=6, max_args=5, min_length=20, max_length=120))
    assert len({source for source, _ in examples}) == 300  # no duplicates
    for source, label in examples:
        tokens = listops.source_tokens(source)
        assert 20 < len(tokens) < 120
        assert set(tokens) <= set(listops.VOCABULARY)
        depth, most = structure(tokens)
        assert depth <= 6 and 2 <= most <= 5
        assert label == reference_value(tokens)
        # LRA's string: one pair of parentheses per argument and per closing bracket of each operator
        operators, values = sum(t.startswith("[") for t in tokens), sum(t.isdigit() for t in tokens)
        assert source.count("(") == source.count(")") == (values + operators - 1) + operators
    labels = [label for _, label in examples]
    assert set(labels) == set(range(10))
    operators = {t for source, _ in examples for t in listops.source_tokens(source) if t.startswith("[")}
    assert operators == set(listops.OPERATORS)


def test_lra_string_format():
    tree = ("[MAX", [4, ("[MIN", [2, 3]), 1])
    assert listops.to_lra_string(tree) == "( ( ( ( [MAX 4 ) ( ( ( [MIN 2 ) 3 ) ] ) ) 1 ) ] )"
    assert listops.tokens(tree) == ["[MAX", "4", "[MIN", "2", "3", "]", "1", "]"]
    assert listops.source_tokens(listops.to_lra_string(tree)) == listops.tokens(tree)
    assert listops.evaluate(("[MED", [1, 2])) == 1 and listops.evaluate(("[MED", [1, 9, 4])) == 4
    assert listops.evaluate(("[SM", [9, 8, ("[MAX", [3, 7])])) == 4


@pytest.mark.parametrize("jobs", [1, 3])
def test_same_seed_same_data_and_no_example_twice_across_splits(tmp_path, jobs):
    """Also with several generating processes (short trees, so duplicates across workers occur)."""
    limits = dict(max_depth=5, max_args=4, min_length=10, max_length=60)
    first = listops.write_splits(str(tmp_path / "a"), {"train": 50, "valid": 10, "test": 10}, seed=7, jobs=jobs,
                                 **limits)
    second = listops.write_splits(str(tmp_path / "b"), {"train": 50, "valid": 10, "test": 10}, seed=7, jobs=jobs,
                                  **limits)
    sources = []
    for split in ("train", "valid", "test"):
        assert open(first[split]).read() == open(second[split]).read()
        rows = listops.read_tsv(first[split])
        assert len(rows) == {"train": 50, "valid": 10, "test": 10}[split]
        sources += [source for _, source, _ in rows]
        with open(first[split], newline="") as f:
            assert next(csv.reader(f, delimiter="\t")) == ["Source", "Target"]
    assert len(set(sources)) == 70


def test_impossible_limits_are_refused():
    with pytest.raises(ValueError, match="--min-length"):
        next(listops.generate_examples(1, 0, max_depth=3, max_args=3, min_length=100, max_length=200))
    with pytest.raises(ValueError, match="strictly between"):
        next(listops.generate_examples(1, 0, min_length=10, max_length=11))


def test_generate_listops_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["generate-listops.py", "--out-dir", str(tmp_path), "--train", "5", "--valid",
                                      "2", "--test", "2", "--max-length", "80", "--min-length", "10"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_info.value.code == 0
    assert len(listops.read_tsv(str(tmp_path / "basic_train.tsv"))) == 5
    monkeypatch.setattr(sys, "argv", ["generate-listops.py", "--out-dir", str(tmp_path / "bad"), "--min-length", "50",
                                      "--max-length", "40"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert exit_info.value.code != 0 and "--min-length 50" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
