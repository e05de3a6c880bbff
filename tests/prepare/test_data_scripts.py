"""Tests of the data-preparation scripts in scripts/ on small synthetic corpora.

Runs scripts/prepare-wmt16-en-de.sh (--local-raw mode, subword-nmt and
sentencepiece) and scripts/prepare-multi30k.sh on generated text, plus the
error paths (missing input file, no network).  Needs sacremoses, subword-nmt,
sentencepiece and fairseq in the running interpreter's environment.
"""

import gzip
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WMT16 = REPO / "scripts" / "prepare-wmt16-en-de.sh"
MULTI30K = REPO / "scripts" / "prepare-multi30k.sh"

for _mod in ("sacremoses", "subword_nmt", "sentencepiece", "fairseq"):
    pytest.importorskip(_mod)

# ---------------------------------------------------------------------------
# synthetic parallel text
# ---------------------------------------------------------------------------
EN_SYL = ["ka", "lo", "mi", "ter", "san", "po", "vel", "dor", "ri", "nu", "shi", "ga"]
DE_SYL = ["ba", "ech", "un", "sch", "ter", "mo", "ler", "ix", "zu", "hei", "kra", "ost"]
# the long source of this pair and the empty target of the next must be
# cleaned away from train
BAD_LONG = " ".join(["zzlongword"] * 40)


def make_lexicon(rng, n=120):
    en, de = set(), set()
    while len(en) < n:
        en.add("".join(rng.choice(EN_SYL) for _ in range(rng.randint(1, 4))))
    while len(de) < n:
        de.add("".join(rng.choice(DE_SYL) for _ in range(rng.randint(1, 4))))
    return list(zip(sorted(en), sorted(de)))


def make_pairs(rng, lexicon, n):
    pairs = []
    for _ in range(n):
        words = [rng.choice(lexicon) for _ in range(rng.randint(4, 12))]
        en = [w[0] for w in words]
        de = [w[1] for w in words]
        if rng.random() < 0.2:  # a hyphenated compound
            en[0] = en[0] + "-" + en[1]
            de[0] = de[0] + "-" + de[1]
        if rng.random() < 0.3:  # a comma glued to a word: Moses splits it off
            i = rng.randrange(1, len(en) - 1)
            en[i] += ","
            de[i] += ","
        en[0] = en[0].capitalize()
        de[0] = de[0].capitalize()
        end = rng.choice([".", "?", "!"])
        pairs.append((" ".join(en) + end, " ".join(de) + end))
    return pairs


def write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)


def write_split(directory, stem, pairs, gz=False):
    write(directory / (stem + ".en"), [p[0] for p in pairs], gz)
    write(directory / (stem + ".de"), [p[1] for p in pairs], gz)


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1234)
    lexicon = make_lexicon(rng)
    train = make_pairs(rng, lexicon, 200)
    train.insert(17, (BAD_LONG, "Kurz."))
    train.insert(42, ("An English sentence without translation.", ""))
    return {
        "train": train,
        "valid": make_pairs(rng, lexicon, 20),
        "test": make_pairs(rng, lexicon, 20),
        "test1": make_pairs(rng, lexicon, 15),
        "test2": make_pairs(rng, lexicon, 12),
    }


@pytest.fixture(scope="module")
def wmt_raw(tmp_path_factory, corpus):
    raw = tmp_path_factory.mktemp("wmt_raw")
    for split in ("train", "valid", "test"):
        write_split(raw, split, corpus[split])
    return raw


