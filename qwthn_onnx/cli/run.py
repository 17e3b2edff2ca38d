"""``qwthn-run``: generate text with an exported model in onnxruntime."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.chat import DataError, Message
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.ops.fallback import FallbackMismatchError
from qwthn_onnx.runtime.export_dir import ExportIntegrityError
from qwthn_onnx.runtime.generation import GenerationError
from qwthn_onnx.runtime.library import LibraryNotFoundError
from qwthn_onnx.runtime.metadata import MetadataError
from qwthn_onnx.runtime.session import QWTHNSession

if TYPE_CHECKING:
    from qwthn_onnx.qpu.backend import JobRecord
from qwthn_onnx.runtime.tokenizer import TokenizerError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-run",
        description="Generate text with a qwthn-export output in onnxruntime (KV cache; the "
        "ai.qwthn kernels when the library is available, else the fallback functions).",
    )
    p.add_argument("model", type=Path, help="export directory or model.onnx")
    p.add_argument("-p", "--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument(
        "--chat",
        action="store_true",
        help="each prompt is a user turn: lay it out with the model's chat template (or the "
        "plain 'User: ...' layout training used without one) and print the assistant's reply",
    )
    p.add_argument("--system", help="with --chat: a system turn before each prompt")
    p.add_argument("-n", "--max-new-tokens", type=int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--top-p", type=float, default=1.0, help="1: off")
    p.add_argument("--seed", type=int, help="seed of the sampler (reproducible output)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--kernels",
        choices=("auto", "on", "off"),
        default="auto",
        help="use the ai.qwthn library: auto (fallbacks with a warning when missing), on, off",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    q = p.add_argument_group(
        "quantum backend",
        "run the adapters' circuits outside onnxruntime, each step's layers as batched jobs "
        "(all but exact need the qpu extra: pip install 'qwthn-onnx[qpu]'; docs/qpu.md)",
    )
    q.add_argument(
        "--quantum-backend",
        metavar="SPEC",
        help="exact | aer | aer:<device> (e.g. aer:fake_torino: compiled for the device, with "
        "its noise) | ibm:<device> | braket:local; an unknown name lists the devices",
    )
    q.add_argument(
        "--shots",
        type=int,
        help="shots per circuit (default: exact expectation values; ibm:<device> needs shots)",
    )
    q.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="aer:<device>: apply the device's noise model (--no-noise: compiled, shots only)",
    )
    q.add_argument(
        "--mitigation",
        choices=("readout",),
        help="readout: calibrate the device's measurement once per set of qubits and undo its "
        "bias in every estimate (aer:<device> or ibm:<device> with --shots)",
    )
    q.add_argument("--quantum-seed", type=int, help="seed of the simulator (reproducible noise)")
    q.add_argument(
        "--quantum-report",
        type=Path,
        metavar="FILE",
        help="write every job (circuits, shots, wall time, error against the exact kernel) and "
        "every layer's compiled form as JSON, once generation has finished",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print the generated text only")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="with --quantum-backend: a line per job"
    )
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.system is not None and not args.chat:
        parser.error("--system needs --chat")
    quantum_only = (
        ("--shots", args.shots),
        ("--mitigation", args.mitigation),
        ("--quantum-report", args.quantum_report),
        ("--quantum-seed", args.quantum_seed),
        ("--no-noise", None if args.noise else False),
        ("--verbose", args.verbose or None),
    )
    for flag, value in quantum_only:
        if value is not None and args.quantum_backend is None:
            parser.error(f"{flag} needs --quantum-backend")
    kernels = {"auto": "auto", "on": True, "off": False}[args.kernels]
    report = args.quantum_report
    if report is not None and (report.is_dir() or not report.parent.is_dir()):
        parser.error(f"--quantum-report {report}: not a file in an existing directory")
    try:
        backend = None
        if args.quantum_backend is not None:
            from qwthn_onnx.qpu.registry import make_backend

            backend = make_backend(
                args.quantum_backend,
                shots=args.shots,
                seed=args.quantum_seed,
                noise=args.noise,
                mitigation=args.mitigation,
            )
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            session = QWTHNSession(
                args.model,
                kernels=kernels,
                threads=args.threads,
                quantum=backend,
                on_job=_print_job if args.verbose and not args.quiet else None,
            )
        session.tokenizer  # noqa: B018 - load it now, so tokens/s measures generation only
        start = time.perf_counter()
        sampling = {
            "do_sample": args.sample,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "seed": args.seed,
            "stop": args.stop,
        }
        if args.chat:
            system = [Message("system", args.system)] if args.system else []
            conversations = [[*system, Message("user", p)] for p in args.prompt]
            results = session.chat(conversations, args.max_new_tokens, **sampling)
        else:
            results = session.generate(args.prompt, args.max_new_tokens, **sampling)
        seconds = time.perf_counter() - start
    except (
        CircuitError,
        DataError,
        ExportIntegrityError,
        FallbackMismatchError,
        FileNotFoundError,
        GenerationError,
        LibraryNotFoundError,
        MetadataError,
        RuntimeError,
        TokenizerError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a long run on a quantum backend is often stopped by hand
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    for prompt, result in zip(args.prompt, results, strict=True):
        print(result.text if args.quiet or args.chat else f"{prompt}{result.text}")
    if backend is not None:
        tokens = sum(len(r.token_ids) for r in results)
        _report_jobs(session, args.quantum_report, args.quiet, tokens)
    if not args.quiet:
        tokens = sum(len(r.token_ids) for r in results)
        runtime = "kernels" if session.kernels else "fallback functions"
        if backend is not None:
            runtime += f", quantum layers on {backend.name}"
        print(
            f"[{tokens} tokens in {seconds:.2f} s, {tokens / max(seconds, 1e-9):.1f} tokens/s, "
            f"onnxruntime with {runtime}; finish: {', '.join(r.finish_reason for r in results)}]",
            file=sys.stderr,
        )
    return 0


def _print_job(job: JobRecord) -> None:
    shots = "exact" if job.shots is None else f"{job.shots} shots"
    error = "" if job.max_abs_error is None else f", max |error| {job.max_abs_error:.3g}"
    print(
        f"[job {job.index}: {len(job.layers)} layer(s), {job.circuits} circuits, {shots}, "
        f"{job.wall_s:.2f} s{error}]",
        file=sys.stderr,
    )


def _report_jobs(session: QWTHNSession, path: Path | None, quiet: bool, tokens: int) -> None:
    """The jobs' totals on stderr and, with ``--quantum-report``, everything as JSON."""
    from qwthn_onnx.qpu.mitigation import ReadoutMitigated
    from qwthn_onnx.qpu.report import generation_report

    report = generation_report(session.session, generated_tokens=tokens)
    if isinstance(session.session.backend, ReadoutMitigated):
        report["mitigation"] = session.session.backend.summary()
    if path is not None:
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    if not quiet:
        totals = report["totals"]
        qpu = totals["estimated_qpu_s"]
        print(
            f"[{totals['jobs']} quantum jobs on {report['backend']}: {totals['circuits']} "
            f"circuits, {totals['wall_s']:.2f} s; max |error| against exact "
            f"{totals['max_abs_error']:.3g}, mean {totals['mean_abs_error']:.3g}"
            + ("" if qpu is None else f"; estimated device time {qpu:.2f} s")
            + "]",
            file=sys.stderr,
        )
        if "mitigation" in report:
            cost = report["mitigation"]
            print(
                f"[{cost['method']} mitigation: calibration {cost['circuits']} circuits, "
                f"{cost['shots']} shots, {cost['wall_s']:.2f} s]",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
