#!/usr/bin/env bash
# WMT'16 English-German for mega-fairseq, following the data recipe of the
# original Mega code (facebookresearch/mega examples/mega/prepare-wmt16en2de.sh,
# itself after google/seq2seq's wmt16_en_de.sh, and README.mt.md):
#   train: Europarl v7 + Common Crawl + News Commentary v11 (4.5M pairs)
#   valid: newstest2013, test: newstest2014 (full, 3003 sentences)
#   punctuation normalisation + non-printing character removal on train only,
#   Moses tokenisation without escaping (no -a, as in the Mega recipe),
#   joint BPE with 32k merges learned on the uncleaned train text,
#   clean-corpus-n on the BPE'd train text (ratio 1.5, 3..150 tokens),
#   fairseq-preprocess --joined-dictionary --nwordssrc/--nwordstgt 33000.
#
# Dependencies (Python, pip): sacremoses, subword-nmt, sentencepiece, fairseq.
#   sacremoses is the Moses tokenizer/normaliser in Python: it replaces the
#   git clone of mosesdecoder (and Perl) of the original recipe.
#   subword-nmt is the joint BPE of the original recipe, from PyPI instead of
#   a git clone. sentencepiece is only needed for --bpe sentencepiece.
# Also needed: curl or wget, tar, sed (download mode only).
#
# The text pipeline itself is mega_fairseq/prepare/translation.py (shared
# with prepare-multi30k.sh).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") [options] [-- extra options for mega_fairseq.prepare.translation]

Download and prepare WMT'16 en-de (Mega / fairseq recipe) into a fairseq
data-bin directory (splits train, valid = newstest2013, test = newstest2014).

Options:
  --download-dir DIR   where the archives are downloaded/extracted
                       (default: wmt16_en_de/download)
  --work-dir DIR       intermediate text files (default: wmt16_en_de/work)
  --output DIR         fairseq data-bin directory
                       (default: data-bin/wmt16_en_de_bpe32k, _spm32k with
                       sentencepiece; the number follows --bpe-size)
  --workers N          parallel processes (default: $DEFAULT_WORKERS)
  --bpe MODE           subword-nmt (default, as in the Mega recipe) or sentencepiece
  --bpe-size N         subword-nmt: merge operations; sentencepiece: vocabulary
                       size (default: 32000)
  --local-raw DIR      skip the download: DIR holds plain-text parallel files
                       train.en train.de valid.en valid.de test.en test.de
                       (one sentence per line; .gz also accepted)
  --aggressive-dash    Moses tokenizer -a (hyphens split as @-@; the Mega
                       recipe does not use it)
  --replace-invalid-utf8  replace bytes that are not UTF-8 by U+FFFD (counted
                       and reported) instead of stopping at the first one
  --download-only      stop after download/extraction/assembly of raw text
  -h, --help           this help

Environment:
  WMT16_URL_BASE       fetch every archive from this base URL instead of
                       statmt.org (a mirror holding the files under the names
                       europarl-v7-de-en.tgz, training-parallel-commoncrawl.tgz,
                       training-parallel-nc-v11.tgz, dev.tgz)
  PYTHON               Python interpreter (default: python3)

Archives already in --download-dir are not downloaded again. Without network
the download step stops at once: put the archives there by hand, or use
--local-raw.

After training, post-process fairseq-generate output with:
  --bpe subword-nmt:    fairseq-generate ... --remove-bpe
                        (= '@@ '; output is Moses-tokenised, as in the Mega
                        README: tokenized BLEU with compound splitting)
  --bpe sentencepiece:  fairseq-generate ... --remove-bpe sentencepiece
                        (or --post-process sentencepiece); output is
                        detokenised text: sacrebleu against OUTPUT/raw/test.de
The raw (untokenised) valid/test text is kept in OUTPUT/raw/.

A missing or empty input, or text that is not UTF-8 (the error names the file
and line), stops the script before anything is written; the output directory
is built in a staging folder and appears only when complete.
EOF
}

DOWNLOAD_DIR="wmt16_en_de/download"
WORK_DIR="wmt16_en_de/work"
OUTPUT=""
BPE="subword-nmt"
BPE_SIZE=32000
LOCAL_RAW=""
AGGRESSIVE_DASH=0
REPLACE_INVALID_UTF8=0
DOWNLOAD_ONLY=0
EXTRA=()  # the arguments after --, for mega_fairseq.prepare.translation
VALUE_OPTIONS="--download-dir --work-dir --output --workers --bpe --bpe-size --local-raw"
FLAG_OPTIONS="--aggressive-dash --replace-invalid-utf8 --download-only"
parse_options "$@"

case "$BPE" in
  subword-nmt) BPE_TAG=bpe ;;
  sentencepiece) BPE_TAG=spm ;;
  *) die "--bpe must be subword-nmt or sentencepiece, not '$BPE'" ;;
esac
need_positive_int --workers --bpe-size
if [[ -z "$OUTPUT" ]]; then
  if (( BPE_SIZE % 1000 == 0 )); then size_tag="$((BPE_SIZE / 1000))k"; else size_tag="$BPE_SIZE"; fi
  OUTPUT="data-bin/wmt16_en_de_${BPE_TAG}${size_tag}"
fi

# --------------------------------------------------------------------------
# download + extraction
# --------------------------------------------------------------------------
# local file name | original URL
SOURCES=(
  "europarl-v7-de-en.tgz|https://www.statmt.org/europarl/v7/de-en.tgz"
  "training-parallel-commoncrawl.tgz|https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"
  "training-parallel-nc-v11.tgz|https://data.statmt.org/wmt16/translation-task/training-parallel-nc-v11.tgz"
  "dev.tgz|https://data.statmt.org/wmt16/translation-task/dev.tgz"
)