def run_script(*args, env=None, timeout=300):
    full_env = dict(os.environ, PYTHON=sys.executable)
    full_env.update(env or {})
    return subprocess.run(
        ["bash", *map(str, args)],
        cwd=str(REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_ok(res):
    assert res.returncode == 0, "script failed:\nSTDOUT:\n%s\nSTDERR:\n%s" % (
        res.stdout[-4000:],
        res.stderr[-4000:],
    )


# ---------------------------------------------------------------------------
# helpers on the outputs
# ---------------------------------------------------------------------------
def read_lines(path):
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def keep(src, tgt, lo, hi, ratio):
    """Independent restatement of the clean-corpus-n length filter."""
    ns, nt = len(src.split()), len(tgt.split())
    if not (lo <= ns <= hi and lo <= nt <= hi):
        return False
    return ns <= ratio * nt and nt <= ratio * ns


def load_split(databin, split, lang):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(databin / ("dict.%s.txt" % lang)))
    ds = data_utils.load_indexed_dataset(
        str(databin / ("%s.en-de.%s" % (split, lang))), dictionary
    )
    assert ds is not None, "cannot load %s/%s.en-de.%s" % (databin, split, lang)
    return dictionary, ds


def check_databin(databin, splits):
    for lang in ("en", "de"):
        assert (databin / ("dict.%s.txt" % lang)).is_file()
        for split in splits:
            for ext in ("bin", "idx"):
                f = databin / ("%s.en-de.%s.%s" % (split, lang, ext))
                assert f.is_file() and f.stat().st_size > 0, f
    # joined dictionary
    assert (databin / "dict.en.txt").read_bytes() == (databin / "dict.de.txt").read_bytes()


def check_binarized_train(databin, work, lo, hi, ratio):
    """Train .bin holds exactly the pairs that pass the length filter."""
    bpe_en = read_lines(work / "train.bpe.en")
    bpe_de = read_lines(work / "train.bpe.de")
    expected = [(s, t) for s, t in zip(bpe_en, bpe_de) if keep(s, t, lo, hi, ratio)]
    assert 150 <= len(expected) <= 200  # the two bad pairs are gone
    for lang, idx in (("en", 0), ("de", 1)):
        dictionary, ds = load_split(databin, "train", lang)
        assert len(ds) == len(expected)
        # first and last sentence decode back to the subword text
        for i in (0, len(ds) - 1):
            assert dictionary.string(ds[i]) == expected[i][idx]
    assert not any("zzlongword" in s for s, _ in expected)
    return len(expected)


# ---------------------------------------------------------------------------
# WMT'16 script, local raw files
# ---------------------------------------------------------------------------
def test_wmt16_local_subword_nmt(tmp_path, wmt_raw, corpus):
    out, work = tmp_path / "bin", tmp_path / "work"
    res = run_script(
        WMT16, "--local-raw", wmt_raw, "--work-dir", work, "--output", out,
        "--bpe", "subword-nmt", "--bpe-size", "200", "--workers", "2",
    )
    check_ok(res)
    check_databin(out, ("train", "valid", "test"))
    # Mega recipe: clean 3..150 BPE tokens, ratio 1.5
    check_binarized_train(out, work, 3, 150, 1.5)
    assert (out / "bpe.codes").is_file()

    # BPE was applied, and removing it restores the tokenised text exactly
    assert "@@ " in (work / "train.bpe.en").read_text(encoding="utf-8")
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            bpe = read_lines(work / ("%s.bpe.%s" % (split, lang)))
            tok = read_lines(work / ("%s.tok.%s" % (split, lang)))
            assert [re.sub(r"@@( |$)", "", line) for line in bpe] == tok

    # Moses tokenisation happened (punctuation split off) ...
    tok_test = read_lines(work / "test.tok.en")
    raw_test = [p[0] for p in corpus["test"]]
    assert len(tok_test) == len(raw_test)
    assert all(t.endswith((" .", " ?", " !")) for t in tok_test)
    # ... and the raw references are kept untouched beside the data-bin
    for lang, idx in (("en", 0), ("de", 1)):
        assert read_lines(out / "raw" / ("test.%s" % lang)) == [p[idx] for p in corpus["test"]]
        assert read_lines(out / "raw" / ("valid.%s" % lang)) == [p[idx] for p in corpus["valid"]]
    _, ds = load_split(out, "test", "de")
    assert len(ds) == len(corpus["test"])


def test_wmt16_local_sentencepiece(tmp_path, wmt_raw, corpus):
    from fairseq.data.data_utils import post_process

    out, work = tmp_path / "bin", tmp_path / "work"
    res = run_script(
        WMT16, "--local-raw", wmt_raw, "--work-dir", work, "--output", out,
        "--bpe", "sentencepiece", "--bpe-size", "200", "--workers", "2",
    )
    check_ok(res)
    check_databin(out, ("train", "valid", "test"))
    check_binarized_train(out, work, 3, 150, 1.5)
    assert (out / "spm.model").is_file()
    assert "\u2581" in (work / "train.bpe.en").read_text(encoding="utf-8")
    # no Moses tokenisation in this mode: fairseq's sentencepiece
    # post-processing gives back the raw text
    for split in ("valid", "test"):
        for lang, idx in (("en", 0), ("de", 1)):
            bpe = read_lines(work / ("%s.bpe.%s" % (split, lang)))
            raw = [p[idx] for p in corpus[split]]
            assert [post_process(line, "sentencepiece") for line in bpe] == raw


def test_wmt16_missing_local_file(tmp_path, wmt_raw):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in wmt_raw.iterdir():
        if f.name != "test.de":
            (raw / f.name).write_bytes(f.read_bytes())
    res = run_script(WMT16, "--local-raw", raw, "--work-dir", tmp_path / "w", "--output", tmp_path / "o")
    assert res.returncode != 0
    assert "test.de" in res.stderr
    assert not (tmp_path / "o").exists()


def pipeline(raw, tmp_path, *extra):
    """mega_fairseq.prepare.translation on RAW/{train,valid,test}.{en,de}, in this process; returns its exit code."""
    from mega_fairseq.prepare import translation

    splits = [arg for split in ("train", "valid", "test") for arg in ("--split", f"{split}={raw / split}")]
    return translation.main([*splits, "--work-dir", str(tmp_path / "work"), "--dest-dir", str(tmp_path / "out"),
                             "--bpe", "sentencepiece", "--bpe-size", "200", "--workers", "1", *extra])


def copy_raw(wmt_raw, raw):
    raw.mkdir()
    for f in wmt_raw.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())


