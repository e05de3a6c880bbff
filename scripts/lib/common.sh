# Shared by the data-preparation scripts in scripts/, which source it first:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# Sets SCRIPT_DIR (the scripts/ directory, whatever the current one), PYTHON (default python3),
# DEFAULT_WORKERS (the number of CPUs) and WORKERS (--workers, which every script has: DEFAULT_WORKERS
# unless given), CONNECT_TIMEOUT; defines the messages (die, step), the option parsing
# (parse_options, need_positive_int), the downloads (already_there, download_to, probe_url), the
# steps of the language-model data scripts (check_output, unzip_archive, raw_data) and run_prepare,
# which runs the preparation itself (python -m mega_fairseq.prepare.MODULE, this checkout's package).
#
# Environment:
#   DOWNLOAD_CONNECT_TIMEOUT  seconds to wait for a server (default 10)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
PYTHON="${PYTHON:-python3}"
DEFAULT_WORKERS="$(nproc 2>/dev/null || echo 1)"
WORKERS="$DEFAULT_WORKERS"
CONNECT_TIMEOUT="${DOWNLOAD_CONNECT_TIMEOUT:-10}"

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs an argument (see --help)"; }

# option_var --some-name: prints SOME_NAME, the variable that holds the option's value
option_var() { printf '%s' "${1#--}" | tr 'a-z-' 'A-Z_'; }

# is_one_of WORD LIST: WORD is one of the (space-separated) words of LIST
is_one_of() {
  local word
  for word in $2; do [[ "$word" == "$1" ]] && return 0; done
  return 1
}

# parse_options "$@": the option loop. The script sets first
#   VALUE_OPTIONS  the options that take an argument: --some-name X sets SOME_NAME=X
#   FLAG_OPTIONS   the options without one: --some-name sets SOME_NAME=1
# and gives its usage function. -h/--help prints the usage and exits. A script that declares the
# array EXTRA gets the arguments after "--" in it, one that declares POSITIONAL the arguments
# without a leading dash; anything else stops the script as an unknown option.
parse_options() {
  while [[ $# -gt 0 ]]; do
    if is_one_of "$1" "$VALUE_OPTIONS"; then
      need_arg "$@"
      printf -v "$(option_var "$1")" '%s' "$2"
      shift 2
    elif is_one_of "$1" "$FLAG_OPTIONS"; then
      printf -v "$(option_var "$1")" 1
      shift
    elif [[ "$1" == -h || "$1" == --help ]]; then
      usage
      exit 0
    elif [[ "$1" == -- ]] && declare -p EXTRA >/dev/null 2>&1; then
      shift
      EXTRA=("$@")
      return
    elif [[ "$1" != -* ]] && declare -p POSITIONAL >/dev/null 2>&1; then
      POSITIONAL+=("$1")
      shift
    else
      die "unknown option: $1 (see --help)"
    fi
  done
}

# need_positive_int --option...: stop unless the value of each option is a positive integer
need_positive_int() {
  local option var
  for option in "$@"; do
    var="$(option_var "$option")"
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$option must be a positive integer, not '${!var}'"
  done
}

# already_there FILE: true (and says so) when FILE was downloaded before
already_there() {
  [[ -s "$1" ]] || return 1
  echo "$1 already there, not downloading"
}

# fetch URL OUT [RETRIES]: a short connection timeout (no network: fails in seconds), no retry
# unless RETRIES is given
fetch() {
  local url="$1" out="$2" retries="${3:-0}" progress=-sS
  [[ -t 2 ]] && progress=-#
  if command -v curl >/dev/null 2>&1; then
    curl -fL "$progress" --connect-timeout "$CONNECT_TIMEOUT" --speed-limit 1000 --speed-time 120 \
      --retry "$retries" --retry-delay 5 -o "$out" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -nv --tries="$((retries + 1))" --dns-timeout="$CONNECT_TIMEOUT" --connect-timeout="$CONNECT_TIMEOUT" \
      --read-timeout=120 -O "$out" "$url"
  else
    echo "neither curl nor wget is installed" >&2
    return 1
  fi
}

# download_to FILE URL [RETRIES]: fetch URL into FILE (through FILE.part, so that an interrupted
# download is never taken for a complete one); returns non-zero when the download fails
download_to() {
  local file="$1" url="$2"
  mkdir -p "$(dirname "$file")"
  step "downloading $url -> $file"
  if ! fetch "$url" "$file.part" "${3:-0}"; then
    rm -f "$file.part"
    return 1
  fi
  mv "$file.part" "$file"
}

# probe_url URL: is the server there at all? A short probe, so that a machine without network fails
# in seconds instead of hanging in the download. Prints the reason of a failure.
probe_url() {
  if command -v curl >/dev/null 2>&1; then
    curl -sS -o /dev/null -I -L --connect-timeout "$CONNECT_TIMEOUT" --max-time 30 "$1" 2>&1
  else
    wget -q --spider --timeout="$CONNECT_TIMEOUT" --tries=1 "$1" 2>&1
  fi
}

# check_output: stop when OUTPUT already holds binarized data, unless --force (FORCE=1): then the new
# files replace the old ones once they are all written
check_output() {
  if [[ -e "$OUTPUT/dict.txt" ]] && (( ! FORCE )); then
    die "$OUTPUT already holds binarized data ($OUTPUT/dict.txt): remove it, use --force, or pick another --output"
  fi
}

# unzip_archive ZIP DIR [MEMBER...]: unzip ZIP (or only MEMBERs of it) into DIR; stops when unzip is
# not installed, fails when unzip does
unzip_archive() {
  command -v unzip >/dev/null 2>&1 || die "unzip is not installed: unzip $1 by hand and use --local-raw"
  step "unzipping $1"
  unzip -q -o "$1" "${@:3}" -d "$2"
}

# raw_data DOWNLOADED WHAT: sets RAW to the --local-raw input (WHAT says what it is: "file", "text in"),
# or without --local-raw runs the script's download and extract and sets RAW to DOWNLOADED, what they leave
raw_data() {
  if [[ -n "$LOCAL_RAW" ]]; then
    RAW="$LOCAL_RAW"
    step "using local raw $2 $RAW (no download)"
  else
    download
    extract
    RAW="$1"
  fi
}

# run_prepare MODULE ARGS...: python -m mega_fairseq.prepare.MODULE ARGS with this checkout's package
run_prepare() {
  PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m "mega_fairseq.prepare.$1" "${@:2}"
}
