"""The text pipeline of the translation corpora (WMT'16 en-de, Multi30k).

Used by ``scripts/prepare-wmt16-en-de.sh`` and ``scripts/prepare-multi30k.sh``; it
can also be run on its own (``python -m mega_fairseq.prepare.translation --help``).
Steps, for a parallel corpus given as one file per split and language (plain
text or ``.gz``, one sentence per line):

  0. input checks: every file present and not empty, source and target of a
     split with as many lines, the text UTF-8 (an error names the file and line;
     ``--replace-invalid-utf8`` replaces bad bytes by U+FFFD and reports a count).
  1. text preparation (``--bpe subword-nmt``): Moses punctuation normalisation,
     removal of non-printing characters, Moses tokenisation (no escaping of
     special characters, optional aggressive hyphen splitting).
     With ``--bpe sentencepiece`` the text is NOT Moses-tokenised: only
     non-printing characters are removed, since sentencepiece works on raw text
     and its output detokenises back to raw text.
  2. joint subword model learned on the train split of both languages:
     subword-nmt BPE (``--bpe-size`` = number of merge operations) or a
     sentencepiece model of type ``bpe`` (``--bpe-size`` = vocabulary size).
  3. subword segmentation of every split.
  4. cleaning of the train split only, on the subword-segmented text, like
     Moses' clean-corpus-n.perl (min/max length and length ratio).
  5. ``fairseq-preprocess --joined-dictionary`` into ``--dest-dir``.

The untouched source/target text of every non-train split is copied to
``DEST_DIR/raw/<split>.<lang>`` (references for sacrebleu; with
``--replace-invalid-utf8``, the text with the replacements, as the model sees it),
the subword model is copied to ``DEST_DIR`` (``bpe.codes`` or
``spm.model``/``spm.vocab``) and the settings and sentence counts are written to
``DEST_DIR/prepare.json``. DEST_DIR is written through a staging folder: a
failed run leaves it as it was.

Third-party dependencies: sacremoses (Moses tokenizer/normaliser in Python,
so no mosesdecoder checkout and no Perl are needed), subword-nmt (joint BPE as
in the original recipe), sentencepiece (the ``--bpe sentencepiece`` mode) and
fairseq (``fairseq_cli.preprocess``).  They are imported lazily, so ``--help``
and the input checks work without them.
"""

import argparse
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool

from .common import REPLACE_HELP, DataError, Replacements, binarize, check_splits, iter_lines, staged_output

CHUNK_LINES = 2000

# fairseq-preprocess names the test sets given to --testpref test, test1, ...
SPLIT_HELP = (
    "NAME=PREFIX: a split read from PREFIX.<lang> or PREFIX.<lang>.gz. "
    "Give 'train' and 'valid' once each and test splits in the order "
    "test, test1, test2, ... (the names fairseq-preprocess gives them)."
)


def log(msg):
    print("[prepare translation] " + msg, flush=True)


# --------------------------------------------------------------------------- #
# file helpers
# --------------------------------------------------------------------------- #
def find_input(prefix, lang):
    """Return the existing file for PREFIX.lang (plain or .gz), else None."""
    for path in (prefix + "." + lang, prefix + "." + lang + ".gz"):
        if os.path.isfile(path):
            return path
    return None


def iter_chunks(path, size=CHUNK_LINES):
    chunk = []
    for line in iter_lines(path):
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_lines(f, lines):
    for line in lines:
        f.write(line)
        f.write("\n")


def copy_text(src, dst, replacements=None):
    """Write the lines of src (plain or .gz, checked as UTF-8) to dst; returns their number."""
    n = 0
    with open(dst, "w", encoding="utf-8", newline="\n") as fout:
        for line in iter_lines(src, replacements):
            fout.write(line + "\n")
            n += 1
    return n


def _run_job(job):
    func, settings, lines = job
    return func(settings, lines)