def test_translation_text_that_is_not_utf8_is_named_or_replaced(tmp_path, wmt_raw, capsys):
    raw = tmp_path / "raw"
    copy_raw(wmt_raw, raw)
    with open(raw / "valid.en", "ab") as f:
        f.write(b"Mr Mueller comes.\n")
    with open(raw / "valid.de", "ab") as f:
        f.write(b"Herr M\xfcller kommt.\n")  # Latin-1
    assert pipeline(raw, tmp_path) == 1
    assert f"{raw / 'valid.de'}: line 21: not UTF-8 text (byte 0xfc" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert pipeline(raw, tmp_path, "--replace-invalid-utf8") == 0
    assert "valid.de: replaced 1 invalid UTF-8 sequence(s) by U+FFFD (the first on line 21)" in capsys.readouterr().out
    # the references hold what the model sees, so that sacrebleu can read them
    assert read_lines(tmp_path / "out" / "raw" / "valid.de")[-1] == "Herr M\ufffdller kommt."


def test_translation_empty_split_is_refused(tmp_path, wmt_raw, capsys):
    raw = tmp_path / "raw"
    copy_raw(wmt_raw, raw)
    (raw / "test.en").write_text("\n")
    (raw / "test.de").write_text("\n")
    assert pipeline(raw, tmp_path) == 1
    assert "no text in: %s, %s" % (raw / "test.en", raw / "test.de") in capsys.readouterr().err


