#!/usr/bin/env bash
# The benchmarks' own dependencies: wrk, the HTTP load generator of benchmarks/serving_speed.py
# (Debian's package), and a virtual env with the peer simulators that
# benchmarks/kernel_speed.py compares against.
# Peers are not dependencies of qwthn_onnx and some of them pin things our package does not
# want (qiskit, numpy), so they live in their own env: benchmarks/.venvs/peers.
#
#   bash benchmarks/setup_peers.sh [python]     # default python: python3
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venvs/peers"
python="${1:-python3}"

if ! command -v wrk >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y --no-install-recommends wrk
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
# torch first and pinned exactly: it resolves to the local CPU wheel; an unpinned torch (or one
# pulled in by pennylane) would download GBs of CUDA libraries.
"$venv/bin/python" -m pip install torch==2.13.0
"$venv/bin/python" -m pip install pennylane pennylane-lightning qiskit qiskit-aer numpy
"$venv/bin/python" - <<'PY'
from importlib.metadata import version

for name in ("torch", "pennylane", "pennylane_lightning", "qiskit", "qiskit-aer", "numpy"):
    print(f"{name} {version(name)}")
PY
echo "peer env ready: $venv"
