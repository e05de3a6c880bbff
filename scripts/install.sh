#!/usr/bin/env bash
# Install mega-fairseq and everything it needs into a virtual environment (idempotent).
#   MEGA_VENV   the environment (default: .venv in the repository)
#   TORCH_SPEC  torch requirement when torch is missing (default: torch==2.13.0, the CPU build
#               on the project's machines; an unpinned `torch` would pull a CUDA build of several GB)
# fairseq comes from `fairseq-fixed` (fairseq 0.12 repackaged for Python 3.11+), built without
# build isolation (so it compiles against this torch) and without its dependencies (its torchaudio
# requirement would replace torch); its real run-time dependencies are installed explicitly.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEGA_VENV:-$repo/.venv}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

[ -x "$venv/bin/python" ] || { echo "[install] creating $venv"; python3 -m venv "$venv"; }
py="$venv/bin/python"
pip() { "$py" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$py" -c "import torch" 2>/dev/null; then
    echo "[install] $torch_spec"
    pip "$torch_spec"
fi
pip numpy cython wheel setuptools
if ! "$py" -c "import fairseq" 2>/dev/null; then
    echo "[install] fairseq-fixed==0.12.3.1 (builds its C++/Cython parts, about 3 minutes)"
    pip --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
echo "[install] fairseq run-time dependencies, data-script and test tools"
pip hydra-core==1.3.2 omegaconf==2.3.0 regex sacrebleu tqdm bitarray cffi scikit-learn packaging \
    sentencepiece tensorboard pytest sacremoses subword-nmt
# triton: the fused EMA kernels (mega_fairseq/ops/triton/ema_scan.py). CUDA builds of torch bring
# it; on a CPU it lets the tests run the kernels through Triton's interpreter. 3.6.0 is the
# version the GPU machines' torch ships with.
if ! "$py" -c "import triton" 2>/dev/null; then
    echo "[install] triton==3.6.0"
    pip triton==3.6.0
fi
echo "[install] mega-fairseq (editable)"
pip --no-deps --no-build-isolation -e "$repo"
"$py" -c "import fairseq, mega_fairseq; print('[install] ok: fairseq', fairseq.__version__, '| mega_fairseq', mega_fairseq.__version__)" 2>&1 | grep -v tensorboardX