def map_file(in_path, out_path, func, settings, pool=None):
    """Apply func(settings, list of lines) -> list of lines to in_path, chunk by chunk, in order;
    with a process pool the chunks are spread over its processes."""
    jobs = ((func, settings, chunk) for chunk in iter_chunks(in_path))
    results = pool.imap(_run_job, jobs, chunksize=1) if pool is not None else map(_run_job, jobs)
    n = 0
    with open(out_path, "w", encoding="utf-8", newline="\n") as fout:
        for out in results:
            write_lines(fout, out)
            n += len(out)
    return n


# --------------------------------------------------------------------------- #
# per-process workers (module level so that they can be pickled); each process
# builds the tools of a setting (tokenizer, BPE model) once, on first use
# --------------------------------------------------------------------------- #
_TOOLS = {}


def _tools(build, settings):
    key = (build.__name__, settings)
    if key not in _TOOLS:
        _TOOLS[key] = build(*settings)
    return _TOOLS[key]


def _text_tools(lang, moses, normalize, aggressive_dash):
    import regex  # dependency of sacremoses

    tools = {"aggressive": aggressive_dash, "norm": None, "tok": None,
             # remove-non-printing-char.perl: every \p{C} character becomes a space
             "nonprint": regex.compile(r"\p{C}") if normalize else None}
    if moses:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer

        if normalize:
            tools["norm"] = MosesPunctNormalizer(lang=lang)
        tools["tok"] = MosesTokenizer(lang=lang)
    return tools


def _text_chunk(settings, lines):
    tools = _tools(_text_tools, settings)
    nonprint, norm, tok = tools["nonprint"], tools["norm"], tools["tok"]
    out = []
    for line in lines:
        if nonprint is not None and not line.isprintable():
            line = nonprint.sub(" ", line)
        if norm is not None:
            line = norm.normalize(line)
        if tok is not None:
            line = tok.tokenize(
                line,
                aggressive_dash_splits=tools["aggressive"],
                escape=False,
                return_str=True,
            )
        # one ASCII space between tokens: subword-nmt splits on ' ' only,
        # fairseq on any whitespace (e.g. U+00A0), so make them agree
        out.append(" ".join(line.split()))
    return out


def _subword_nmt_tools(codes_path):
    from subword_nmt.apply_bpe import BPE

    with open(codes_path, encoding="utf-8") as f:
        return BPE(f)


def _subword_nmt_chunk(settings, lines):
    bpe = _tools(_subword_nmt_tools, settings)
    return [bpe.process_line(line) if line else "" for line in lines]


def _spm_tools(model_path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model_path)


def _spm_chunk(settings, lines):
    pieces = _tools(_spm_tools, settings).encode(lines, out_type=str)
    return [" ".join(p) for p in pieces]


# --------------------------------------------------------------------------- #
# pipeline steps
# --------------------------------------------------------------------------- #
def parse_splits(specs, langs):
    splits = []
    for spec in specs:
        if "=" not in spec:
            raise DataError("--split expects NAME=PREFIX, got %r" % spec)
        name, prefix = spec.split("=", 1)
        splits.append((name, prefix))
    names = [n for n, _ in splits]
    if len(set(names)) != len(names):
        raise DataError("duplicate split names: %s" % " ".join(names))
    if "train" not in names or "valid" not in names:
        raise DataError("--split train=... and --split valid=... are required")
    tests = [n for n in names if n not in ("train", "valid")]
    expected = ["test"] + ["test%d" % i for i in range(1, len(tests))]
    if tests != expected[: len(tests)]:
        raise DataError(
            "test splits must be named %s (in this order), got %s"
            % (" ".join(expected[: len(tests)]), " ".join(tests))
        )
    # resolve files; report every missing one at once
    files, missing = {}, []
    for name, prefix in splits:
        for lang in langs:
            path = find_input(prefix, lang)
            if path is None:
                missing.append("%s.%s (or %s.%s.gz)" % (prefix, lang, prefix, lang))
            files[(name, lang)] = path
    if missing:
        raise DataError("missing input file(s):\n  " + "\n  ".join(missing))
    return [n for n, _ in splits], files


def check_modules(bpe):
    import importlib.util

    need = ["fairseq_cli", "regex"]
    need += ["sacremoses", "subword_nmt"] if bpe == "subword-nmt" else ["sentencepiece"]
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise DataError(
            "missing Python module(s): %s; install them with "
            "`pip install sacremoses subword-nmt sentencepiece` (and fairseq)"
            % ", ".join(missing)
        )


