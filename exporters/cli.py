"""``qwthn-export`` and ``qwthn-import``: the command lines of the exporters."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from pathlib import Path

from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table

from exporters.crosscheck import crosscheck
from exporters.export import ExportOptions, ExportResult, export_model
from exporters.hardware import run_job, write_job
from exporters.onnx_export import DEFAULT_OPSET, DTYPES, MAX_OPSET, MIN_OPSET, ExportError
from exporters.onnx_import import ImportError_, import_onnx
from exporters.qasm import DEFAULT_DIALECT, DIALECTS, QasmError, qasm3_to_circuit
from exporters.triton import (
    KSERVE_MODEL_ROOT,
    TRITON_MODEL_ROOT,
    TritonEntry,
    TritonOptions,
    TritonRepoError,
    check_target,
    write_model_entry,
)
from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.adapter import AdapterError, ConfigError
from qwthn_onnx.checkpoint import (
    ModelFileError,
    check_output_file,
    load_model_pt,
    save_model_pt,
)
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.mpo import MPOError
from qwthn_onnx.qpu.compile_cli import add_compile_command, run_compile
from qwthn_onnx.runtime.export_dir import ExportIntegrityError
from qwthn_onnx.runtime.metadata import MetadataError

USER_ERRORS = (
    AdapterError,
    CircuitError,
    ConfigError,
    ExportError,
    ExportIntegrityError,
    FileNotFoundError,  # a model, program or job path that does not exist
    ImportError_,
    MetadataError,
    ModelFileError,
    MPOError,
    QasmError,
    TritonRepoError,
)

_DIALECT_HELP = (
    f"OpenQASM 3 form of the programs (default {DEFAULT_DIALECT}: runs exactly in qiskit, "
    "Amazon Braket's LocalSimulator and PennyLane; qiskit: stdgates.inc; braket: Braket's gate "
    "names; pennylane: PennyLane's; see docs/qpu.md)"
)


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-export",
        description="Export a QWTHN model.pt to ONNX (ai.qwthn custom ops with standard-op "
        "fallbacks, KV cache), verify it against PyTorch in onnxruntime, and write it atomically.",
    )
    p.add_argument(
        "model",
        type=Path,
        nargs="?",
        help="model.pt written by qwthn-train / save_model_pt (leave out with --from-export)",
    )
    p.add_argument(
        "-o", "--output", type=Path, help="output directory (default: <model>_onnx beside it)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"default-domain opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="dtype of the base weights; adapters always compute in float32",
    )
    p.add_argument(
        "--no-fallback",
        dest="fallback",
        action="store_false",
        help="do not attach the standard-op fallback functions (the model then needs the "
        "ai.qwthn library to run)",
    )
    p.add_argument(
        "--no-op-library",
        dest="op_library",
        action="store_false",
        help="do not copy the ai.qwthn op library into the export (onnxruntime-genai and "
        "Optimum then run the fallback functions; see docs/stock-runtimes.md)",
    )
    p.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store weights in model.onnx.data (default: when they exceed 64 MiB)",
    )
    q = p.add_argument_group("OpenQASM 3")
    q.add_argument(
        "--qasm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write qasm/<layer>.qasm, one program per adapted layer (default: on)",
    )
    q.add_argument(
        "--qasm-weights-as-inputs",
        action="store_true",
        help="declare the trained weights as `input float[64] theta_j` too (values in "
        "qasm/index.json) instead of writing them as literals only",
    )
    q.add_argument(
        "--qasm-dialect",
        choices=DIALECTS,
        default=DEFAULT_DIALECT,
        help=_DIALECT_HELP,
    )
    v = p.add_argument_group("verification")
    v.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the comparison with PyTorch"
    )
    v.add_argument(
        "--atol",
        type=float,
        help="absolute part of the bound on each output's error (default 1e-4; float16: 5e-2)",
    )
    v.add_argument(
        "--rtol",
        type=float,
        help="part of the bound relative to the output's largest magnitude in PyTorch "
        "(default 1e-3; float16: 2e-2)",
    )
    t = p.add_argument_group(
        "Triton / KServe model repository",
        "Also write the export as REPO/<name>/config.pbtxt + REPO/<name>/<version>/ (the export "
        "and the op library), atomically; see docs/triton-kserve.md",
    )
    t.add_argument(
        "--triton-repo", type=Path, metavar="REPO", help="model repository to write the model into"
    )
    t.add_argument(
        "--from-export",
        type=Path,
        metavar="DIR",
        help="put this existing qwthn-export output into --triton-repo instead of exporting",
    )
    t.add_argument(
        "--triton-model-name", metavar="NAME", help="(default: the export directory's name)"
    )
    t.add_argument(
        "--triton-model-version", type=int, metavar="N", help="version directory (default 1)"
    )
    t.add_argument(
        "--triton-max-batch-size",
        type=int,
        metavar="N",
        help="Triton's max_batch_size, with dynamic batching; 0: no batching (default 8)",
    )
    t.add_argument(
        "--triton-max-queue-delay-us",
        type=int,
        metavar="US",
        help="dynamic batching's max_queue_delay_microseconds (default 0)",
    )
    t.add_argument(
        "--triton-instances", type=int, metavar="N", help="CPU model instances (default 1)"
    )
    t.add_argument(
        "--triton-model-root",
        metavar="PATH",
        help="the repository's path inside the server's container, which op_library_filename "
        f"starts with (default {TRITON_MODEL_ROOT}; KServe: {KSERVE_MODEL_ROOT})",
    )
    t.add_argument(
        "--triton-replace",
        action="store_true",
        help="replace REPO/<name> if it exists (all its versions); otherwise that is an error",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    out.add_argument("-v", "--verbose", action="store_true", help="print every check")
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    return p


def _summary(result: ExportResult, verbose: bool) -> list[Table]:
    files = Table(title=f"qwthn-export: {result.directory}")
    files.add_column("file")
    files.add_column("size", justify="right")
    for name, size in result.files.items():
        files.add_row(name, f"{size / 2**20:.2f} MiB" if size > 2**20 else f"{size:,} B")
    tables = [files]
    report = result.verification
    if report is not None:
        checks = Table(
            title=f"verification against PyTorch (bound: atol {report.atol} + rtol {report.rtol}"
            " x the output's largest magnitude)"
        )
        for column in ("runtime", "case", "output", "max abs error", "bound", "tokens", ""):
            checks.add_column(
                column, justify="right" if column in ("max abs error", "bound") else "left"
            )
        rows = (
            report.checks
            if verbose
            else [
                report.worst(r, output) for r in report.runtimes for output in ("logits", "present")
            ]
        )
        for c in rows:
            tokens = ""
            if c.output == "logits":
                tokens = f"{c.positions - c.flips}/{c.positions} agree"
            checks.add_row(
                c.runtime,
                c.case,
                c.output,
                f"{c.max_abs_error:.2e}",
                f"{c.bound:.2e}",
                tokens,
                "ok" if c.passed else "FAIL",
            )
        for runtime in report.runtimes:
            runs = [g for g in report.generation if g.runtime == runtime]
            same = sum(g.diverged_at is None for g in runs)
            checks.add_row(
                runtime,
                f"greedy generation, {len(runs)} prompts",
                "tokens",
                "",
                "",
                f"{same}/{len(runs)} identical",
                "ok" if all(g.passed for g in runs) else "FAIL",
            )
        tables.append(checks)
    return tables


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the atomic directory, which removes its temp dir


_NOT_EXPORT_OPTIONS = {"help", "version", "model", "quiet", "verbose", "from_export"}


def _triton_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> TritonOptions | None:
    """The --triton-* options as TritonOptions (None without --triton-repo); misuse exits 2."""
    given = {
        a.dest: a.option_strings[0]
        for a in parser._actions
        if a.dest.startswith("triton_") and getattr(args, a.dest) not in (None, False)
    }
    if args.model is not None and args.from_export is not None:
        parser.error("give model.pt to export or --from-export DIR, not both")
    if args.model is None and args.from_export is None:
        parser.error("give model.pt to export (or --from-export DIR with --triton-repo REPO)")
    if args.triton_repo is None:
        if args.from_export is not None:
            parser.error("--from-export needs --triton-repo REPO, the repository to put it in")
        if given:
            parser.error(f"{next(iter(given.values()))} needs --triton-repo REPO")
        return None
    if args.from_export is not None:
        for a in parser._actions:
            if a.dest in _NOT_EXPORT_OPTIONS or a.dest.startswith("triton_"):
                continue
            if getattr(args, a.dest) != a.default:
                parser.error(
                    f"{a.option_strings[0]} is an export option; --from-export DIR is put into "
                    "the repository as it is (export again to change it)"
                )
    fields = {
        "model_name": args.triton_model_name,
        "version": args.triton_model_version,
        "max_batch_size": args.triton_max_batch_size,
        "max_queue_delay_us": args.triton_max_queue_delay_us,
        "instances": args.triton_instances,
        "model_root": args.triton_model_root,
    }
    return TritonOptions(
        args.triton_repo,
        replace=args.triton_replace,
        **{k: v for k, v in fields.items() if v is not None},
    )


def _write_triton(console: Console, export: Path, options: TritonOptions) -> TritonEntry:
    entry = write_model_entry(export, options)
    console.print(
        f"wrote Triton model '{entry.name}' version {entry.version} to {entry.model_dir}/ "
        f"(config.pbtxt; the op library as {entry.op_library_filename} in the server's "
        f"container: tritonserver --model-repository={options.model_root})"
    )
    return entry


def export_main(argv: list[str] | None = None) -> int:
    parser = build_export_parser()
    args = parser.parse_args(argv)
    triton = _triton_options(parser, args)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    width = shutil.get_terminal_size((120, 24)).columns  # rich assumes 80 when piped
    console = Console(quiet=args.quiet, highlight=False, soft_wrap=True, width=width)
    if args.from_export is not None:
        assert triton is not None
        try:
            _write_triton(console, args.from_export, triton)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: {triton.repository} was not changed", file=sys.stderr)
            return 130
        return 0
    output = args.output or args.model.with_name(args.model.stem + "_onnx")
    options = ExportOptions(
        opset=args.opset,
        fallback=args.fallback,
        dtype=args.dtype,
        verify=args.verify,
        atol=args.atol,
        rtol=args.rtol,
        external_data=args.external_data,
        qasm=args.qasm,
        qasm_weights_as_inputs=args.qasm_weights_as_inputs,
        qasm_dialect=args.qasm_dialect,
        op_library=args.op_library,
    )
    try:
        if triton is not None:  # before the export: a bad name or target fails in a second
            check_target(triton, triton.model_name or output.resolve().name)
        with console.status("starting") as status:
            result = export_model(
                args.model, output, options, progress=lambda step: status.update(f"{step}...")
            )
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {output} was not changed", file=sys.stderr)
        return 130
    for table in _summary(result, args.verbose):
        console.print(table)
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"exported {len(result.adapted_layers)} adapted layers to {output}/ ({steps})")
    if triton is not None:
        try:
            _write_triton(console, output, triton)
        except USER_ERRORS as e:
            print(
                f"error: {e} (the export in {output} is complete: retry with --from-export "
                f"{output})",
                file=sys.stderr,
            )
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: {triton.repository} was not changed", file=sys.stderr)
            return 130
    return 0


def build_import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-import",
        description="Rebuild a trainable model.pt (base, adapters, configs, tokenizer) from a "
        "model.onnx written by qwthn-export, using only that file.",
    )
    p.add_argument("model", type=Path, help="model.onnx, or a qwthn-export output directory")
    p.add_argument("-o", "--output", type=Path, default=Path("model.pt"), help="model.pt to write")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    return p


def import_main(argv: list[str] | None = None) -> int:
    args = build_import_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    console = Console(quiet=args.quiet, highlight=False, soft_wrap=True)
    try:
        check_output_file(args.output)
        loaded = import_onnx(args.model)
        save_model_pt(args.output, loaded.model, loaded.tokenizer, loaded.training)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.output} was not changed", file=sys.stderr)
        return 130
    model = loaded.model
    console.print(
        f"imported {type(model.base_model).__name__} with {len(model.adapted_modules)} adapted "
        f"layers ({model.trainable_parameters():,} trainable parameters); wrote {args.output}"
    )
    return 0


def build_qasm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-qasm",
        description="The quantum part of a forward pass as a QPU job: bound OpenQASM programs "
        "for a prompt, their execution with shots on a qiskit backend, and what each layer "
        "becomes when compiled for a device.",
    )
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="write the bound programs of a prompt's forward pass")
    job.add_argument("model", type=Path, help="qwthn-export output directory or model.onnx")
    job.add_argument("-p", "--prompt", required=True)
    job.add_argument("-o", "--output", type=Path, required=True, help="job directory to write")
    job.add_argument(
        "--qasm2", action="store_true", help="also write OpenQASM 2 lowered to --basis"
    )
    job.add_argument(
        "--basis",
        default="rz,sx,x,cx",
        help="comma-separated basis gates for --qasm2 (default rz,sx,x,cx)",
    )
    job.add_argument("--dialect", choices=DIALECTS, default=DEFAULT_DIALECT, help=_DIALECT_HELP)
    load = sub.add_parser(
        "load", help="put a program (edited or optimised elsewhere) into a layer of a model.pt"
    )
    load.add_argument("model", type=Path, help="model.pt to read")
    load.add_argument("program", type=Path, help="OpenQASM 3 program for the layer")
    load.add_argument(
        "--layer", required=True, help="adapted module, e.g. model.layers.0.self_attn.q_proj"
    )
    load.add_argument("-o", "--output", type=Path, required=True, help="model.pt to write")
    run = sub.add_parser("run", help="run a job's programs with shots and compare")
    run.add_argument("job", type=Path, help="directory written by `qwthn-qasm job`")
    run.add_argument("--shots", type=int, default=4000)
    run.add_argument("--backend", choices=("basic", "aer"), default="basic")
    run.add_argument("--seed", type=int, default=0)
    add_compile_command(sub)
    return p


def qasm_main(argv: list[str] | None = None) -> int:
    args = build_qasm_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        if args.command == "load":
            check_output_file(args.output)
            loaded = load_model_pt(args.model)
            layer = loaded.model.adapter_layers().get(args.layer)
            n_inputs = layer.qwthn.qnn.circuit.n_inputs if layer is not None else None
            try:
                text = args.program.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise QasmError(
                    f"{args.program} is not UTF-8 text ({e}); give an OpenQASM 3 program file"
                ) from e
            circuit = qasm3_to_circuit(text, n_inputs=n_inputs)
            loaded.model.replace_circuit(args.layer, circuit)
            save_model_pt(args.output, loaded.model, loaded.tokenizer, loaded.training)
            console.print(
                f"{args.layer} now runs {args.program} ({circuit.n_qubits} qubits, "
                f"{len(circuit.gates)} gates, {circuit.n_weights} trainable weights); "
                f"wrote {args.output}"
            )
        elif args.command == "job":
            basis = tuple(b.strip() for b in args.basis.split(",") if b.strip())
            index = write_job(args.model, args.prompt, args.output, args.qasm2, basis, args.dialect)
            layers = len({p["layer"] for p in index["programs"]})
            console.print(
                f"wrote {len(index['programs'])} programs ({layers} layers x "
                f"{len(index['tokens'])} tokens) and job.json to {args.output}/"
            )
        elif args.command == "compile":
            return run_compile(args)
        else:
            summary = run_job(args.job, args.shots, args.backend, args.seed)
            verdict = "all within 5 standard errors" if summary["within_5_stderr"] else "OUTSIDE"
            console.print(
                f"ran {summary['programs']} programs x {args.shots} shots on {args.backend}: "
                f"max |estimate - kernel| = {summary['max_z']:.2f} standard errors ({verdict}); "
                f"wrote {args.job}/results.json"
            )
            return 0 if summary["within_5_stderr"] else 1
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-verify",
        description="Check an export face against face: PyTorch simulator, ONNX kernel and "
        "fallback, OpenQASM 3 (exact and with shots), and the whole model imported back.",
    )
    p.add_argument("model", type=Path, help="qwthn-export output directory")
    p.add_argument("--samples", type=int, default=8, help="random angle vectors per layer")
    p.add_argument("--shots", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("--version", action="version", version=f"qwthn-onnx {__version__}")
    return p


def verify_main(argv: list[str] | None = None) -> int:
    args = build_verify_parser().parse_args(argv)
    width = shutil.get_terminal_size((120, 24)).columns
    console = Console(highlight=False, soft_wrap=True, width=width)
    try:
        report = crosscheck(args.model, args.samples, args.shots, args.seed)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DecodeError as e:  # crosscheck parses model.onnx itself
        print(
            f"error: {args.model}: model.onnx is not a readable ONNX file (truncated or "
            f"damaged?): {e}; export it again with qwthn-export",
            file=sys.stderr,
        )
        return 2
    table = Table(title=f"qwthn-verify: {report.model}")
    for column in ("layer", "check", "value", "tolerance", ""):
        table.add_column(column, justify="right" if column in ("value", "tolerance") else "left")
    for c in report.checks:
        table.add_row(
            c.layer, c.face, f"{c.value:.2e}", f"{c.tolerance:g}", "ok" if c.passed else "FAIL"
        )
    console.print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    console.print("all faces agree" if report.passed else "[bold red]disagreement found[/]")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(export_main())
