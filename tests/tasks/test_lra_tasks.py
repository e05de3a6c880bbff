"""The lra-text and lra-image tasks and the lra_cross_entropy criterion, end to end through fairseq-train
(fairseq_cli.train.main) and fairseq-validate on small generated data."""
import os
import re

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, indexed_dataset

from lra_helpers import TINY_MEGA, TINY_TRANSFORMER, run_train, run_validate, setup
from mega_fairseq.criterions.lra_cross_entropy import LRACrossEntropyCriterion
from mega_fairseq.prepare import listops
from mega_fairseq.prepare import lra as lra_prepare

TEXT = ["--task", "lra-text"]
IMAGE = ["--task", "lra-image"]


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("listops")
    listops.write_splits(str(root / "raw"), {"train": 48, "valid": 16, "test": 16}, seed=5, max_depth=5,
                         max_args=4, min_length=8, max_length=50)
    lra_prepare.prepare_listops(str(root / "raw"), str(root / "data"))
    return root


@pytest.fixture(scope="module")
def aan_dir(tmp_path_factory):
    """Pairs whose documents name their example: 'first 7 ...' / 'second 7 ...', label = 7 % 2."""
    root = tmp_path_factory.mktemp("aan")
    rng = np.random.default_rng(0)
    (root / "raw").mkdir()
    for split, name in lra_prepare.AAN_FILE_NAMES.items():
        with open(root / "raw" / name, "w", encoding="utf-8") as f:
            for i in range(24 if split == "train" else 8):
                filler = " ".join("ab" * int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 6))))
                f.write(f"{float(i % 2)}\tid{i}a\tid{i}b\tfirst {split} {i} {filler}\tsecond {split} {i}\n")
    lra_prepare.prepare_aan(str(root / "raw"), str(root / "data"))
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Random 8x8 images, 3 classes, whose mean brightness depends on the class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for split, count in (("train", 32), ("valid", 12), ("test", 12)):
        labels = rng.integers(0, 3, count)
        pixels = np.clip(rng.integers(0, 120, (count, 64)) + 60 * labels[:, None], 0, 255).astype(np.uint8)
        lra_prepare.write_image_split(str(root / "data"), split, count, 64, zip(pixels, labels))
    return root


def test_listops_mega_trains_and_validates(listops_dir, tmp_path, capfd):
    accuracy = run_train(listops_dir / "data", tmp_path, TEXT, "mega_lra_listop",
                         [*TINY_MEGA, "--chunk-size", "8", "--attention-activation-fn", "softmax"])
    assert 0.0 <= accuracy <= 100.0
    capfd.readouterr()
    run_validate(listops_dir / "data", tmp_path / "checkpoint_best.pt", TEXT)
    output = capfd.readouterr()
    assert re.search(r"valid on 'test' subset \| loss [\d.]+ \| accuracy [\d.]+", output.out + output.err)


def test_listops_transformer_baseline_is_one_flag_away(listops_dir, tmp_path):
    """The Mega command with --arch transformer_lra_listop (the Mega-only options are ignored)."""
    accuracy = run_train(listops_dir / "data", tmp_path, TEXT, "transformer_lra_listop",
                         [*TINY_MEGA, "--encoder-ffn-embed-dim", "24", "--encoder-attention-heads", "2",
                          "--chunk-size", "8", "--attention-activation-fn", "softmax"])
    assert 0.0 <= accuracy <= 100.0
    state = torch.load(tmp_path / "checkpoint_best.pt")
    assert any(".self_attn." in name for name in state["model"])


def test_cls_token_is_prepended_and_counted_in_max_positions(listops_dir):
    task, model = setup(listops_dir / "data", TEXT, "transformer_lra_listop", TINY_TRANSFORMER)
    task.load_dataset("valid")
    item = task.dataset("valid")[0]
    assert item["net_input.src_tokens"][0] == task.dictionary.index("<CLS>")
    assert task.dictionary.index("<CLS>") == len(task.dictionary) - 1  # added after the data's symbols
    raw = listops.read_tsv(str(listops_dir / "raw" / "basic_val.tsv"))
    lengths = sorted(len(listops.source_tokens(source)) + 2 for _, source, _ in raw)  # + eos + <CLS>
    assert sorted(task.dataset("valid").sizes[0]) == lengths