source_url() {  # $1 = "name|url"
  local name="${1%%|*}" url="${1#*|}"
  if [[ -n "${WMT16_URL_BASE:-}" ]]; then
    echo "${WMT16_URL_BASE%/}/${name}"
  else
    echo "$url"
  fi
}

download() {
  mkdir -p "$DOWNLOAD_DIR"
  command -v curl >/dev/null 2>&1 || command -v wget >/dev/null 2>&1 \
    || die "neither curl nor wget is installed: download the files by hand into $DOWNLOAD_DIR or use --local-raw"
  local src url todo=()
  for src in "${SOURCES[@]}"; do
    already_there "$DOWNLOAD_DIR/${src%%|*}" || todo+=("$src")
  done
  # probe everything first: fail before spending an hour on the first archive
  local names="" reason
  for src in "${SOURCES[@]}"; do names+="${names:+, }${src%%|*}"; done
  for src in ${todo[@]+"${todo[@]}"}; do
    url="$(source_url "$src")"
    reason="$(probe_url "$url")" \
      || die "cannot reach $url: no network? download the files by hand into $DOWNLOAD_DIR ($names) or use --local-raw DIR${reason:+
  (${reason})}"
  done
  for src in ${todo[@]+"${todo[@]}"}; do
    url="$(source_url "$src")"
    download_to "$DOWNLOAD_DIR/${src%%|*}" "$url" 3 || die "download of $url failed"
  done
}

extract() {
  local src name dir
  for src in "${SOURCES[@]}"; do
    name="${src%%|*}"
    dir="$DOWNLOAD_DIR/extracted/${name%.tgz}"
    if [[ -f "$dir/.done" ]]; then
      echo "$dir already extracted"
      continue
    fi
    step "extracting $DOWNLOAD_DIR/$name -> $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -xzf "$DOWNLOAD_DIR/$name" -C "$dir" || die "cannot extract $DOWNLOAD_DIR/$name (incomplete download? delete it and run again)"
    touch "$dir/.done"
  done
}

find_one() {  # $1 = file name to find under the extraction dir
  local hit
  hit="$(find "$DOWNLOAD_DIR/extracted" -type f -name "$1" -print | sort | head -n 1)"
  [[ -n "$hit" ]] || die "$1 not found in the extracted archives under $DOWNLOAD_DIR/extracted"
  echo "$hit"
}

sgm_to_text() {  # text of the <seg> elements, one per line
  grep '<seg' "$1" | sed -e 's|^.*<seg[^>]*>[[:space:]]*||' -e 's|[[:space:]]*</seg>.*$||'
}

assemble_raw() {
  local raw="$WORK_DIR/raw" lang
  mkdir -p "$raw"
  for lang in en de; do
    step "assembling $raw/train.$lang (Europarl v7 + Common Crawl + News Commentary v11)"
    cat "$(find_one "europarl-v7.de-en.$lang")" \
        "$(find_one "commoncrawl.de-en.$lang")" \
        "$(find_one "news-commentary-v11.de-en.$lang")" > "$raw/train.$lang"
    step "assembling $raw/valid.$lang (newstest2013)"
    cp "$(find_one "newstest2013.$lang")" "$raw/valid.$lang"
  done
  step "assembling $raw/test.{en,de} (newstest2014 from SGML)"
  sgm_to_text "$(find_one newstest2014-deen-ref.en.sgm)" > "$raw/test.en"
  sgm_to_text "$(find_one newstest2014-deen-src.de.sgm)" > "$raw/test.de"
  wc -l "$raw"/train.en "$raw"/train.de "$raw"/valid.en "$raw"/valid.de "$raw"/test.en "$raw"/test.de
}

# --------------------------------------------------------------------------
if [[ -n "$LOCAL_RAW" ]]; then
  [[ -d "$LOCAL_RAW" ]] || die "--local-raw: no such directory: $LOCAL_RAW"
  missing=()
  for split in train valid test; do
    for lang in en de; do
      [[ -f "$LOCAL_RAW/$split.$lang" || -f "$LOCAL_RAW/$split.$lang.gz" ]] || missing+=("$LOCAL_RAW/$split.$lang")
    done
  done
  (( ${#missing[@]} == 0 )) || die "missing input file(s) in --local-raw dir: ${missing[*]}"
  step "using local raw text in $LOCAL_RAW (no download)"
  RAW="$LOCAL_RAW"
else
  step "download into $DOWNLOAD_DIR"
  download
  step "extract"
  extract
  assemble_raw
  RAW="$WORK_DIR/raw"
fi

if (( DOWNLOAD_ONLY )); then
  step "raw text ready in $RAW (--download-only: stopping here)"
  exit 0
fi

ARGS=(
  --src en --tgt de
  --split "train=$RAW/train" --split "valid=$RAW/valid" --split "test=$RAW/test"
  --work-dir "$WORK_DIR" --dest-dir "$OUTPUT"
  --bpe "$BPE" --bpe-size "$BPE_SIZE" --workers "$WORKERS"
  --normalize train
  --clean-min 3 --clean-max 150 --clean-ratio 1.5
  --nwords "$((BPE_SIZE + 1000))"
)
if (( AGGRESSIVE_DASH )); then ARGS+=(--aggressive-dash); fi
if (( REPLACE_INVALID_UTF8 )); then ARGS+=(--replace-invalid-utf8); fi
step "tokenize -> BPE ($BPE, $BPE_SIZE) -> clean -> binarize into $OUTPUT"
run_prepare translation "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

if [[ "$BPE" == subword-nmt ]]; then RM='--remove-bpe'; else RM='--remove-bpe sentencepiece'; fi
step "done: $OUTPUT (fairseq-generate $OUTPUT ... $RM; raw references in $OUTPUT/raw/)"
