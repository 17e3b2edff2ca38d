"""The kernel and op-library tests, rerun on AddressSanitizer + UBSan builds of both doors.

The C++ promises to validate everything it reads and never to touch memory it does not own;
the sanitizers turn a silent out-of-bounds read, use-after-free or signed overflow into a
report. This test builds ``_native`` and ``libqwthn_ops`` with ``QWTHN_SANITIZE=ON`` into
``build/sanitize`` (incremental across runs), then runs the kernel tests in a fresh Python with
gcc's libasan preloaded and ``$QWTHN_NATIVE_MODULE`` / ``$QWTHN_OPS_LIBRARY`` pointing at the
sanitized files, and requires a clean pass: no report at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pybind11
import pytest

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)

ROOT = Path(__file__).parents[2]
BUILD = ROOT / "build" / "sanitize"
SUITE = [
    "tests/kernels/test_native.py",
    "tests/kernels/test_native_mpo.py",
    "tests/ops/test_ort_library.py",
    "tests/ops/test_hostile_attributes.py",
]
# onnxruntime allocates outputs with operator new; where glibc's throws std::bad_alloc (which
# onnxruntime reports), ASan's aborts the process whatever its options, so the test of an
# absurd output allocation cannot run under ASan.
DESELECT = ["tests/ops/test_hostile_attributes.py::test_an_absurd_output_allocation_fails_the_run"]
REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def _missing(what: str, install: str) -> None:
    """Missing tools fail the test in CI (it must run there) and skip it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run the sanitizer tests: {install}")
    pytest.skip(f"{what}: install it: {install}")


def _preload() -> str:
    """gcc's ASan runtime, which must come first in the process, and libstdc++: python is a C
    program, and ASan's ``__cxa_throw`` interceptor needs libstdc++ loaded when ASan starts (else
    the first C++ exception aborts with "CHECK failed: ... real___cxa_throw")."""
    gxx = shutil.which("g++")
    if gxx is None or shutil.which("cmake") is None:
        _missing("g++ or cmake not found", "apt-get install -y g++ cmake")
    paths = []
    for name in ("libasan.so", "libstdc++.so"):
        out = subprocess.run([gxx, f"-print-file-name={name}"], capture_output=True, text=True)
        path = Path(out.stdout.strip())
        if out.returncode != 0 or not path.is_absolute() or not path.exists():
            _missing(f"gcc's {name} not found", "apt-get install -y g++")
        paths.append(str(path.resolve()))
    return ":".join(paths)


def _fetched_headers() -> Path | None:
    """onnxruntime headers a normal build already fetched (saves the download)."""
    for header in sorted(ROOT.glob("build/*/onnxruntime-headers/root/**/onnxruntime_c_api.h")):
        return header.parent
    return None


def _build() -> dict[str, Path]:
    configure = [
        "cmake", "-S", str(ROOT / "custom_ops"), "-B", str(BUILD), "-DQWTHN_SANITIZE=ON",
        f"-DCMAKE_CXX_COMPILER={shutil.which('g++')}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
    ]  # fmt: skip
    if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    headers = _fetched_headers()
    if headers is not None and not os.environ.get("ONNXRUNTIME_INCLUDE_DIR"):
        configure.append(f"-DONNXRUNTIME_INCLUDE_DIR={headers}")
    for command in (
        configure,
        ["cmake", "--build", str(BUILD), "-j2", "--target", "_native", "qwthn_ops"],
    ):
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}"
    (native,) = BUILD.glob("_native*.so")
    return {"native": native.resolve(), "ops": (BUILD / "libqwthn_ops.so").resolve()}


# Runs in the sanitized process: loads both builds the way the tests do, records the process'
# mappings while they are loaded, then runs the suite in the same process.
_PRELUDE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import onnxruntime as ort
    import pytest
    import qwthn_onnx
    from qwthn_onnx import native

    assert native.available(), "the sanitized _native did not load"
    options = ort.SessionOptions()
    options.register_custom_ops_library(qwthn_onnx.get_library_path())
    Path(sys.argv[1]).write_text(Path("/proc/self/maps").read_text())
    sys.exit(pytest.main(sys.argv[3:] + ["--junitxml", sys.argv[2]]))
    """
)


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> dict:
    preload = _preload()
    built = _build()
    work = tmp_path_factory.mktemp("sanitized")
    reports = work / "reports"
    reports.mkdir()
    # Reports also go to files (pytest's capture would swallow one printed just before the
    # process dies), one per process: the suite starts subprocesses of its own.
    env = {
        **os.environ,
        "LD_PRELOAD": preload,
        # CPython and its extensions keep allocations until exit by design: no leak check.
        "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:log_path={reports}/asan",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={reports}/ubsan",
        "QWTHN_NATIVE_MODULE": str(built["native"]),
        "QWTHN_OPS_LIBRARY": str(built["ops"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    maps, junit = work / "maps.txt", work / "junit.xml"
    run = subprocess.run(
        [sys.executable, "-c", _PRELUDE, str(maps), str(junit), "-q", "-p", "no:cacheprovider",
         *SUITE, *(f"--deselect={test}" for test in DESELECT)],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    logs = "".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(reports.iterdir()))
    return {"built": built, "run": run, "maps": maps, "junit": junit, "reports": logs}


def test_the_kernel_tests_pass_on_the_sanitized_builds_with_no_report(sanitized):
    run = sanitized["run"]
    output = run.stdout + run.stderr + sanitized["reports"]
    assert not sanitized["reports"], sanitized["reports"][-20000:]
    assert run.returncode == 0, output[-20000:]
    for report in REPORTS:
        assert report not in output, output[-20000:]
    # junit classnames are dotted module paths; no <failure>, <error> or <skipped>: passed
    passed = [
        case.get("classname", "")
        for case in ET.parse(sanitized["junit"]).getroot().iter("testcase")
        if not list(case)
    ]
    for path in SUITE:
        module = path.removesuffix(".py").replace("/", ".")
        count = sum(name == module or name.startswith(module + ".") for name in passed)
        assert count > 0, f"no test of {path} passed in the sanitized run"


def test_the_sanitized_run_really_used_the_instrumented_binaries(sanitized):
    maps = sanitized["maps"].read_text()
    assert "libasan.so" in maps
    nm = shutil.which("nm")
    for name, path in sanitized["built"].items():
        assert str(path) in maps, f"the sanitized run did not map {name} from {path}"
        if nm is not None:
            symbols = subprocess.run([nm, "-D", str(path)], capture_output=True, text=True).stdout
            assert "__asan_report_" in symbols and "__ubsan_handle_" in symbols, name
