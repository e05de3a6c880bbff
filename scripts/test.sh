#!/usr/bin/env bash
# The README's test command: install what is missing (scripts/install.sh), then run the CPU test
# suite, less the tests marked slow (inductor's C++ code generation, the ListOps benchmark script
# end to end); `bash scripts/test.sh -m ""` runs them too, as CI does (.ci/run). Extra arguments go
# to pytest (e.g. `bash scripts/test.sh -k ema`). GPU tests skip without a GPU.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/install.sh"
venv=${MEGA_VENV:-$repo/.venv}
cd "$repo"
exec "$venv/bin/python" -m pytest tests -q -m "not slow" "$@"
