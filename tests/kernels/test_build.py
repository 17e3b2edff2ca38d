"""The CMake build's onnxruntime-header lookup: a build that cannot get them says what to set."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pybind11
import pytest

SOURCE = Path(__file__).parents[2] / "custom_ops"

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")


def _configure(tmp_path: Path, *defines: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "cmake", "-S", str(SOURCE), "-B", str(tmp_path / "build"),
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}", *defines,
        ],
        capture_output=True, text=True,
    )  # fmt: skip


def test_a_wrong_explicit_header_dir_stops_the_build_with_what_to_fix(tmp_path):
    out = _configure(tmp_path, f"-DONNXRUNTIME_INCLUDE_DIR={tmp_path}")
    assert out.returncode != 0
    assert "holds no onnxruntime_c_api.h; point it at the directory that does" in out.stderr


def test_no_headers_and_no_fetch_stops_the_build_naming_both_ways_out(tmp_path):
    out = _configure(tmp_path, "-DQWTHN_FETCH_ORT_HEADERS=OFF")
    if out.returncode == 0:
        pytest.skip("this machine has the onnxruntime headers installed system-wide")
    message = " ".join(out.stderr.split())
    assert "not fetched: QWTHN_FETCH_ORT_HEADERS is OFF" in message
    assert "ONNXRUNTIME_INCLUDE_DIR=/path/to/include pip install ." in message
    assert "QWTHN_BUILD_ORT_OPS=OFF" in message


def test_the_library_can_be_left_out(tmp_path):
    out = _configure(tmp_path, "-DQWTHN_BUILD_ORT_OPS=OFF")
    assert out.returncode == 0, out.stderr
    assert "onnxruntime headers" not in out.stdout