def learn_subword_nmt(args, train_files, codes_path):
    from subword_nmt.learn_bpe import learn_bpe

    joint = os.path.join(args.work_dir, "bpe.train.joint")
    with open(joint, "wb") as fout:
        for path in train_files:
            with open(path, "rb") as fin:
                shutil.copyfileobj(fin, fout)
    with open(joint, encoding="utf-8") as fin, open(
        codes_path, "w", encoding="utf-8"
    ) as fout:
        learn_bpe(
            fin,
            fout,
            args.bpe_size,
            min_frequency=args.bpe_min_frequency,
            num_workers=max(1, args.workers),
        )
    os.remove(joint)


def learn_sentencepiece(args, train_files, model_prefix):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=list(train_files),
        model_prefix=model_prefix,
        vocab_size=args.bpe_size,
        model_type="bpe",
        character_coverage=args.spm_character_coverage,
        input_sentence_size=args.spm_input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=max(1, args.workers),
        # fairseq adds its own <s> </s> <pad>; keep only <unk> in the model
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        # tiny corpora cannot fill a large vocabulary: shrink instead of failing
        hard_vocab_limit=False,
        max_sentence_length=65536,
        minloglevel=1,
    )


def keep_pair(src, tgt, lo, hi, ratio, max_word_len=1000):
    """Length filter of Moses' clean-corpus-n.perl on whitespace tokens."""
    s, t = src.split(), tgt.split()
    ns, nt = len(s), len(t)
    if ns == 0 or nt == 0:
        return False
    if ns < lo or nt < lo or ns > hi or nt > hi:
        return False
    if ratio > 0 and (ns / nt > ratio or nt / ns > ratio):
        return False
    if any(len(w) > max_word_len for w in s) or any(len(w) > max_word_len for w in t):
        return False
    return True


def clean_corpus(src_in, tgt_in, src_out, tgt_out, lo, hi, ratio):
    kept = total = 0
    with open(src_out, "w", encoding="utf-8", newline="\n") as fs, open(
        tgt_out, "w", encoding="utf-8", newline="\n"
    ) as ft:
        for s, t in zip(iter_lines(src_in), iter_lines(tgt_in)):
            total += 1
            if keep_pair(s, t, lo, hi, ratio):
                s, t = " ".join(s.split()), " ".join(t.split())
                fs.write(s + "\n")
                ft.write(t + "\n")
                kept += 1
    return kept, total


def binarize_splits(args, names, prefixes, dest):
    tests = [prefixes[n] for n in names if n not in ("train", "valid")]
    cmd = [
        "--source-lang", args.src,
        "--target-lang", args.tgt,
        "--trainpref", prefixes["train"],
        "--validpref", prefixes["valid"],
        "--destdir", dest,
        "--joined-dictionary",
        "--workers", str(max(1, args.workers)),
    ]
    if tests:
        cmd += ["--testpref", ",".join(tests)]
    if args.nwords > 0:
        cmd += ["--nwordssrc", str(args.nwords), "--nwordstgt", str(args.nwords)]
    log("fairseq-preprocess " + " ".join(cmd))
    binarize(cmd)


def check_inputs(args, names, files, work):
    """Step 0: write every input as checked UTF-8 text to WORK/<split>.raw.<lang> (gunzipped, bad bytes
    an error or, with --replace-invalid-utf8, replaced); returns {split: sentence pairs}, {(split, lang): text}."""
    langs = (args.src, args.tgt)
    check_splits({name: [files[(name, lang)] for lang in langs] for name in names})
    replacements = Replacements() if args.replace_invalid_utf8 else None
    counts, texts = {}, {}
    for name in names:
        n = {}
        for lang in langs:
            texts[(name, lang)] = os.path.join(work, "%s.raw.%s" % (name, lang))
            n[lang] = copy_text(files[(name, lang)], texts[(name, lang)], replacements)
        if n[args.src] != n[args.tgt]:
            raise DataError(
                "split %s: %s has %d lines but %s has %d"
                % (name, files[(name, args.src)], n[args.src], files[(name, args.tgt)], n[args.tgt])
            )
        counts[name] = n[args.src]
        log("input %-6s %9d sentence pairs (%s)" % (name, counts[name], files[(name, args.src)]))
    for line in replacements.report() if replacements else []:
        log(line)
    return counts, texts


