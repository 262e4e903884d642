#!/usr/bin/env bash
# GPU acceptance in one command (also `make gpu-check`): CUDA test sweep, `cnn-gpu check --device cuda
# --thorough`, `cnn-gpu kernels`, `cnn-gpu bench --shapes resnet` (measured, with the roofline model's
# estimate of this GPU beside it: device model:gpu), a short `cnn-gpu train --device cuda`, and one
# markdown report. Needs no network: it uses the first Python among $PYTHON, .venv/bin/python
# and python3 that imports CuPy (any CUDA 12 or 13 build), with this checkout on its path.
# Arguments go to `python -m cnn_gpu.acceptance` (--out DIR, --quick). Exit: 0 pass, 1 fail, 2 no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

candidates=()
if [ -n "${PYTHON:-}" ]; then candidates+=("$PYTHON"); fi
if [ -x .venv/bin/python ]; then candidates+=(.venv/bin/python); fi
candidates+=(python3)

python=""
for candidate in "${candidates[@]}"; do
    if "$candidate" -c "import cupy" >/dev/null 2>&1; then
        python=$candidate
        break
    fi
done
# None imports CuPy: run the first anyway so it explains what is missing.
python=${python:-${candidates[0]}}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m cnn_gpu.acceptance "$@"
