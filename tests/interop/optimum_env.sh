#!/usr/bin/env bash
# Creates .venvs/optimum: Hugging Face Optimum (optimum-onnx) with transformers 4.57, which
# cannot share our environment (optimum-onnx 0.1.0 pins transformers<4.58; we run 5.x).
# tests/exporters/test_stock_runtimes.py runs tests/interop/optimum_client.py there, and skips
# those tests when it is absent. .ci/run calls this; ~1.5 min and 1.3 GB (torch is most of it).
# torch goes in first and pinned: the CPU wheel, not pip's default CUDA build (GBs).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venvs/optimum
python=${PYTHON:-python}
# The versions tested together (what `pip install "optimum[onnxruntime]"` resolved, 2026-12).
pins=(torch==2.13.0 "optimum[onnxruntime]==2.1.0" optimum-onnx==0.1.0 transformers==4.57.6)
check='import optimum.onnxruntime, transformers; assert transformers.__version__ == "4.57.6"'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "$venv: ready"
    exit 0
fi
"$python" -m venv --clear "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" "${pins[0]}"
"${pip[@]}" "${pins[@]}"
"$venv/bin/python" -c "$check"
echo "$venv: created (transformers 4.57.6, optimum-onnx 0.1.0)"
