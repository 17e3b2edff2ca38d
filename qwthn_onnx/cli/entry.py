"""The console scripts' entry points: check that the command's extra is installed, then run it.

The base install is the deploy runtime only (see pyproject.toml), so ``qwthn-train`` on a deploy
host would otherwise die in an import traceback; this says which extra to install instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

__all__ = ["export", "import_", "qasm", "run", "serve", "train", "verify"]

# The extras and the modules whose absence means the extra is not installed.
_EXTRAS = {
    "train": ("torch", "transformers", "qiskit", "onnxscript", "openqasm3"),
    "serve": ("fastapi", "uvicorn", "prometheus_client", "orjson"),
}


def _launch(command: str, extra: str | None, target: str) -> int:
    if extra is not None:
        missing = [m for m in _EXTRAS[extra] if importlib.util.find_spec(m) is None]
        if missing:
            print(
                f"error: {command} needs the '{extra}' extra ({', '.join(missing)} not "
                f"installed); install it with: pip install 'qwthn-onnx[{extra}]'",
                file=sys.stderr,
            )
            return 2
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)()


def train() -> int:
    return _launch("qwthn-train", "train", "qwthn_onnx.cli.train:main")


def export() -> int:
    return _launch("qwthn-export", "train", "exporters.cli:export_main")


def import_() -> int:
    return _launch("qwthn-import", "train", "exporters.cli:import_main")


def qasm() -> int:
    return _launch("qwthn-qasm", "train", "exporters.cli:qasm_main")


def verify() -> int:
    return _launch("qwthn-verify", "train", "exporters.cli:verify_main")


def run() -> int:
    return _launch("qwthn-run", None, "qwthn_onnx.cli.run:main")


def serve() -> int:
    return _launch("qwthn-serve", "serve", "serving.cli:main")
