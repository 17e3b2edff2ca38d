import os
import stat
import subprocess
import sys

import pytest

from qwthn_onnx._io import atomic_directory, atomic_write_text


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
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "new"
