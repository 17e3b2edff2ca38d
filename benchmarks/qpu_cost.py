"""What running the quantum layers on a QPU does to quality, and what it costs per token.

    python benchmarks/qpu_cost.py [--quick] [--prompts 32] [--device fake_torino]
                                  [--json out.json] [--plots DIR] [--export DIR]

The demo model of README command 1 (the tiny Llama pre-trained on addition, its QWTHN adapters
fine-tuned on "23&58=" -> "81"; 4 adapted layers, 4 qubits x 2 layers each) is trained, exported,
and asked the task's held-out prompts (greedy, batched) with its quantum layers run

(a) exactly (the C++ kernel, what the ONNX node computes: the reference);
(b) with shots only (qiskit-aer EstimatorV2 on the logical circuit) at several shot counts;
(c) compiled for an IBM device (qiskit-ibm-runtime's offline fake backend) and run under its
    noise model (qiskit-aer with the fake backend's gate and readout errors on the qubits used),
    raw and with readout-error mitigation;
(d) on Amazon Braket's local simulator through program sets, with shots.

Per configuration: exact-match accuracy on the task, agreement with the exact run's answers,
the first step's logit error against exact (max and median over prompts of the largest
|difference| at the last position), the quantum layers' output error (from every job's record),
and wall time. The cost model (see ``qwthn_onnx.qpu.report``): jobs per batch, circuits and shots
per generated token, and estimated QPU time per token from the device's gate durations plus its
default repetition delay per shot — for the demo circuit and, compiled the same way, for the
paper's 10-qubit, 10-layer circuit on the same number of layers.

stdout is a Markdown report; progress goes to stderr. Run it alone: it times jobs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from system_info import log, machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHOTS = (128, 512, 2048, 8192)
SMOLLM2_LAYERS = 60  # adapted q and v projections of SmolLM2-135M's 30 decoder layers
QUICK_SHOTS = (256, 4096)


def build_demo(work: Path) -> Path:
    """Train the demo (README command 1's qwthn-train) and export it without verification."""
    model = work / "model.pt"
    log("training the demo model (qwthn-train, ~1 min)")
    subprocess.run(
        [str(Path(sys.executable).parent / "qwthn-train"), "-o", str(model), "-q"],
        check=True,
        cwd=work,
    )
    from exporters.export import ExportOptions, export_model

    log("exporting it")
    export_model(model, work / "onnx", ExportOptions(verify=False, qasm=False))
    return work / "onnx"


def configurations(device: str, quick: bool) -> list[dict[str, Any]]:
    shots = QUICK_SHOTS if quick else SHOTS
    configs: list[dict[str, Any]] = [{"label": "exact", "spec": "exact", "shots": None}]
    configs += [{"label": f"shots {s}", "spec": "aer", "shots": s} for s in shots]
    noisy = {"spec": f"aer:{device}", "shots": 2048}
    configs.append({**noisy, "label": f"{device} noisy, 2048 shots"})
    configs.append(
        {
            **noisy,
            "label": f"{device} noisy + readout mitigation, 2048 shots",
            "mitigation": "readout",
        }
    )
    configs.append({"label": "braket local, 2048 shots", "spec": "braket:local", "shots": 2048})
    return configs


def run_config(
    export: Path, config: dict[str, Any], prompts: list[str], answers: list[str], seed: int
) -> dict[str, Any]:
    from qwthn_onnx.qpu.registry import make_backend
    from qwthn_onnx.qpu.report import generation_report
    from qwthn_onnx.runtime.session import QWTHNSession

    backend = make_backend(
        config["spec"], shots=config["shots"], seed=seed, mitigation=config.get("mitigation")
    )
    session = QWTHNSession(export, quantum=backend)
    first_logits: list[np.ndarray] = []
    plain_run = session.run

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = plain_run(feed)
        if not first_logits:
            first_logits.append(out["logits"][:, -1, :].astype(np.float64))
        return out

    session.run = run  # type: ignore[method-assign]
    start = time.perf_counter()
    results = session.generate(prompts, max_new_tokens=4)
    seconds = time.perf_counter() - start
    texts = [r.text for r in results]
    tokens = sum(len(r.token_ids) for r in results)
    report = generation_report(session.session, generated_tokens=tokens)
    return {
        **config,
        "texts": texts,
        "accuracy": sum(t == a for t, a in zip(texts, answers, strict=True)) / len(answers),
        "seconds": seconds,
        "generated_tokens": tokens,
        "first_logits": first_logits[0],
        "report": report,
    }


def cost_model(runs: list[dict[str, Any]], device: str, quick: bool) -> dict[str, Any]:
    """The demo layer as the noisy run compiled it, the paper's circuit compiled the same way
    (not quick), and the device's repetition delay, for the per-token table."""
    from qwthn_onnx.circuit import paper_circuit
    from qwthn_onnx.qpu.registry import make_backend

    noisy = next(run["report"] for run in runs if run["spec"] == f"aer:{device}")
    circuits = {"demo (4 qubits, 2 layers)": noisy["layers"][0]}
    if not quick:
        backend = make_backend(f"aer:{device}", shots=1, noise=False)  # compiles, no noise model
        paper = paper_circuit(10, 10)
        weights = np.random.default_rng(0).uniform(-np.pi, np.pi, paper.n_weights)
        circuits["paper (10 qubits, 10 layers)"] = asdict(backend.prepare("paper", paper, weights))
    keys = ("depth", "two_qubit_gates", "gate_counts", "duration_s", "readout_s")
    return {
        "device": device,
        "rep_delay_s": noisy["rep_delay_s"],
        "circuits": {name: {k: c[k] for k in keys} for name, c in circuits.items()},
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    exact = runs[0]
    rows = []
    for run in runs:
        diff = np.abs(run["first_logits"] - exact["first_logits"]).max(axis=1)
        totals = run["report"]["totals"]
        rows.append(
            {
                "label": run["label"],
                "shots": run["shots"],
                "accuracy": run["accuracy"],
                "agreement": sum(a == b for a, b in zip(run["texts"], exact["texts"], strict=True))
                / len(run["texts"]),
                "logit_error_max": float(diff.max()),
                "logit_error_median": float(np.median(diff)),
                "quantum_error_mean": totals["mean_abs_error"],
                "quantum_error_max": totals["max_abs_error"],
                "jobs": totals["jobs"],
                "circuits": totals["circuits"],
                "circuits_per_token": totals.get("circuits_per_token"),
                "qpu_s_per_token": totals.get("estimated_qpu_s_per_token"),
                "seconds": run["seconds"],
                "generated_tokens": run["generated_tokens"],
            }
        )
    return rows


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    rows = result["rows"]
    cost = result["cost"]
    n = result["prompts"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores. {n} held-out prompts of the demo task, "
        f"batched, greedy, 4 new tokens; simulator seed {result['seed']}.",
        "",
        "| quantum layers run | accuracy | same answer as exact | logit error max / median "
        "| quantum output error mean / max | jobs | circuits per token | est. QPU s per token "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        qpu = "" if r["qpu_s_per_token"] is None else f"{r['qpu_s_per_token']:.2f}"
        lines.append(
            f"| {r['label']} | {r['accuracy']:.0%} | {r['agreement']:.0%} | "
            f"{r['logit_error_max']:.3g} / {r['logit_error_median']:.3g} | "
            f"{r['quantum_error_mean']:.3g} / {r['quantum_error_max']:.3g} | {r['jobs']} | "
            f"{r['circuits_per_token']:.1f} | {qpu} | {r['seconds']:.1f} |"
        )
    exact = rows[0]
    per_token = exact["circuits_per_token"]
    decode = result["decode_circuits_per_token"]
    shots = 2048
    lines += [
        "",
        f"**Cost model** on {cost['device']}: each parameter set runs `shots` times; a shot lasts "
        "the compiled circuit's gate time (critical path through the device's gate durations), "
        f"its readout, and the device's default repetition delay "
        f"({cost['rep_delay_s'] * 1e6:.0f} µs). A batch of {n} prompts needed {exact['jobs']} "
        f"jobs for 4 tokens: {result['rounds']} rounds of layers per step (one decoder layer's "
        "q and v each), one job per round. Counting the prefill, "
        f"{per_token:.1f} circuits (x {shots} shots = {per_token * shots:,.0f} shots) per "
        f"generated token; once decoding, {decode} per token, one per adapted layer.",
        "",
        "| circuit on the device | depth | 2-qubit gates | gates + readout | one shot | QPU s "
        f"per decoded token, demo ({decode} layers) | QPU s per decoded token, SmolLM2-135M "
        f"({SMOLLM2_LAYERS} layers; {SMOLLM2_LAYERS // 2} jobs per token) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cost["circuits"].items():
        if c["duration_s"] is None or c["readout_s"] is None:
            lines.append(f"| {name} | {c['depth']} | {c['two_qubit_gates']} | n/a | | | |")
            continue
        circuit = c["duration_s"] + c["readout_s"]
        per_shot = circuit + cost["rep_delay_s"]
        lines.append(
            f"| {name} | {c['depth']} | {c['two_qubit_gates']} | {circuit * 1e6:.1f} µs | "
            f"{per_shot * 1e6:.0f} µs | {decode * shots * per_shot:.2f} | "
            f"{SMOLLM2_LAYERS * shots * per_shot:.1f} |"
        )
    lines += [
        "",
        "Est. QPU s per token (first table): the whole batch's estimated device time (prefill "
        "included) over its generated tokens, from the compiled layers of that run; the second "
        f"table: per decoded token and prompt at {shots} shots, for the circuit sizes shown. "
        "The repetition delay, not the circuit, dominates a shot. Not modelled: queueing, "
        "and the classical round trip per job (one per decoder layer and step), which a "
        "provider adds on top; batching more prompts into a step adds parameter sets to the "
        "same jobs, not jobs.",
    ]
    return "\n".join(lines)


def write_plots(result: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qwthn_onnx._io import atomic_path

    shot_rows = [r for r in result["rows"] if r["label"].startswith("shots ")]
    others = [r for r in result["rows"] if r["shots"] and not r["label"].startswith("shots ")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [r["shots"] for r in shot_rows]
    for ax, key, title in (
        (axes[0], "accuracy", "held-out exact match"),
        (axes[1], "logit_error_median", "first-step logit error vs exact (median)"),
    ):
        ax.plot(xs, [r[key] for r in shot_rows], "o-", label="shots only (aer)")
        for i, (r, marker) in enumerate(zip(others, "sD^v<>", strict=False)):
            # side by side where several configurations share a shot count
            ax.plot([r["shots"] * 1.08**i], [r[key]], marker, label=r["label"])
        if key == "accuracy":
            ax.axhline(result["rows"][0]["accuracy"], color="k", ls="--", label="exact")
        else:
            ax.set_yscale("log")
        ax.set_xscale("log")
        ticks = sorted({r["shots"] for r in shot_rows + others})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("shots per circuit")
        ax.set_title(title)
        ax.legend(fontsize=8)
    path = directory / "qpu_quality_vs_shots.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, two shot counts")
    parser.add_argument("--prompts", type=int, help="held-out prompts (default 32; quick 8)")
    parser.add_argument("--device", default="fake_torino", help="fake IBM device to emulate")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument(
        "--export", type=Path, help="use this export instead of training the demo (tests)"
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--plots", type=Path, help="write the PNG plots into this directory")
    args = parser.parse_args(argv)
    if args.plots:
        import matplotlib  # noqa: F401 - fail before an hour of work, not after

    from qwthn_onnx.demo import finetune_task

    n = args.prompts or (8 if args.quick else 32)
    _, test = finetune_task()
    prompts, answers = [e.prompt for e in test[:n]], [e.completion for e in test[:n]]
    with tempfile.TemporaryDirectory(prefix="qpu_cost_") as tmp:
        export = args.export or build_demo(Path(tmp))
        runs = []
        for config in configurations(args.device, args.quick):
            log(f"{config['label']}: {n} prompts")
            runs.append(run_config(export, config, prompts, answers, args.seed))
        cost = cost_model(runs, args.device, args.quick)
    exact_report = runs[0]["report"]
    result = {
        "machine": machine_info(),
        "prompts": n,
        "seed": args.seed,
        "rows": summarise(runs),
        "rounds": len(exact_report["rounds"]),
        "decode_circuits_per_token": len(exact_report["layers"]),
        "cost": cost,
        "jobs": {run["label"]: run["report"]["jobs"] for run in runs},
    }
    if args.json:
        from qwthn_onnx._io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2, default=float) + "\n")
    if args.plots:
        write_plots(result, args.plots)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
