"""Kill ``qwthn-train`` and ``qwthn-export`` at random points: every earlier output stays intact,
and no partial output ever stands where an output belongs.

Each CLI first writes its outputs once; a second run (another seed, so new outputs differ) is
then killed — SIGKILL at seeded random times, SIGKILL the moment a temporary output appears,
and SIGTERM (which our CLIs turn into a clean unwind). After each kill every output is either
byte-for-byte the earlier one or a complete new one; SIGTERM leaves no temporary behind, and
the SIGKILL leftovers (hidden ``.<name>.partial-<pid>-*`` entries) are removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import load_file

from qwthn_onnx.adapter import QWTHNConfig
from qwthn_onnx.adapter.model import ADAPTER_WEIGHTS_NAME
from qwthn_onnx.checkpoint import load_model_pt

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)

TRAIN_ARGS = ["-q", "--pretrain-steps", "30", "--steps", "30"]
TRAIN_ARGS += ["--train-examples", "64", "--test-examples", "8"]
KILL_SEED = 20261124  # the random kill times are reproducible
RANDOM_KILLS = 3


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _cli(name: str) -> list[str]:
    return [str(Path(sys.executable).parent / name)]


def _run(args: list[str], cwd: Path) -> float:
    """Run a CLI to completion; its duration spreads the random kill times."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def _kill(args: list[str], cwd: Path, sig: signal.Signals, when: float | None) -> tuple[int, int]:
    """Start the CLI and send ``sig`` after ``when`` seconds, or (``None``) as soon as a
    temporary output appears in ``cwd``; returns its pid and exit status (0: finished first)."""
    child = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if when is None:
        while child.poll() is None and not any(cwd.glob(".*.partial-*")):
            time.sleep(0.005)
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(when)
    if child.poll() is None:
        child.send_signal(sig)
    _, stderr = child.communicate()
    # SIGTERM: 130 after a clean unwind; -15 when it came before the CLI set its handler (still
    # importing, nothing written yet)
    expected = (0, 130, -signal.SIGTERM) if sig == signal.SIGTERM else (0, -signal.SIGKILL)
    assert child.returncode in expected, f"{sig!r}: status {child.returncode}: {stderr[-2000:]!r}"
    return child.pid, child.returncode


def _partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


def _interrupt_at_random_points(
    args: list[str], cwd: Path, outputs: dict[str, Callable[[Path], None] | None], duration: float
) -> None:
    """Kill ``args`` at many points; after every kill each output is its earlier self or passes
    its completeness check (``None``: an input, which must never change)."""
    earlier = {name: _state(cwd / name) for name in outputs}
    rng = random.Random(KILL_SEED)
    plan = [(signal.SIGKILL, rng.uniform(0.2, duration)) for _ in range(RANDOM_KILLS)]
    plan += [(signal.SIGKILL, None), (signal.SIGTERM, rng.uniform(0.2, duration))]
    plan += [(signal.SIGTERM, None)]
    for sig, when in plan:
        pid, _ = _kill(args, cwd, sig, when)
        for name, complete in outputs.items():
            if _state(cwd / name) != earlier[name]:
                assert complete is not None, f"{name} changed ({sig!r}, {when=})"
                complete(cwd)
        entries = {p.name for p in cwd.iterdir()} - set(outputs)
        assert all(".partial-" in e for e in entries), f"unexpected files after {sig!r}: {entries}"
        if sig == signal.SIGTERM:  # cleans up after itself; a SIGKILLed run cannot
            own = [e for e in entries if f".partial-{pid}-" in e]
            assert not own, f"SIGTERM ({when=}) left temporaries: {own}"
    _run(args, cwd)
    assert not _partials(cwd), "the next run removes what killed runs left"
    for complete in outputs.values():
        if complete is not None:
            complete(cwd)


def _state(path: Path) -> dict[str, bytes] | bytes:
    return _snapshot(path) if path.is_dir() else path.read_bytes()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, float]:
    """A directory holding model.pt and adapter/ from a first, complete qwthn-train run."""
    directory = tmp_path_factory.mktemp("trained")
    duration = _run([*_cli("qwthn-train"), *TRAIN_ARGS, "-o", "model.pt", "--adapter-dir",
                     "adapter"], directory)  # fmt: skip
    return directory, duration


def _complete_model_pt(cwd: Path) -> None:
    load_model_pt(cwd / "model.pt")


def _complete_adapter(cwd: Path) -> None:
    """A new adapter directory is written after model.pt: its config and weights are both
    model.pt's (never new weights beside an old config)."""
    model = load_model_pt(cwd / "model.pt").model
    assert QWTHNConfig.load(cwd / "adapter") == model.qwthn_config
    weights = load_file(cwd / "adapter" / ADAPTER_WEIGHTS_NAME)
    expected = model.adapter_state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_killed_training_keeps_the_earlier_outputs(trained, tmp_path):
    source, duration = trained
    shutil.copy2(source / "model.pt", tmp_path / "model.pt")
    shutil.copytree(source / "adapter", tmp_path / "adapter")
    args = [*_cli("qwthn-train"), *TRAIN_ARGS, "--seed", "1", "-o", "model.pt"]
    args += ["--adapter-dir", "adapter"]
    outputs = {"model.pt": _complete_model_pt, "adapter": _complete_adapter}
    _interrupt_at_random_points(args, tmp_path, outputs, duration)
    assert (tmp_path / "model.pt").read_bytes() != (source / "model.pt").read_bytes()


def _complete_export(cwd: Path) -> None:
    """Every file the manifest lists is there with its checksum, and the model passes the ONNX
    checker."""
    files = _snapshot(cwd / "onnx")
    manifest = json.loads(files["manifest.json"])
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"], name
    onnx.checker.check_model(str(cwd / "onnx" / "model.onnx"))


def test_killed_export_keeps_the_earlier_export(trained, tmp_path):
    source, _ = trained
    shutil.copy2(source / "model.pt", tmp_path / "first.pt")
    duration = _run([*_cli("qwthn-export"), "first.pt", "-o", "onnx"], tmp_path)
    _run([*_cli("qwthn-train"), *TRAIN_ARGS, "--seed", "2", "-o", "second.pt"], tmp_path)
    args = [*_cli("qwthn-export"), "second.pt", "-o", "onnx"]
    outputs = {"first.pt": None, "second.pt": None, "onnx": _complete_export}
    _interrupt_at_random_points(args, tmp_path, outputs, duration)
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert Path(manifest["source"]["path"]).name == "second.pt"
