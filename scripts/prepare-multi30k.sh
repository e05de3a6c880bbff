#!/usr/bin/env bash
# Multi30k English-German (Task 1) for mega-fairseq: raw text -> fairseq data-bin.
#
# Dependencies (Python, pip): sentencepiece (default joint BPE), or
#   sacremoses + subword-nmt for --bpe subword-nmt, and fairseq.
#   sacremoses is the Moses tokenizer/normaliser in Python (replaces a
#   mosesdecoder checkout); subword-nmt is the joint BPE of the classic
#   recipes, from PyPI.
#
# The text pipeline itself is mega_fairseq/prepare/translation.py (shared
# with prepare-wmt16-en-de.sh).
#
# Cleaning uses a length ratio of 3, not the WMT value 1.5: the Multi30k
# sentences are short, and 1.5 would drop ~2.8% of perfectly good train pairs
# (e.g. "A child happily mixing batter in a bowl." / "Ein Kind, das strahlend
# einen Teig in einer Schüssel rührt."), while 3 only drops 2 broken pairs.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") RAW_DIR OUT_DIR [options] [-- extra options for mega_fairseq.prepare.translation]

RAW_DIR holds the raw Multi30k en-de files (gzip-compressed or plain):
  train.{en,de}[.gz] val.{en,de}[.gz] test_2016_flickr.{en,de}[.gz]
  test_2017_flickr.{en,de}[.gz] test_2018_flickr.{en,de}[.gz]
OUT_DIR becomes a fairseq data-bin directory (joined dictionary) with splits
  train, valid (val), test (test_2016_flickr), test1 (test_2017_flickr),
  test2 (test_2018_flickr)
plus OUT_DIR/raw/<split>.{en,de}: the untouched text of the non-train splits
(references for sacrebleu), the subword model (spm.model or bpe.codes) and
OUT_DIR/prepare.json (settings and sentence counts).

Options:
  --workers N        parallel processes (default: $DEFAULT_WORKERS)
  --bpe MODE         sentencepiece (default) or subword-nmt
  --bpe-size N       sentencepiece: vocabulary size; subword-nmt: merge
                     operations (default: 8000)
  --work-dir DIR     intermediate text files (default: OUT_DIR.work)
  --aggressive-dash  Moses tokenizer -a (subword-nmt mode only)
  --replace-invalid-utf8  replace bytes that are not UTF-8 by U+FFFD (counted
                     and reported) instead of stopping at the first one
  -h, --help         this help

Text handling: sentencepiece mode trains on raw text (no Moses tokenisation);
subword-nmt mode Moses-normalises and -tokenises first. Only train is
length-filtered (1..250 subword tokens, ratio <= 3, on the subword text).
A missing or empty input, or text that is not UTF-8 (the error names the file
and line), stops the script before anything is written; OUT_DIR is built in a
staging folder and appears only when complete.

After training, post-process fairseq-generate output with:
  --bpe sentencepiece:  fairseq-generate OUT_DIR ... --remove-bpe sentencepiece
                        (or --post-process sentencepiece); the output is
                        detokenised text, e.g.
                        sacrebleu OUT_DIR/raw/test.de < hypotheses.txt
  --bpe subword-nmt:    fairseq-generate OUT_DIR ... --remove-bpe  (= '@@ ');
                        the output is Moses-tokenised: detokenise it
                        (sacremoses -l de detokenize) before sacrebleu
EOF
}

POSITIONAL=()  # RAW_DIR OUT_DIR
BPE="sentencepiece"
BPE_SIZE=8000
WORK_DIR=""
AGGRESSIVE_DASH=0
REPLACE_INVALID_UTF8=0
EXTRA=()  # the arguments after --, for mega_fairseq.prepare.translation
VALUE_OPTIONS="--workers --bpe --bpe-size --work-dir"
FLAG_OPTIONS="--aggressive-dash --replace-invalid-utf8"
parse_options "$@"

(( ${#POSITIONAL[@]} == 2 )) || { usage >&2; die "expected RAW_DIR and OUT_DIR"; }
RAW_DIR="${POSITIONAL[0]}"
OUT_DIR="${POSITIONAL[1]}"
[[ -n "$WORK_DIR" ]] || WORK_DIR="${OUT_DIR%/}.work"
case "$BPE" in
  sentencepiece|subword-nmt) ;;
  *) die "--bpe must be sentencepiece or subword-nmt, not '$BPE'" ;;
esac
need_positive_int --workers --bpe-size
[[ -d "$RAW_DIR" ]] || die "RAW_DIR is not a directory: $RAW_DIR"

# fairseq split name = Multi30k file stem
SPLITS=(
  "train=train"
  "valid=val"
  "test=test_2016_flickr"
  "test1=test_2017_flickr"
  "test2=test_2018_flickr"
)

step "checking input files in $RAW_DIR"
missing=()
for s in "${SPLITS[@]}"; do
  for lang in en de; do
    f="$RAW_DIR/${s#*=}.$lang"
    [[ -f "$f.gz" || -f "$f" ]] || missing+=("$f.gz")
  done
done
(( ${#missing[@]} == 0 )) || die "missing input file(s) in RAW_DIR (plain or .gz): ${missing[*]}"

ARGS=(--src en --tgt de --work-dir "$WORK_DIR" --dest-dir "$OUT_DIR"
      --bpe "$BPE" --bpe-size "$BPE_SIZE" --workers "$WORKERS"
      --normalize all --clean-min 1 --clean-max 250 --clean-ratio 3)
for s in "${SPLITS[@]}"; do
  ARGS+=(--split "${s%%=*}=$RAW_DIR/${s#*=}")
done
if (( AGGRESSIVE_DASH )); then ARGS+=(--aggressive-dash); fi
if (( REPLACE_INVALID_UTF8 )); then ARGS+=(--replace-invalid-utf8); fi

step "tokenize -> BPE ($BPE, $BPE_SIZE) -> clean -> binarize into $OUT_DIR"
run_prepare translation "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

if [[ "$BPE" == subword-nmt ]]; then RM='--remove-bpe'; else RM='--remove-bpe sentencepiece'; fi
step "done: $OUT_DIR (fairseq-generate $OUT_DIR ... $RM; raw references in $OUT_DIR/raw/)"
