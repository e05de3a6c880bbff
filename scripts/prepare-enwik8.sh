#!/usr/bin/env bash
# enwik8 (the first 10^8 bytes of an English Wikipedia XML dump) for the Mega
# language model, as in the original Mega recipe (facebookresearch/mega
# examples/mega/README.lm.md): the data of transformer-xl's getdata.sh, i.e.
# awd-lstm-lm's prep_enwik8.py (last 5M bytes test, the 5M before valid, the
# rest train; every byte as its decimal value, space separated, a newline byte
# ending a line), binarized with fairseq-preprocess --only-source.
# This script downloads and unzips; the split, the byte tokens and the
# binarization are mega_fairseq/prepare/language_model.py.
# Needs: fairseq, numpy; curl or wget and unzip (download mode only).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
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
  --workers N          fairseq-preprocess workers (default: $DEFAULT_WORKERS)
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
The output directory is built in a staging folder and appears only when
complete: a failed run leaves nothing half-made.

Train and evaluate with examples/language_model/enwik8.sh.
EOF
}

DOWNLOAD_DIR="downloads/enwik8"
WORK_DIR=""
OUTPUT="data-bin/enwik8"
LOCAL_RAW=""
TEST_BYTES=5000000
FORCE=0
VALUE_OPTIONS="--download-dir --work-dir --output --workers --local-raw --test-bytes"
FLAG_OPTIONS="--force"
parse_options "$@"
need_positive_int --workers --test-bytes
WORK_DIR="${WORK_DIR:-$DOWNLOAD_DIR/tokens}"
check_output

download() {
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" url="${ENWIK8_URL:-$DEFAULT_URL}"
  if already_there "$zip"; then return; fi
  download_to "$zip" "$url" || die "cannot download $url (no network?).
  Download $ZIP_NAME by hand into $DOWNLOAD_DIR/ and run this again, or unzip it
  anywhere and run: $(basename "$0") --local-raw <path of the unzipped enwik8 file>"
}

extract() {  # leaves DOWNLOAD_DIR/enwik8
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" raw="$DOWNLOAD_DIR/enwik8"
  if [[ -f "$raw" && "$raw" -nt "$zip" ]]; then
    echo "$raw already unzipped"
    return
  fi
  unzip_archive "$zip" "$DOWNLOAD_DIR" enwik8 \
    || die "cannot unzip enwik8 from $zip (incomplete download? delete it and run again)"
  touch "$raw"
}

[[ -z "$LOCAL_RAW" || -f "$LOCAL_RAW" ]] || die "missing input file: $LOCAL_RAW (--local-raw)"
raw_data "$DOWNLOAD_DIR/enwik8" file

step "splitting $RAW (test and valid: $TEST_BYTES bytes each) into byte tokens in $WORK_DIR, binarizing into $OUTPUT"
run_prepare language_model enwik8 "$RAW" "$WORK_DIR" "$OUTPUT" --test-bytes "$TEST_BYTES" --workers "$WORKERS" \
  || die "cannot prepare enwik8 from $RAW (see above); $OUTPUT is unchanged"
