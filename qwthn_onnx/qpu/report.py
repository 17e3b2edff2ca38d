"""What running the quantum layers on a backend took, and what it would cost on the device.

The cost model, per job: every parameter set (one (prompt, token) row of one layer) runs
``shots`` times, and each shot takes the compiled circuit's gate time (from the device's gate
durations: :attr:`~qwthn_onnx.qpu.backend.LayerReport.duration_s`), its readout
(``readout_s``) and the repetition delay the device waits between shots
(:attr:`~qwthn_onnx.qpu.backend.QuantumBackend.rep_delay_s`, the device's default); a caller
may give its own per-shot overhead instead of readout + delay. It leaves out queueing,
compilation, calibration jobs and the classical round trip between jobs, which a real provider
adds per job; ``jobs`` says how many round trips a generation needs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from qwthn_onnx.qpu.backend import JobRecord
from qwthn_onnx.qpu.offload import OffloadSession

__all__ = ["estimated_qpu_seconds", "generation_report"]


def estimated_qpu_seconds(
    session: OffloadSession, job: JobRecord, shot_overhead_s: float | None = None
) -> float | None:
    """Device time of ``job``'s shots by the cost model above; None without shots or durations.

    ``shot_overhead_s`` None: each layer's readout plus the device's repetition delay."""
    if job.shots is None:
        return None
    total = 0.0
    for layer, rows in zip(job.layers, job.rows, strict=True):
        report = session.backend.reports[layer]
        if report.duration_s is None:
            return None
        overhead = shot_overhead_s
        if overhead is None:
            overhead = (report.readout_s or 0.0) + (session.backend.rep_delay_s or 0.0)
        total += rows * job.shots * (report.duration_s + overhead)
    return total


def generation_report(
    session: OffloadSession,
    *,
    generated_tokens: int | None = None,
    shot_overhead_s: float | None = None,
) -> dict[str, Any]:
    """Jobs, per-layer compiled forms and totals of everything ``session`` has run so far."""
    jobs = session.jobs
    circuits = sum(j.circuits for j in jobs)
    errors = [
        (j.max_abs_error, j.mean_abs_error, j.circuits) for j in jobs if j.max_abs_error is not None
    ]
    qpu = [estimated_qpu_seconds(session, j, shot_overhead_s) for j in jobs]
    totals: dict[str, Any] = {
        "jobs": len(jobs),
        "circuits": circuits,
        "shots": None if session.backend.shots is None else circuits * session.backend.shots,
        "wall_s": sum(j.wall_s for j in jobs),
        "max_abs_error": max((e[0] for e in errors), default=0.0),
        "mean_abs_error": (
            sum(e[1] * e[2] for e in errors) / sum(e[2] for e in errors) if errors else 0.0
        ),
        "estimated_qpu_s": None if any(q is None for q in qpu) else sum(qpu),
    }
    if generated_tokens:
        totals["circuits_per_token"] = circuits / generated_tokens
        totals["jobs_per_token"] = len(jobs) / generated_tokens
        if totals["estimated_qpu_s"] is not None:
            totals["estimated_qpu_s_per_token"] = totals["estimated_qpu_s"] / generated_tokens
    return {
        "backend": session.backend.name,
        "shots": session.backend.shots,
        "shot_overhead_s": shot_overhead_s,
        "rep_delay_s": session.backend.rep_delay_s,
        "rounds": [[q.layer for q in nodes] for nodes in session.rounds],
        "layers": [asdict(session.backend.reports[q.layer]) for q in session.quantum_nodes],
        "jobs": [j.as_dict() for j in jobs],
        "totals": totals,
    }
