import os
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from qwthn_onnx import _io
from qwthn_onnx._io import atomic_directory, atomic_path, atomic_write_text


def _dead_pid() -> int:
    """The pid of a process that has exited (what a SIGKILLed writer leaves in its names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_directory_creates_and_replaces(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
        assert (target / "a").exists(), "the old directory stays until the new one is complete"
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half").write_text("y")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["keep"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftovers_of_a_killed_process_are_removed_next_time(tmp_path):
    target = tmp_path / "out"
    # a child creates the temporary directory and dies without cleaning up
    code = (
        "import os, sys; from qwthn_onnx._io import atomic_directory\n"
        f"with atomic_directory({str(target)!r}) as tmp:\n"
        "    (tmp / 'half').write_text('x'); os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert len(list(tmp_path.glob(".out.partial-*"))) == 1
    mine = tmp_path / f".out.partial-{os.getpid()}-live"
    mine.mkdir()  # a live process's directory is left alone
    with atomic_directory(target) as tmp:
        (tmp / "ok").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "out"]


def test_temp_files_of_a_killed_writer_are_removed_next_time(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    stale = tmp_path / f".model.pt.partial-{_dead_pid()}-abc.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".model.pt.partial-{os.getpid()}-def.tmp"
    live.write_bytes(b"another writer, still running")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "model.pt"]
    assert target.read_bytes() == b"new"


def test_the_replaced_directory_is_swapped_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not _io._exchange(a, b):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_an_output_moved_aside_by_a_writer_killed_mid_swap_comes_back(tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE the old output is moved aside before the new one moves in; a kill
    between the two renames must not lose it: the next writer puts it back, then replaces it."""
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    aside = tmp_path / f".out.partial-{_dead_pid()}-xyz"
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "model.onnx").write_text("the user's export")
    _io._remove_stale_partials(target)
    assert (target / "model.onnx").read_text() == "the user's export"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_text("new")
    assert (target / "model.onnx").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_outputs_get_the_umask_mode_not_owner_only(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; what we write must be readable as open/mkdir would
    make it (here umask 022: 0644 and 0755), and a replaced file keeps its own mode."""
    previous = os.umask(0o022)
    try:
        written = atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_directory(tmp_path / "export") as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
        private = tmp_path / "private.json"
        private.write_text("old")
        private.chmod(0o600)
        atomic_write_text(private, "new")
        with atomic_path(tmp_path / "w.safetensors") as tmp:  # safetensors recreates it 0600
            save_file({"w": torch.zeros(2)}, tmp)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "new"
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
