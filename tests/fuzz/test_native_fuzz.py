"""The libFuzzer targets of the C++ decoding (fuzz/native.py): they build with clang, their
seeds reach the kernels, a few seconds of fuzzing each finds nothing, every kept reproducer
replays clean, and a real crash is reported as one.

Without clang and its libFuzzer runtime the tests skip, except in CI, where they must run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from fuzz import native
from fuzz.common import FuzzSetupError

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)

SMOKE_SEED = 1  # as in test_python_fuzz.py: the same inputs every run

# A function each target reaches only when a seed decodes into something valid and small.
DEEP_FUNCTIONS = {
    "circuit": "run_kernels",
    "mpo": "check_kernel<double>",
    "op_attributes": "check_rows",
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the native fuzz tests")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    try:
        return native.build(native.DEFAULT_BUILD_DIR)
    except FuzzSetupError as e:
        _unavailable(str(e))


def test_every_target_has_a_seed_generator_and_a_deep_function():
    assert set(DEEP_FUNCTIONS) == set(native.NATIVE_TARGETS)


@pytest.mark.parametrize("name", sorted(native.NATIVE_TARGETS))
def test_the_seeds_decode_and_reach_the_kernels(name, binaries, tmp_path):
    """Seeds written from real encodings are read by the target as those encodings."""
    native.seed_corpus(name, tmp_path)
    assert len(list(tmp_path.iterdir())) >= 4
    out = subprocess.run(
        [str(binaries[name]), "-runs=0", "-print_coverage=1", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-5000:]
    function = re.escape(DEEP_FUNCTIONS[name])
    hits = re.search(rf"^COVERED_FUNC: hits: (\d+) .*{function}", out.stderr, re.MULTILINE)
    assert hits and int(hits.group(1)) >= 1, f"no seed reached {DEEP_FUNCTIONS[name]}"


@pytest.mark.parametrize("name", sorted(native.NATIVE_TARGETS))
def test_a_few_seconds_of_fuzzing_find_no_crash(name, binaries, tmp_path):
    result = native.run(name, 5, tmp_path, binary=binaries[name], seed=SMOKE_SEED)
    assert (result.target, result.engine) == (name, "libfuzzer")
    assert not result.crashed and result.crash_files == [], result.log[-5000:]
    assert result.executions > 1000, result.log[-2000:]  # seeds alone are a handful
    assert any((tmp_path / "corpus" / name).iterdir())


KEPT = sorted(native.REGRESSIONS.glob("*/*"))


@pytest.mark.parametrize("path", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in KEPT])
def test_kept_reproducers_replay_clean(path, binaries):
    """Inputs that once crashed a target (or would have: hand-made from bugs found otherwise)."""
    result = native.replay(path.parent.name, [path], binary=binaries[path.parent.name])
    assert not result.crashed, result.log[-5000:]
    assert result.executions == 1


def test_a_real_crash_is_reported_with_its_reproducer(binaries, tmp_path):
    """run() and replay() on a libFuzzer target that crashes on inputs starting with 'Q'."""
    source = tmp_path / "broken.cc"
    source.write_text(
        textwrap.dedent(
            """
            #include <cstddef>
            #include <cstdint>
            extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
              if (size > 0 && data[0] == 'Q') __builtin_trap();
              return 0;
            }
            """
        )
    )
    broken = tmp_path / "broken"
    subprocess.run(
        [shutil.which("clang++"), "-fsanitize=fuzzer", str(source), "-o", str(broken)], check=True
    )
    result = native.run("circuit", 60, tmp_path / "work", binary=broken)
    assert result.crashed
    assert result.crash_files and all(p.name.startswith("crash-") for p in result.crash_files)
    assert result.crash_files[0].read_bytes().startswith(b"Q")
    assert native.replay("circuit", result.crash_files, binary=broken).crashed
    assert not native.replay("circuit", [source], binary=broken).crashed  # starts with '\n'


def test_missing_clang_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FuzzSetupError, match=re.escape(native.INSTALL_HINT)):
        native.build(tmp_path / "build")
