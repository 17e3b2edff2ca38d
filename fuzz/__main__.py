"""``python -m fuzz``: fuzz every parser for as long as you like (the test suite's smoke run gives
each target a few seconds; this is the long run).

    python -m fuzz --list
    python -m fuzz --seconds 600                      # every target, 10 minutes each
    python -m fuzz qasm model_pt --seconds 3600 --workdir runs/fuzz

Targets run one after another. Corpora persist in ``--workdir`` and grow from run to run; a
crash leaves its reproducer there, is named in the summary, and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fuzz import native, python_targets
from fuzz.common import FuzzResult, FuzzSetupError
from qwthn_onnx._io import atomic_write_text

Runner = Callable[..., FuzzResult]  # (name, seconds, workdir, *, seed) -> result


def targets() -> dict[str, tuple[str, str, Runner]]:
    """Every target: name -> (engine, description, run)."""
    found: dict[str, tuple[str, str, Runner]] = {}
    for name, text in python_targets.PYTHON_TARGETS.items():
        found[name] = ("atheris", text, python_targets.run)
    for name, text in native.NATIVE_TARGETS.items():
        found[name] = ("libfuzzer", text, native.run)
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fuzz",
        description="Coverage-guided fuzzing of qwthn-onnx's parsers (atheris for Python, "
        "libFuzzer with ASan+UBSan for the C++ attribute and shape decoding).",
    )
    p.add_argument("targets", nargs="*", help="targets to run (default: all; see --list)")
    p.add_argument("--seconds", type=float, default=300.0, help="per target (default: 300)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/fuzz"),
        help="corpora, cached seeds and reproducers, kept between runs (default: runs/fuzz)",
    )
    p.add_argument("--seed", type=int, help="libFuzzer's random seed (default: its own pick)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = targets()
    console = Console(highlight=False, soft_wrap=True)
    if args.list:
        for name, (engine, text, _) in known.items():
            console.print(f"{name:18} {engine:9} {text}")
        return 0
    unknown = sorted(set(args.targets) - set(known))
    if unknown:
        console.print(f"error: unknown targets {unknown}; see python -m fuzz --list")
        return 2
    if args.seconds <= 0:
        console.print("error: --seconds must be positive")
        return 2
    chosen = args.targets or list(known)
    results: list[FuzzResult] = []
    setup_errors: dict[str, str] = {}
    for name in chosen:
        engine, _, run = known[name]
        console.print(f"fuzzing {name} ({engine}) for {args.seconds:g} s ...")
        try:
            results.append(run(name, args.seconds, args.workdir.resolve() / engine, seed=args.seed))
        except FuzzSetupError as e:
            setup_errors[name] = str(e)
            console.print(f"[red]cannot run {name}[/]: {e}")
    _summary(console, results, setup_errors)
    if args.json:
        report = {
            "seconds_per_target": args.seconds,
            "results": [_as_dict(r) for r in results],
            "setup_errors": setup_errors,
        }
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if any(r.crashed for r in results):
        return 1
    return 2 if setup_errors else 0


def _summary(console: Console, results: list[FuzzResult], setup_errors: dict[str, str]) -> None:
    table = Table("target", "engine", "seconds", "executions", "exec/s", "result")
    for r in results:
        found = ", ".join(map(str, r.crash_files)) or "no reproducer: the child died, see below"
        verdict = f"[red]CRASH[/] {found}" if r.crashed else "ok"
        rate = r.executions / r.seconds if r.seconds > 0 else 0.0
        table.add_row(
            r.target, r.engine, f"{r.seconds:.0f}", f"{r.executions:,}", f"{rate:,.0f}", verdict
        )
    for name in setup_errors:
        table.add_row(name, "", "", "", "", "[red]not run[/] (setup)")
    console.print(table)
    for r in results:
        if r.crashed:
            console.print(f"--- {r.target}: the engine's last words ---\n{r.log[-3000:]}")


def _as_dict(result: FuzzResult) -> dict[str, object]:
    return {
        "target": result.target,
        "engine": result.engine,
        "seconds": round(result.seconds, 2),
        "executions": result.executions,
        "crashed": result.crashed,
        "crash_files": [str(p) for p in result.crash_files],
    }


if __name__ == "__main__":
    sys.exit(main())
