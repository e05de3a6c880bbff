#!/usr/bin/env bash
# WikiText-103 (word level) for the Mega language model, as in the original Mega
# recipe (facebookresearch/mega examples/mega/README.lm.md): the raw data of
# transformer-xl's getdata.sh (wikitext-103-v1.zip: wiki.{train,valid,test}.tokens,
# already tokenized, <unk> for rare words), binarized with
#   fairseq-preprocess --only-source --trainpref wiki.train.tokens
#       --validpref wiki.valid.tokens --testpref wiki.test.tokens --destdir ... --workers N
# Needs: fairseq (fairseq-preprocess), curl or wget and unzip (download mode only).

set -euo pipefail

PYTHON="${PYTHON:-python3}"
ZIP_NAME="wikitext-103-v1.zip"
# The address in transformer-xl's getdata.sh (the Salesforce/MetaMind S3 bucket)
# no longer serves the file; the same archive is hosted by the dataset's author.
DEFAULT_URLS=(
  "https://wikitext.smerity.com/wikitext-103-v1.zip"
  "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
)
SPLITS=(train valid test)

usage() {
  cat <<EOF
Usage: $(basename "$0") [options]

Download WikiText-103 ($ZIP_NAME) and binarize it for fairseq
(fairseq-preprocess --only-source, as in the original Mega recipe).

Options:
  --download-dir DIR   where $ZIP_NAME is downloaded and unzipped
                       (default: downloads/wikitext-103)
  --output DIR         fairseq data-bin directory (default: data-bin/wikitext-103)
  --workers N          fairseq-preprocess workers (default: $(nproc 2>/dev/null || echo 1))
  --local-raw DIR      no download: binarize DIR/wiki.train.tokens,
                       DIR/wiki.valid.tokens and DIR/wiki.test.tokens
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

Train and evaluate with examples/language_model/wikitext103.sh.
EOF
}

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs an argument (see --help)"; }

DOWNLOAD_DIR="downloads/wikitext-103"
OUTPUT="data-bin/wikitext-103"
WORKERS="$(nproc 2>/dev/null || echo 1)"
LOCAL_RAW=""
FORCE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --download-dir) need_arg "$@"; DOWNLOAD_DIR="$2"; shift 2 ;;
    --output) need_arg "$@"; OUTPUT="$2"; shift 2 ;;
    --workers) need_arg "$@"; WORKERS="$2"; shift 2 ;;
    --local-raw) need_arg "$@"; LOCAL_RAW="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, not '$WORKERS'"
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
  local zip="$DOWNLOAD_DIR/$ZIP_NAME" urls url
  if [[ -n "${WIKITEXT103_URL:-}" ]]; then urls=("$WIKITEXT103_URL"); else urls=("${DEFAULT_URLS[@]}"); fi
  if [[ -s "$zip" ]]; then
    echo "$zip already there, not downloading"
    return
  fi
  mkdir -p "$DOWNLOAD_DIR"
  for url in "${urls[@]}"; do
    step "downloading $url -> $zip"
    if fetch "$url" "$zip.part"; then
      mv "$zip.part" "$zip"
      return
    fi
    rm -f "$zip.part"
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
  command -v unzip >/dev/null 2>&1 || die "unzip is not installed: unzip $zip by hand and use --local-raw"
  step "unzipping $zip"
  rm -rf "$dir"
  unzip -q -o "$zip" -d "$DOWNLOAD_DIR" \
    || die "cannot unzip $zip (incomplete download? delete it and run again)"
  [[ -d "$dir" ]] || die "$zip did not hold a wikitext-103/ directory"
  touch "$dir/.done"
}

if [[ -n "$LOCAL_RAW" ]]; then
  [[ -d "$LOCAL_RAW" ]] || die "--local-raw: no such directory: $LOCAL_RAW"
  RAW="$LOCAL_RAW"
  step "using local raw text in $RAW (no download)"
else
  download
  extract
  RAW="$DOWNLOAD_DIR/wikitext-103"
fi

for split in "${SPLITS[@]}"; do
  [[ -f "$RAW/wiki.$split.tokens" ]] || die "missing input file: $RAW/wiki.$split.tokens"
done

if command -v fairseq-preprocess >/dev/null 2>&1; then
  PREPROCESS=(fairseq-preprocess)
else
  PREPROCESS=("$PYTHON" -m fairseq_cli.preprocess)
fi
step "binarizing into $OUTPUT"
"${PREPROCESS[@]}" \
  --only-source \
  --trainpref "$RAW/wiki.train.tokens" \
  --validpref "$RAW/wiki.valid.tokens" \
  --testpref "$RAW/wiki.test.tokens" \
  --destdir "$OUTPUT" \
  --workers "$WORKERS"

step "done: $OUTPUT ($(($(wc -l < "$OUTPUT/dict.txt") + 4)) types with the 4 special symbols)"
