#!/usr/bin/env bash
# enwik8 (the first 10^8 bytes of an English Wikipedia XML dump) for the Mega
# language model, as in the original Mega recipe (facebookresearch/mega
# examples/mega/README.lm.md): the data of transformer-xl's getdata.sh, i.e.
# awd-lstm-lm's prep_enwik8.py (last 5M bytes test, the 5M before valid, the
# rest train; every byte as its decimal value, space separated, a newline byte
# ending a line), binarized with fairseq-preprocess --only-source.
# The byte conversion is scripts/enwik8_bytes.py.
# Needs: fairseq, numpy; curl or wget and unzip (download mode only).

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
ZIP_NAME="enwik8.zip"
DEFAULT_URL="http://mattmahoney.net/dc/enwik8.zip"

usage() {
  cat <<EOF
Usage: $(basename "$0") [options]

Download enwik8 ($DEFAULT_URL), split it into train/valid/test as
transformer-xl does, write each split as byte tokens and binarize it for
fairseq (fairseq-preprocess --only-source).

Options:
  --download-dir DIR   where $ZIP_NAME is downloaded and unzipped
                       (default: downloads/enwik8)
  --work-dir DIR       byte-token text of the splits, train.txt valid.txt
                       test.txt (default: DOWNLOAD_DIR/tokens)
  --output DIR         fairseq data-bin directory (default: data-bin/enwik8)
  --workers N          fairseq-preprocess workers (default: $(nproc 2>/dev/null || echo 1))
  --local-raw FILE     no download: split and binarize FILE, the raw
                       (unzipped) enwik8 or any other byte file
  --test-bytes N       bytes of the test set and of the validation set
                       (default: 5000000, as transformer-xl)
  --force              replace an existing output directory
  -h, --help           this help

Environment:
  ENWIK8_URL           download from this URL instead of $DEFAULT_URL
  DOWNLOAD_CONNECT_TIMEOUT  seconds to wait for the server (default 10)
  PYTHON               Python interpreter with numpy and fairseq (default: python3)

The data: the last N bytes are the test set, the N before them the validation
set and the rest the training set (90M / 5M / 5M bytes). Every byte is one
token (its decimal value); a newline byte is the end-of-line symbol </s> that
fairseq adds to each line. The base-2 loss that fairseq-eval-lm prints
("Loss (base 2)") and python -m mega_fairseq.stream_eval prints is therefore
bits per byte (bpc), the figure reported for enwik8.

An archive already in the download directory is not downloaded again. Without
network the download stops at once: put $ZIP_NAME into the download directory
by hand, or unzip it anywhere and use --local-raw PATH/enwik8.

Train and evaluate with examples/language_model/enwik8.sh.
EOF
}

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs an argument (see --help)"; }

DOWNLOAD_DIR="downloads/enwik8"
WORK_DIR=""
OUTPUT="data-bin/enwik8"
WORKERS="$(nproc 2>/dev/null || echo 1)"
LOCAL_RAW=""
TEST_BYTES=5000000
FORCE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --download-dir) need_arg "$@"; DOWNLOAD_DIR="$2"; shift 2 ;;
    --work-dir) need_arg "$@"; WORK_DIR="$2"; shift 2 ;;
    --output) need_arg "$@"; OUTPUT="$2"; shift 2 ;;
    --workers) need_arg "$@"; WORKERS="$2"; shift 2 ;;
    --local-raw) need_arg "$@"; LOCAL_RAW="$2"; shift 2 ;;
    --test-bytes) need_arg "$@"; TEST_BYTES="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, not '$WORKERS'"
[[ "$TEST_BYTES" =~ ^[1-9][0-9]*$ ]] || die "--test-bytes must be a positive integer, not '$TEST_BYTES'"
WORK_DIR="${WORK_DIR:-$DOWNLOAD_DIR/tokens}"
CONNECT_TIMEOUT="${DOWNLOAD_CONNECT_TIMEOUT:-10}"

if [[ -e "$OUTPUT/dict.txt" ]]; then
  (( FORCE )) || die "$OUTPUT already holds binarized data ($OUTPUT/dict.txt): remove it, use --force, or pick another --output"
  rm -rf "$OUTPUT"
fi

# fetch URL OUT: one attempt, a short connection timeout (no network: fails in seconds)
fetch() {
  local url="$1" out="$2" progress=-sS
  [[ -t 2 ]] && progress=-#
  if command -v curl >/dev/null 2>&1; then
    curl -fL "$progress" --connect-timeout "$CONNECT_TIMEOUT" --speed-limit 1000 --speed-time 120 \
      -o "$out" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -nv --tries=1 --dns-timeout="$CONNECT_TIMEOUT" --connect-timeout="$CONNECT_TIMEOUT" \
      --read-timeout=120 -O "$out" "$url"
  else
    echo "neither curl nor wget is installed" >&2
    return 1
  fi
}

download() {
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" url="${ENWIK8_URL:-$DEFAULT_URL}"
  if [[ -s "$zip" ]]; then
    echo "$zip already there, not downloading"
    return
  fi
  mkdir -p "$DOWNLOAD_DIR"
  step "downloading $url -> $zip"
  if ! fetch "$url" "$zip.part"; then
    rm -f "$zip.part"
    die "cannot download $url (no network?).
  Download $ZIP_NAME by hand into $DOWNLOAD_DIR/ and run this again, or unzip it
  anywhere and run: $(basename "$0") --local-raw <path of the unzipped enwik8 file>"
  fi
  mv "$zip.part" "$zip"
}

extract() {  # leaves DOWNLOAD_DIR/enwik8
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" raw="$DOWNLOAD_DIR/enwik8"
  if [[ -f "$raw" && "$raw" -nt "$zip" ]]; then
    echo "$raw already unzipped"
    return
  fi
  command -v unzip >/dev/null 2>&1 || die "unzip is not installed: unzip $zip by hand and use --local-raw"
  step "unzipping $zip"
  unzip -q -o "$zip" enwik8 -d "$DOWNLOAD_DIR" \
    || die "cannot unzip enwik8 from $zip (incomplete download? delete it and run again)"
  touch "$raw"
}

if [[ -n "$LOCAL_RAW" ]]; then
  [[ -f "$LOCAL_RAW" ]] || die "missing input file: $LOCAL_RAW (--local-raw)"
  RAW="$LOCAL_RAW"
  step "using local raw file $RAW (no download)"
else
  download
  extract
  RAW="$DOWNLOAD_DIR/enwik8"
fi

step "splitting $RAW (test and valid: $TEST_BYTES bytes each) into byte tokens in $WORK_DIR"
"$PYTHON" "$SCRIPT_DIR/enwik8_bytes.py" "$RAW" "$WORK_DIR" --test-bytes "$TEST_BYTES" \
  || die "cannot split $RAW"

if command -v fairseq-preprocess >/dev/null 2>&1; then
  PREPROCESS=(fairseq-preprocess)
else
  PREPROCESS=("$PYTHON" -m fairseq_cli.preprocess)
fi
step "binarizing into $OUTPUT"
"${PREPROCESS[@]}" \
  --only-source \
  --trainpref "$WORK_DIR/train.txt" \
  --validpref "$WORK_DIR/valid.txt" \
  --testpref "$WORK_DIR/test.txt" \
  --destdir "$OUTPUT" \
  --workers "$WORKERS"

step "done: $OUTPUT (fairseq-eval-lm's \"Loss (base 2)\" on this data is bits per byte)"