def test_too_long_input_names_the_example_unless_truncated(listops_dir):
    task, _ = setup(listops_dir / "data", TEXT, "mega_lra_listop", [*TINY_MEGA, "--max-positions", "20"])
    with pytest.raises(ValueError, match=r"example \d+ of split 'valid' \(.*src-bin.valid\) has \d+ tokens .*"
                                         r"more than --max-positions 20.*--shorten-method truncate"):
        task.load_dataset("valid")
    task, _ = setup(listops_dir / "data", [*TEXT, "--shorten-method", "truncate"], "mega_lra_listop",
                    [*TINY_MEGA, "--max-positions", "20"])
    task.load_dataset("valid")
    assert max(task.dataset("valid").sizes[0]) == 20


def test_unknown_label_in_binarized_data_names_the_example(listops_dir, tmp_path):
    data = tmp_path / "data"
    os.symlink(listops_dir / "data" / "src-bin", data / "src-bin") if data.mkdir() is None else None
    (data / "label-bin").mkdir()
    labels = Dictionary()
    for k in range(10):
        labels.add_symbol(str(k))
    labels.save(str(data / "label-bin" / "dict.txt"))
    builder = indexed_dataset.make_builder(str(data / "label-bin" / "valid.bin"), impl="mmap", vocab_size=len(labels))
    for i in range(16):
        builder.add_item(torch.IntTensor([labels.unk() if i == 5 else labels.index("3"), labels.eos()]))
    builder.finalize(str(data / "label-bin" / "valid.idx"))
    task, _ = setup(data, TEXT, "mega_lra_listop", TINY_MEGA)
    with pytest.raises(ValueError, match=r"example 5 of split 'valid' .* unknown label"):
        task.load_dataset("valid")


def test_missing_data_and_wrong_model_are_clear_errors(listops_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"src-bin.dict\.txt.*scripts/prepare-lra\.py"):
        setup(tmp_path, TEXT, "mega_lra_listop", TINY_MEGA)
    with pytest.raises(ValueError, match=r"needs a sequence classifier \(--arch mega_lra_\*"):
        setup(listops_dir / "data", TEXT, "mega_wmt_en_de", ["--encoder-layers", "1", "--decoder-layers", "1"])


def test_retrieval_batches_pair_the_right_documents(aan_dir, tmp_path):
    task, model = setup(aan_dir / "data", TEXT, "mega_lra_aan", TINY_MEGA)
    assert task.paired and model.classifier[0][0].in_features == 4 * 16
    task.load_dataset("train")
    iterator = task.get_batch_iterator(task.dataset("train"), max_sentences=5, seed=3).next_epoch_itr(shuffle=True)
    seen = set()

    def text(row):
        return bytes(int(task.dictionary[t]) for t in row if t > task.dictionary.eos()).decode()

    for batch in iterator:
        net_input = batch["net_input"]
        for row in range(len(batch["id"])):
            first, second = text(net_input["src_tokens"][row]), text(net_input["src1_tokens"][row])
            number = int(first.split()[2])
            assert second == f"second train {number}" and batch["target"][row] == number % 2
            assert net_input["src1_lengths"][row] == len(second) + 1
            seen.add(number)
    assert seen == set(range(24))
    accuracy = run_train(aan_dir / "data", tmp_path, TEXT, "mega_lra_aan", TINY_MEGA, max_update=4)
    assert 0.0 <= accuracy <= 100.0


