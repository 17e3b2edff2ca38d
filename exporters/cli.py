"""``qwthn-export`` and ``qwthn-import``: the command lines of the exporters."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from exporters.export import ExportOptions, ExportResult, export_model
from exporters.onnx_export import DEFAULT_OPSET, DTYPES, MAX_OPSET, MIN_OPSET, ExportError
from exporters.onnx_import import ImportError_, import_onnx
from qwthn_onnx import __version__
from qwthn_onnx.adapter import AdapterError, ConfigError
from qwthn_onnx.checkpoint import ModelFileError, check_output_file, save_model_pt
from qwthn_onnx.circuit import CircuitError
from qwthn_onnx.mpo import MPOError
from qwthn_onnx.runtime.metadata import MetadataError

USER_ERRORS = (
    AdapterError,
    CircuitError,
    ConfigError,
    ExportError,
    ImportError_,
    MetadataError,
    ModelFileError,
    MPOError,
)


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwthn-export",
        description="Export a QWTHN model.pt to ONNX (ai.qwthn custom ops with standard-op "
        "fallbacks, KV cache), verify it against PyTorch in onnxruntime, and write it atomically.",
    )
    p.add_argument("model", type=Path, help="model.pt written by qwthn-train / save_model_pt")
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
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store weights in model.onnx.data (default: only above 1 GiB)",
    )
    v = p.add_argument_group("verification")
    v.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the comparison with PyTorch"
    )
    v.add_argument("--atol", type=float, help="absolute tolerance (default 1e-4; float16: 5e-2)")
    v.add_argument("--rtol", type=float, help="relative tolerance (default 1e-3; float16: 5e-2)")
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
        checks = Table(title=f"verification (atol {report.atol}, rtol {report.rtol})")
        for column in ("runtime", "case", "output", "max abs error", "max rel error", ""):
            checks.add_column(column, justify="right" if "error" in column else "left")
        rows = report.checks if verbose else [report.worst(r) for r in report.runtimes]
        for c in rows:
            checks.add_row(
                c.runtime,
                c.case,
                c.output,
                f"{c.max_abs_error:.2e}",
                f"{c.max_rel_error:.2e}",
                "ok" if c.passed else "FAIL",
            )
        tables.append(checks)
    return tables


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the atomic directory, which removes its temp dir


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    width = shutil.get_terminal_size((120, 24)).columns  # rich assumes 80 when piped
    console = Console(quiet=args.quiet, highlight=False, soft_wrap=True, width=width)
    output = args.output or args.model.with_name(args.model.stem + "_onnx")
    options = ExportOptions(
        opset=args.opset,
        fallback=args.fallback,
        dtype=args.dtype,
        verify=args.verify,
        atol=args.atol,
        rtol=args.rtol,
        external_data=args.external_data,
    )
    try:
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
    except (*USER_ERRORS, FileNotFoundError) as e:
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


if __name__ == "__main__":
    sys.exit(export_main())
