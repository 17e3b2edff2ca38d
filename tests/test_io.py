import os
import subprocess
import sys

import pytest

from qwthn_onnx._io import atomic_directory


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