def test_translation_failure_leaves_the_output_as_it_was(tmp_path, wmt_raw, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dict.en.txt").write_text("old\n")
    assert pipeline(wmt_raw, tmp_path, "--clean-min", "1000") == 1
    assert "cleaning removed every train sentence pair" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["dict.en.txt"] and (tmp_path / "out" / "dict.en.txt").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out", "work"]


def test_wmt16_download_without_network_fails_fast(tmp_path):
    start = time.time()
    res = run_script(
        WMT16, "--download-dir", tmp_path / "dl", "--work-dir", tmp_path / "w",
        "--output", tmp_path / "o",
        env={"WMT16_URL_BASE": "http://127.0.0.1:9"}, timeout=120,
    )
    assert res.returncode != 0
    assert time.time() - start < 60
    assert "cannot reach http://127.0.0.1:9/" in res.stderr
    assert "--local-raw" in res.stderr
    assert not (tmp_path / "o").exists()


def make_tgz(path, members):
    """members: {name inside the archive: text}"""
    import io
    import tarfile

    with tarfile.open(str(path), "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sgm(lines, setid="newstest2014"):
    segs = "".join('<seg id="%d">%s</seg>\n' % (i + 1, line) for i, line in enumerate(lines))
    return (
        '<srcset setid="%s" srclang="any">\n<doc sysid="ref" docid="1-x" genre="news">\n'
        "<p>\n%s</p>\n</doc>\n</srcset>\n" % (setid, segs)
    )


def test_wmt16_download_mode_with_mirror(tmp_path, corpus):
    """Download/extract/assemble path against a local file:// mirror."""
    joined = lambda pairs, i: "".join(p[i] + "\n" for p in pairs)  # noqa: E731
    euro, crawl, nc = corpus["train"][:50], corpus["train"][50:120], corpus["train"][120:]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_tgz(mirror / "europarl-v7-de-en.tgz", {
        "europarl-v7.de-en.en": joined(euro, 0), "europarl-v7.de-en.de": joined(euro, 1)})
    make_tgz(mirror / "training-parallel-commoncrawl.tgz", {
        "commoncrawl.de-en.en": joined(crawl, 0), "commoncrawl.de-en.de": joined(crawl, 1),
        "commoncrawl.fr-en.fr": "nope\n"})
    make_tgz(mirror / "training-parallel-nc-v11.tgz", {
        "training-parallel-nc-v11/news-commentary-v11.de-en.en": joined(nc, 0),
        "training-parallel-nc-v11/news-commentary-v11.de-en.de": joined(nc, 1)})
    make_tgz(mirror / "dev.tgz", {
        "dev/newstest2013.en": joined(corpus["valid"], 0),
        "dev/newstest2013.de": joined(corpus["valid"], 1),
        "dev/newstest2014-deen-ref.en.sgm": sgm([p[0] for p in corpus["test"]]),
        "dev/newstest2014-deen-src.de.sgm": sgm([p[1] for p in corpus["test"]]),
        "dev/newstest2015-deen-src.de.sgm": sgm(["falsch"], "newstest2015")})
    work = tmp_path / "work"
    res = run_script(
        WMT16, "--download-dir", tmp_path / "dl", "--work-dir", work,
        "--output", tmp_path / "o", "--download-only",
        env={"WMT16_URL_BASE": mirror.as_uri()},
    )
    check_ok(res)
    raw = work / "raw"
    for lang, idx in (("en", 0), ("de", 1)):
        assert read_lines(raw / ("train." + lang)) == [p[idx] for p in euro + crawl + nc]
        assert read_lines(raw / ("valid." + lang)) == [p[idx] for p in corpus["valid"]]
        assert read_lines(raw / ("test." + lang)) == [p[idx] for p in corpus["test"]]
    assert not (tmp_path / "o").exists()
    # a second run reuses the downloaded archives
    res = run_script(
        WMT16, "--download-dir", tmp_path / "dl", "--work-dir", work,
        "--output", tmp_path / "o", "--download-only",
        env={"WMT16_URL_BASE": "http://127.0.0.1:9"},
    )
    check_ok(res)
    assert "already there" in res.stdout


def test_wmt16_help():
    res = run_script(WMT16, "--help")
    check_ok(res)
    for text in ("--local-raw", "--bpe-size", "--remove-bpe sentencepiece", "'@@ '"):
        assert text in res.stdout


# ---------------------------------------------------------------------------
# Multi30k script
# ---------------------------------------------------------------------------
M30K_FILES = {
    "train": "train",
    "valid": "val",
    "test": "test_2016_flickr",
    "test1": "test_2017_flickr",
    "test2": "test_2018_flickr",
}


@pytest.fixture(scope="module")
def m30k_raw(tmp_path_factory, corpus):
    raw = tmp_path_factory.mktemp("m30k_raw")
    for split, stem in M30K_FILES.items():
        # gzip as distributed; one split plain to check both are accepted
        write_split(raw, stem, corpus[split], gz=(split != "test2"))
    return raw


def test_multi30k(tmp_path, m30k_raw, corpus):
    from fairseq.data.data_utils import post_process

    out = tmp_path / "m30k-bin"
    res = run_script(MULTI30K, m30k_raw, out, "--bpe-size", "300", "--workers", "2")
    check_ok(res)
    work = tmp_path / "m30k-bin.work"
    check_databin(out, list(M30K_FILES))
    check_binarized_train(out, work, 1, 250, 3)
    assert (out / "spm.model").is_file()
    for split in M30K_FILES:
        if split == "train":
            continue
        for lang, idx in (("en", 0), ("de", 1)):
            ref = [p[idx] for p in corpus[split]]
            assert read_lines(out / "raw" / ("%s.%s" % (split, lang))) == ref
            bpe = read_lines(work / ("%s.bpe.%s" % (split, lang)))
            assert [post_process(line, "sentencepiece") for line in bpe] == ref
            _, ds = load_split(out, split, lang)
            assert len(ds) == len(ref)


def test_multi30k_missing_file(tmp_path, m30k_raw):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in m30k_raw.iterdir():
        if f.name != "test_2017_flickr.de.gz":
            (raw / f.name).write_bytes(f.read_bytes())
    res = run_script(MULTI30K, raw, tmp_path / "out")
    assert res.returncode != 0
    assert "test_2017_flickr.de" in res.stderr
    assert not (tmp_path / "out").exists()
