#!/usr/bin/env bash
# Multi30k English-German (Task 1) for mega-fairseq: raw text -> fairseq data-bin.
#
# Dependencies (Python, pip): sentencepiece (default joint BPE), or
#   sacremoses + subword-nmt for --bpe subword-nmt, and fairseq.
#   sacremoses is the Moses tokenizer/normaliser in Python (replaces a
#   mosesdecoder checkout); subword-nmt is the joint BPE of the classic
#   recipes, from PyPI.
#
# The text pipeline itself lives in scripts/prepare_translation.py (shared
# with prepare-wmt16-en-de.sh).
#
# Cleaning uses a length ratio of 3, not the WMT value 1.5: the Multi30k
# sentences are short, and 1.5 would drop ~2.8% of perfectly good train pairs
# (e.g. "A child happily mixing batter in a bowl." / "Ein Kind, das strahlend
# einen Teig in einer Schüssel rührt."), while 3 only drops 2 broken pairs.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIPELINE="${SCRIPT_DIR}/prepare_translation.py"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<EOF
Usage: $(basename "$0") RAW_DIR OUT_DIR [options] [-- extra options for prepare_translation.py]

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
  --workers N        parallel processes (default: $(nproc 2>/dev/null || echo 1))
  --bpe MODE         sentencepiece (default) or subword-nmt
  --bpe-size N       sentencepiece: vocabulary size; subword-nmt: merge
                     operations (default: 8000)
  --work-dir DIR     intermediate text files (default: OUT_DIR.work)
  --aggressive-dash  Moses tokenizer -a (subword-nmt mode only)
  -h, --help         this help

Text handling: sentencepiece mode trains on raw text (no Moses tokenisation);
subword-nmt mode Moses-normalises and -tokenises first. Only train is
length-filtered (1..250 subword tokens, ratio <= 3, on the subword text).

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

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }

POSITIONAL=()
WORKERS="$(nproc 2>/dev/null || echo 1)"
BPE="sentencepiece"
BPE_SIZE=8000
WORK_DIR=""
AGGRESSIVE=0
EXTRA=()

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs an argument (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) need_arg "$@"; WORKERS="$2"; shift 2 ;;
    --bpe) need_arg "$@"; BPE="$2"; shift 2 ;;
    --bpe-size) need_arg "$@"; BPE_SIZE="$2"; shift 2 ;;
    --work-dir) need_arg "$@"; WORK_DIR="$2"; shift 2 ;;
    --aggressive-dash) AGGRESSIVE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done

(( ${#POSITIONAL[@]} == 2 )) || { usage >&2; die "expected RAW_DIR and OUT_DIR"; }
RAW_DIR="${POSITIONAL[0]}"
OUT_DIR="${POSITIONAL[1]}"
[[ -n "$WORK_DIR" ]] || WORK_DIR="${OUT_DIR%/}.work"
case "$BPE" in
  sentencepiece|subword-nmt) ;;
  *) die "--bpe must be sentencepiece or subword-nmt, not '$BPE'" ;;
esac
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, not '$WORKERS'"
[[ "$BPE_SIZE" =~ ^[1-9][0-9]*$ ]] || die "--bpe-size must be a positive integer, not '$BPE_SIZE'"
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
if (( AGGRESSIVE )); then ARGS+=(--aggressive-dash); fi

step "tokenize -> BPE ($BPE, $BPE_SIZE) -> clean -> binarize into $OUT_DIR"
"$PYTHON" "$PIPELINE" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

if [[ "$BPE" == subword-nmt ]]; then RM='--remove-bpe'; else RM='--remove-bpe sentencepiece'; fi
step "done: $OUT_DIR (fairseq-generate $OUT_DIR ... $RM; raw references in $OUT_DIR/raw/)"
