"""benchmarks/qpu_cost.py on a tiny export: every configuration runs, the report and JSON hold
every column, and the numbers behave (exact is exact, more shots and less noise, less error)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.exporters.conftest import make_model_pt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import qpu_cost


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from exporters import ExportOptions, export_model

    root = tmp_path_factory.mktemp("qpu_cost")
    path, _ = make_model_pt(root / "model.pt", n_qubits=4, n_layers=2)
    export_model(path, root / "onnx", ExportOptions(verify=False))
    return root / "onnx"


def test_quick_run_on_a_tiny_export(export, tmp_path, capsys):
    out = tmp_path / "qpu.json"
    argv = ["--quick", "--prompts", "3", "--export", str(export), "--json", str(out)]
    with_plots = importlib.util.find_spec("matplotlib") is not None
    qpu_cost.main(argv + (["--plots", str(tmp_path)] if with_plots else []))
    report = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == [
        "exact",
        "shots 256",
        "shots 4096",
        "fake_torino noisy, 2048 shots",
        "fake_torino noisy + readout mitigation, 2048 shots",
        "braket local, 2048 shots",
    ]
    exact = rows["exact"]
    assert exact["logit_error_max"] == 0 and exact["agreement"] == 1
    # every configuration ran the same generation structure: 2 rounds per step
    assert len({r["jobs"] for r in rows.values()}) == 1 and exact["jobs"] % 2 == 0
    assert result["decode_circuits_per_token"] == 4 and result["rounds"] == 2
    assert 0 < rows["shots 4096"]["quantum_error_mean"] < rows["shots 256"]["quantum_error_mean"]
    noisy = rows["fake_torino noisy, 2048 shots"]
    assert noisy["quantum_error_mean"] > rows["shots 4096"]["quantum_error_mean"]
    demo = result["cost"]["circuits"]["demo (4 qubits, 2 layers)"]
    assert demo["two_qubit_gates"] > 0 and demo["duration_s"] > 0 and demo["readout_s"] > 0
    assert result["cost"]["rep_delay_s"] > 0
    assert "**Cost model** on fake_torino" in report and "| exact | " in report
    if with_plots:
        assert (tmp_path / "qpu_quality_vs_shots.png").stat().st_size > 10_000
