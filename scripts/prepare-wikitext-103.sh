#!/usr/bin/env bash
# WikiText-103 (word level) for the Mega language model, as in the original Mega
# recipe (facebookresearch/mega examples/mega/README.lm.md): the raw data of
# transformer-xl's getdata.sh (wikitext-103-v1.zip: wiki.{train,valid,test}.tokens,
# already tokenized, <unk> for rare words), binarized with
#   fairseq-preprocess --only-source --trainpref wiki.train.tokens
#       --validpref wiki.valid.tokens --testpref wiki.test.tokens --destdir ... --workers N
# This script downloads and unzips; the checks and the binarization are
# mega_fairseq/prepare/language_model.py.
# Needs: fairseq (fairseq-preprocess), curl or wget and unzip (download mode only).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
ZIP_NAME="wikitext-103-v1.zip"
# The address in transformer-xl's getdata.sh (the Salesforce/MetaMind S3 bucket)
# no longer serves the file; the same archive is hosted by the dataset's author.
DEFAULT_URLS=(
  "https://wikitext.smerity.com/wikitext-103-v1.zip"
  "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
)

usage() {
  cat <<EOF
Usage: $(basename "$0") [options]

Download WikiText-103 ($ZIP_NAME) and binarize it for fairseq
(fairseq-preprocess --only-source, as in the original Mega recipe).

Options:
  --download-dir DIR   where $ZIP_NAME is downloaded and unzipped
                       (default: downloads/wikitext-103)
  --output DIR         fairseq data-bin directory (default: data-bin/wikitext-103)
  --workers N          fairseq-preprocess workers (default: $DEFAULT_WORKERS)
  --local-raw DIR      no download: binarize DIR/wiki.train.tokens,
                       DIR/wiki.valid.tokens and DIR/wiki.test.tokens
  --replace-invalid-utf8  replace bytes that are not UTF-8 by U+FFFD (counted
                       and reported) instead of stopping at the first one
  --force              replace an existing output directory
  -h, --help           this help

Environment:
  WIKITEXT103_URL      download from this URL instead of
                       ${DEFAULT_URLS[0]}
                       (then ${DEFAULT_URLS[1]},
                       the address of transformer-xl's getdata.sh)
  DOWNLOAD_CONNECT_TIMEOUT  seconds to wait for a server (default 10)
  PYTHON               Python interpreter with fairseq, used when
                       fairseq-preprocess is not on PATH (default: python3)

An archive already in the download directory is not downloaded again. Without
network the download stops at once: put $ZIP_NAME into the download directory
by hand, or unzip it anywhere and use --local-raw DIR/wikitext-103.

A missing or empty split, or text that is not UTF-8 (the error names the file
and line), stops the script before anything is written; the output directory
is built in a staging folder and appears only when complete.

Train and evaluate with examples/language_model/wikitext103.sh.
EOF
}

DOWNLOAD_DIR="downloads/wikitext-103"
OUTPUT="data-bin/wikitext-103"
LOCAL_RAW=""
FORCE=0
REPLACE_INVALID_UTF8=0
VALUE_OPTIONS="--download-dir --output --workers --local-raw"
FLAG_OPTIONS="--force --replace-invalid-utf8"
parse_options "$@"
need_positive_int --workers
check_output

download() {
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" urls url
  if [[ -n "${WIKITEXT103_URL:-}" ]]; then urls=("$WIKITEXT103_URL"); else urls=("${DEFAULT_URLS[@]}"); fi
  if already_there "$zip"; then return; fi
  for url in "${urls[@]}"; do
    if download_to "$zip" "$url"; then return; fi
    echo "download of $url failed" >&2
  done
  die "cannot download $ZIP_NAME from ${urls[*]} (no network?).
  Download it by hand into $DOWNLOAD_DIR/ and run this again, or unzip it
  anywhere and run: $(basename "$0") --local-raw <dir with wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens>"
}

extract() {  # prints nothing; leaves DOWNLOAD_DIR/wikitext-103/wiki.*.tokens
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" dir="$DOWNLOAD_DIR/wikitext-103"
  if [[ -f "$dir/.done" ]]; then
    echo "$dir already unzipped"
    return
  fi
  rm -rf "$dir"
  unzip_archive "$zip" "$DOWNLOAD_DIR" \
    || die "cannot unzip $zip (incomplete download? delete it and run again)"
  [[ -d "$dir" ]] || die "$zip did not hold a wikitext-103/ directory"
  touch "$dir/.done"
}

[[ -z "$LOCAL_RAW" || -d "$LOCAL_RAW" ]] || die "--local-raw: no such directory: $LOCAL_RAW"
raw_data "$DOWNLOAD_DIR/wikitext-103" "text in"

for split in train valid test; do
  [[ -f "$RAW/wiki.$split.tokens" ]] || die "missing input file: $RAW/wiki.$split.tokens"
done

step "checking and binarizing $RAW/wiki.{train,valid,test}.tokens into $OUTPUT"
REPLACE=()
if (( REPLACE_INVALID_UTF8 )); then REPLACE=(--replace-invalid-utf8); fi
run_prepare language_model wikitext-103 "$RAW" "$OUTPUT" --workers "$WORKERS" ${REPLACE[@]+"${REPLACE[@]}"} \
  || die "cannot prepare WikiText-103 from $RAW (see above); $OUTPUT is unchanged"
