"""Atomic file output: write to a temporary sibling, then rename, so a crash, Ctrl-C or even
SIGKILL never leaves a half-written file where the user's previous one was.

Temporaries are named ``.<name>.partial-<pid>-<random>``: an interruption that can run cleanup
(exceptions, Ctrl-C, SIGTERM in our CLIs) removes its own; SIGKILL cannot, so the next write of
the same output removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
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
    _remove_stale_partials(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_partial_name(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        mode = _mode_of(path, 0o666)
        yield tmp
        os.chmod(tmp, mode)  # after writing: some writers (safetensors) recreate the file 0600
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _sync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory's entries) to disk, so that after a power loss
    the renamed output is the complete new one, not an empty file under the new name."""
    if path.is_symlink():
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Remove temporaries left by killed writers of ``path`` (their process is gone).

    A leftover holding ``previous`` is the old output moved aside by a writer killed mid-swap
    (only where :func:`_exchange` is unsupported): it goes back to ``path`` if nothing replaced it.
    """
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue  # a live writer (maybe another process writing the same output)
        if stale.is_dir() and not stale.is_symlink():
            previous = stale / "previous"
            if previous.exists() and not path.exists():
                os.replace(previous, path)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so no
    kill can fall between "old moved away" and "new moved in". False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # old kernel or file system
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it becomes ``path``.

    A previous ``path`` is swapped with the new directory in one step and deleted afterwards;
    on any exception the temporary directory is removed and ``path`` is left as it was.
    Leftovers of a killed process (``.<name>.partial-<pid>-*``) are removed by the next call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_name(path), dir=path.parent))
    try:
        os.chmod(tmp, _mode_of(path, 0o777))  # not mkdtemp's owner-only 0700
        yield tmp
        for item in (*tmp.rglob("*"), tmp):
            _sync(item)
        if not path.exists():
            os.replace(tmp, path)
            _sync(path.parent)
            return
        if _exchange(tmp, path):
            _sync(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous output
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


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def transformers_progress_bars_off() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off in the
    block, as they were after it: noise for tensors already in memory, or for a step the
    caller reports itself."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