def test_images_are_normalized_as_configured(image_dir):
    task, _ = setup(image_dir / "data", [*IMAGE, "--pixel-normalization", "0.48", "0.24"], "mega_lra_cifar10",
                    TINY_MEGA)
    assert task.num_classes == 3
    task.load_dataset("valid")
    pixels = np.load(image_dir / "data" / "input" / "valid.npy")
    for index in (0, 7):
        expected = (pixels[index].astype(np.float64) / 255.0 - 0.48) / 0.24
        np.testing.assert_allclose(task.dataset("valid")[index]["source"].numpy(), expected, rtol=1e-6, atol=1e-6)
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in (2, 3)])
    assert batch["net_input"]["src_tokens"].shape == (2, 64) and batch["ntokens"] == 128


def test_image_task_trains_with_batch_norm(image_dir, tmp_path):
    accuracy = run_train(image_dir / "data", tmp_path, [*IMAGE, "--pixel-normalization", "0.5", "0.5"],
                         "mega_lra_cifar10", [*TINY_MEGA, "--chunk-size", "16", "--encoder-normalize-before"])
    assert 0.0 <= accuracy <= 100.0


def test_original_pixel_text_format_loads_the_same(image_dir, tmp_path):
    data = tmp_path / "data"
    (data / "input").mkdir(parents=True)
    os.symlink(image_dir / "data" / "label", data / "label")
    pixels = np.load(image_dir / "data" / "input" / "test.npy")
    with open(data / "input" / "test.src", "w") as f:
        f.writelines(" ".join(map(str, row)) + "\n" for row in pixels)
    task, _ = setup(data, IMAGE, "mega_lra_pf32", TINY_MEGA)
    task.load_dataset("test")
    expected = (pixels[4].astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(task.dataset("test")[4]["source"].numpy(), expected, rtol=1e-6)


def test_bad_image_data_names_the_file_and_line(image_dir, tmp_path):
    data = tmp_path / "data"
    (data / "input").mkdir(parents=True)
    (data / "label").mkdir()
    (data / "label" / "train.label").write_text("0\n1\ncat\n")
    with pytest.raises(ValueError, match=r"train\.label: line 3: label 'cat' is not a class number"):
        setup(data, IMAGE, "mega_lra_cifar10", TINY_MEGA)
    (data / "label" / "train.label").write_text("0\n1\n")
    (data / "input" / "train.src").write_text("1 2 3\n4 5\n")
    task, _ = setup(data, IMAGE, "mega_lra_cifar10", TINY_MEGA)
    with pytest.raises(ValueError, match=r"train\.src: line 2 has 2 pixels, line 1 has 3"):
        task.load_dataset("train")
    (data / "input" / "train.src").write_text("1 2 3\n4 5 300\n")
    with pytest.raises(ValueError, match=r"train\.src: line 2: pixel values must be 0-255"):
        task.load_dataset("train")
    with pytest.raises(ValueError, match="--pixel-normalization"):
        setup(data, [*IMAGE, "--pixel-normalization", "0.5", "0"], "mega_lra_cifar10", TINY_MEGA)
    task, _ = setup(image_dir / "data", IMAGE, "mega_lra_cifar10", [*TINY_MEGA, "--max-positions", "32"])
    with pytest.raises(ValueError, match=r"every image of .*input.valid\.npy has 64 positions, more than "
                                         r"--max-positions 32"):
        task.load_dataset("valid")


def test_criterion_loss_and_accuracy_against_a_direct_computation(listops_dir):
    task, model = setup(listops_dir / "data", TEXT, "mega_lra_listop", TINY_MEGA)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(6)])
    criterion = LRACrossEntropyCriterion(task, sentence_avg=True)
    model.eval()
    loss, sample_size, log = criterion(model, sample)
    logits = model(**sample["net_input"])
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = -sum(log_probs[i, sample["target"][i]] for i in range(6))
    torch.testing.assert_close(loss, expected)
    assert sample_size == 6 and log["nsentences"] == 6
    assert log["ncorrect"] == sum(int(logits[i].argmax() == sample["target"][i]) for i in range(6))