def run(args):
    t0 = time.time()
    langs = (args.src, args.tgt)
    names, files = parse_splits(args.split, langs)
    check_modules(args.bpe)
    if args.bpe_size <= 0:
        raise DataError("--bpe-size must be positive")
    os.makedirs(args.work_dir, exist_ok=True)
    counts, texts = check_inputs(args, names, files, args.work_dir)
    pool = Pool(args.workers) if args.workers > 1 else None  # one pool for every step
    try:
        kept = prepare(args, names, files, counts, texts, pool, t0)
    finally:
        if pool is not None:
            pool.terminate()
    log("done in %.1f s: %s (train %d pairs after cleaning)" % (time.time() - t0, args.dest_dir, kept))


def prepare(args, names, files, counts, texts, pool, t0):
    """Steps 1-5 into a staging folder that becomes DEST_DIR; returns the train pairs kept."""
    langs = (args.src, args.tgt)
    moses = args.bpe == "subword-nmt"
    normalize_splits = {"all": set(names), "train": {"train"}, "none": set()}[args.normalize]
    work = args.work_dir
    with staged_output(args.dest_dir) as dest:
        os.makedirs(os.path.join(dest, "raw"))
        for name in names:
            if name != "train":
                for lang in langs:
                    shutil.copy(texts[(name, lang)], os.path.join(dest, "raw", "%s.%s" % (name, lang)))

        # 1. text preparation --------------------------------------------------
        stage = "tok" if moses else "txt"
        what = "normalise + Moses-tokenise" if moses else "remove non-printing characters"
        for name in names:
            for lang in langs:
                out = os.path.join(work, "%s.%s.%s" % (name, stage, lang))
                log("step 1/5 %s: %s -> %s" % (what, files[(name, lang)], out))
                settings = (lang, moses, name in normalize_splits, args.aggressive_dash)
                map_file(texts[(name, lang)], out, _text_chunk, settings, pool)

        # 2. learn the joint subword model --------------------------------------
        train_text = [os.path.join(work, "train.%s.%s" % (stage, lang)) for lang in langs]
        if moses:
            model = os.path.join(work, "bpe.codes")
            log("step 2/5 learn joint subword-nmt BPE, %d merges -> %s" % (args.bpe_size, model))
            learn_subword_nmt(args, train_text, model)
            shutil.copy(model, os.path.join(dest, "bpe.codes"))
            func = _subword_nmt_chunk
        else:
            prefix = os.path.join(work, "spm")
            model = prefix + ".model"
            log("step 2/5 train joint sentencepiece BPE, vocab %d -> %s" % (args.bpe_size, model))
            learn_sentencepiece(args, train_text, prefix)
            import sentencepiece as spm

            size = spm.SentencePieceProcessor(model_file=model).get_piece_size()
            if size != args.bpe_size:
                log("note: corpus too small for %d pieces, sentencepiece made %d" % (args.bpe_size, size))
            for ext in ("model", "vocab"):
                shutil.copy(prefix + "." + ext, os.path.join(dest, "spm." + ext))
            func = _spm_chunk

        # 3. apply it ------------------------------------------------------------
        for name in names:
            for lang in langs:
                inp = os.path.join(work, "%s.%s.%s" % (name, stage, lang))
                out = os.path.join(work, "%s.bpe.%s" % (name, lang))
                log("step 3/5 apply %s: %s -> %s" % (args.bpe, inp, out))
                map_file(inp, out, func, (model,), pool)

        # 4. clean the train split ---------------------------------------------
        prefixes = {name: os.path.join(work, "%s.bpe" % name) for name in names}
        kept = counts["train"]
        if args.no_clean:
            log("step 4/5 cleaning skipped (--no-clean)")
        else:
            prefixes["train"] = os.path.join(work, "train.clean.bpe")
            log(
                "step 4/5 clean train: keep pairs of %d..%d subword tokens, length ratio <= %g"
                % (args.clean_min, args.clean_max, args.clean_ratio)
            )
            kept, total = clean_corpus(
                *["%s.%s" % (os.path.join(work, "train.bpe"), l) for l in langs],
                *["%s.%s" % (prefixes["train"], l) for l in langs],
                args.clean_min, args.clean_max, args.clean_ratio,
            )
            log("kept %d of %d train pairs (%.2f%%)" % (kept, total, 100.0 * kept / max(1, total)))
            if kept == 0:
                raise DataError("cleaning removed every train sentence pair")

        # 5. binarize -------------------------------------------------------------
        log("step 5/5 fairseq-preprocess -> %s" % args.dest_dir)
        binarize_splits(args, names, prefixes, dest)

        info = {
            "src": args.src,
            "tgt": args.tgt,
            "bpe": args.bpe,
            "bpe_size": args.bpe_size,
            "remove_bpe": "@@ " if moses else "sentencepiece",
            "moses_tokenized": moses,
            "aggressive_dash": args.aggressive_dash,
            "normalize": args.normalize,
            "clean": None if args.no_clean else {
                "min": args.clean_min, "max": args.clean_max, "ratio": args.clean_ratio},
            "inputs": {"%s.%s" % k: v for k, v in files.items()},
            "sentences": dict(counts, train_after_clean=kept),
            "seconds": round(time.time() - t0, 1),
        }
        with open(os.path.join(dest, "prepare.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")
    return kept


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Post-processing of fairseq-generate output:\n"
            "  --bpe subword-nmt:   --remove-bpe  (i.e. '@@ '); output is still Moses-tokenised\n"
            "  --bpe sentencepiece: --remove-bpe sentencepiece (or --post-process sentencepiece);\n"
            "                       output is detokenised text, score it against DEST_DIR/raw/<split>.<tgt>"
        ),
    )
    p.add_argument("--src", default="en", help="source language (default: en)")
    p.add_argument("--tgt", default="de", help="target language (default: de)")
    p.add_argument("--split", action="append", required=True, metavar="NAME=PREFIX", help=SPLIT_HELP)
    p.add_argument("--work-dir", required=True, help="directory for intermediate text files")
    p.add_argument("--dest-dir", required=True, help="fairseq data-bin directory to write")
    p.add_argument("--bpe", choices=["subword-nmt", "sentencepiece"], default="subword-nmt")
    p.add_argument(
        "--bpe-size", type=int, default=32000,
        help="subword-nmt: number of merge operations; sentencepiece: vocabulary size (default: 32000)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    p.add_argument(
        "--normalize", choices=["all", "train", "none"], default="all",
        help="splits that get Moses punctuation normalisation and non-printing character "
        "removal (default: all; the Mega WMT'16 recipe uses train)",
    )
    p.add_argument("--aggressive-dash", action="store_true", help="Moses tokenizer -a (split hyphens as @-@)")
    p.add_argument("--replace-invalid-utf8", action="store_true", help=REPLACE_HELP)
    p.add_argument("--no-clean", action="store_true", help="do not length-filter the train split")
    p.add_argument("--clean-min", type=int, default=1, help="min subword tokens per side (default: 1)")
    p.add_argument("--clean-max", type=int, default=250, help="max subword tokens per side (default: 250)")
    p.add_argument("--clean-ratio", type=float, default=1.5, help="max length ratio (default: 1.5; 0: off)")
    p.add_argument(
        "--nwords", type=int, default=-1,
        help="keep only the N most frequent dictionary entries (--nwordssrc/--nwordstgt; default: all)",
    )
    p.add_argument("--bpe-min-frequency", type=int, default=2, help="subword-nmt learn_bpe --min-frequency")
    p.add_argument("--spm-character-coverage", type=float, default=0.9999)
    p.add_argument(
        "--spm-input-sentence-size", type=int, default=4000000,
        help="sentencepiece trains on at most this many (sampled) lines (0: all)",
    )
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DataError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
