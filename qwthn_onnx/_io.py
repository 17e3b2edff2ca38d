"""Atomic file output: write to a temporary sibling, then rename, so a crash or Ctrl-C never
leaves a half-written file where the user's previous one was."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write_text",
    "tokenizer_from_files",
    "tokenizer_to_files",
]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was. The result gets the mode a plain ``open`` would give it (or the mode of
    the file it replaces), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _mode_of(path, 0o666))
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _mode_of(path: Path, default: int) -> int:
    """The permission bits for a new ``path``: those of the one it replaces, else ``default``
    under the process's umask (as ``open`` or ``mkdir`` would apply it)."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    return default & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only
    be read by setting it, which other threads would see for a moment)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _partial_name(path: Path) -> str:
    return f".{path.name}.partial-{os.getpid()}-"


def _remove_stale_partials(path: Path) -> None:
    """Remove temporary directories left by killed runs (their process is gone)."""
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it becomes ``path``.

    A previous ``path`` is moved aside and deleted only once the new directory is in place; on
    any exception the temporary directory is removed and ``path`` is left as it was. Leftovers
    of a killed process (``.<name>.partial-<pid>-*``) are removed by the next call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_name(path), dir=path.parent))
    try:
        os.chmod(tmp, _mode_of(path, 0o777))  # not mkdtemp's owner-only 0700
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        aside = Path(tempfile.mkdtemp(prefix=_partial_name(path), dir=path.parent))
        os.replace(path, aside / "previous")
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside / "previous", path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenizer_to_files(tokenizer: Any) -> dict[str, str | bytes]:
    """The files ``tokenizer.save_pretrained`` writes: text as str, anything else as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files: dict[str, str | bytes] = {}
        for path in sorted(Path(tmp).iterdir()):
            data = path.read_bytes()
            try:
                files[path.name] = data.decode("utf-8")
            except UnicodeDecodeError:
                files[path.name] = data
        return files


def tokenizer_from_files(files: Mapping[str, str | bytes]) -> Any:
    """A transformers tokenizer from :func:`tokenizer_to_files` output (names must be plain)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"tokenizer file name {name!r} is not a plain file name")
            target = Path(tmp) / name
            if isinstance(content, str):
                target.write_text(content)
            else:
                target.write_bytes(content)
        return AutoTokenizer.from_pretrained(tmp)
