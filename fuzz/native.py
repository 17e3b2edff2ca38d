"""libFuzzer targets of the C++ attribute and shape decoding (custom_ops/fuzz/*_fuzzer.cc).

The C++ reads ONNX node attributes and tensor shapes that anyone can write into a model file;
these targets feed it arbitrary bytes under AddressSanitizer + UBSan, and run the kernels on
whatever it accepts against oracles (a dense reference, exact gradient identities, the other
instruction-set build). :func:`build` compiles them with clang (``QWTHN_BUILD_FUZZERS=ON``),
:func:`seed_corpus` writes seeds from real encodings in each target's byte format (documented at
the top of its .cc file), :func:`run` fuzzes one target for a bounded time and :func:`replay`
runs kept reproducers (custom_ops/fuzz/regressions/<target>/) once each.
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from fuzz.common import FuzzResult, FuzzSetupError

__all__ = [
    "DEFAULT_BUILD_DIR",
    "INSTALL_HINT",
    "MEMORY_LIMIT_MB",
    "NATIVE_TARGETS",
    "REGRESSIONS",
    "TIMEOUT_S",
    "build",
    "replay",
    "run",
    "seed_corpus",
]

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "custom_ops"
REGRESSIONS = SOURCE / "fuzz" / "regressions"
# The build run() uses: under the gitignored build/, so reruns are incremental.
DEFAULT_BUILD_DIR = ROOT / "build" / "fuzz"
INSTALL_HINT = "apt-get install -y --no-install-recommends clang libclang-rt-14-dev"

NATIVE_TARGETS: dict[str, str] = {
    "circuit": "circuit attribute decoding (decode_circuit), then the forward and adjoint "
    "kernels on small accepted circuits",
    "mpo": "MPO mode and core-shape decoding (mpo_shape), then the MPO kernel forward and "
    "backward on small accepted shapes against a dense reference",
    "op_attributes": "libqwthn_ops' node attribute and tensor shape validation (op_checks.h) "
    "as onnxruntime sessions run it",
}

_CRASH_PREFIXES = ("crash-", "leak-", "timeout-", "oom-")
MEMORY_LIMIT_MB = 2048  # per input: more is reported as a crash (an "oom-" reproducer)
TIMEOUT_S = 10  # per input: longer is reported as a hang
_EXECUTIONS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


def _target(name: str) -> str:
    if name not in NATIVE_TARGETS:
        raise KeyError(f"unknown native fuzz target {name!r}; targets: {sorted(NATIVE_TARGETS)}")
    return name


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FuzzSetupError(f"{name} not found; install it: {install}")
    return path


def _check_libfuzzer(clang: str) -> None:
    """clang without compiler-rt links no fuzzer; say so before a long CMake run fails."""
    out = subprocess.run([clang, "--print-runtime-dir"], capture_output=True, text=True)
    runtime = Path(out.stdout.strip())
    if out.returncode != 0 or not any(runtime.glob("libclang_rt.fuzzer*.a")):
        raise FuzzSetupError(
            f"clang's libFuzzer runtime (libclang_rt.fuzzer) is not in {runtime}; install it: "
            f"{INSTALL_HINT}"
        )


def build(build_dir: Path) -> dict[str, Path]:
    """Configure and build the fuzz targets with clang++ into ``build_dir``; name -> executable.

    Raises :class:`FuzzSetupError` naming the install command when clang, its libFuzzer runtime
    or cmake is missing.
    """
    clang = _tool("clang++", INSTALL_HINT)
    cmake = _tool("cmake", "apt-get install -y cmake (or pip install cmake)")
    _check_libfuzzer(clang)
    build_dir = Path(build_dir)
    configure = [
        cmake, "-S", str(SOURCE), "-B", str(build_dir), "-DQWTHN_BUILD_FUZZERS=ON",
        f"-DCMAKE_CXX_COMPILER={clang}",
    ]  # fmt: skip
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    targets = [f"{name}_fuzzer" for name in NATIVE_TARGETS]
    for command in (configure, [cmake, "--build", str(build_dir), "-j2", "--target", *targets]):
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            log = (out.stdout + out.stderr)[-6000:]
            if "fuzzer" in log and ("cannot find" in log or "not found" in log):
                raise FuzzSetupError(f"linking libFuzzer failed; install: {INSTALL_HINT}\n{log}")
            raise RuntimeError(f"building the fuzz targets failed: {' '.join(command)}\n{log}")
    return {name: build_dir / f"{name}_fuzzer" for name in NATIVE_TARGETS}


# --- seeds: real encodings in each target's byte format ------------------------------------------


def _q(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _list(values: Iterable[int]) -> bytes:
    values = [int(v) for v in values]
    return _q(len(values), *values)


def _circuits() -> list:
    """The presets at small sizes, and one circuit using every gate with every parameter kind."""
    from qwthn_onnx.circuit import GATES, Circuit, Gate, Param
    from qwthn_onnx.circuit.presets import hardware_efficient_circuit, paper_circuit

    gates, n_weights = [], 0
    for k, (name, spec) in enumerate(GATES.items()):
        wires = (k % 3, (k + 1) % 3)[: spec.n_qubits]
        kind = ("input", "weight", "const")[k % 3]
        value = {"input": k % 2, "weight": n_weights, "const": 0.25 * k}[kind]
        n_weights += kind == "weight" and spec.n_params == 1
        params = (Param(kind, value),) if spec.n_params == 1 else ()
        gates.append(Gate(name, wires, params))
    every_gate = Circuit(3, gates, ("ZII", "XYZ", "IYI"), n_inputs=2, n_weights=n_weights)
    return [paper_circuit(2, 1), paper_circuit(4, 2), hardware_efficient_circuit(3, 2), every_gate]


# (in_modes, out_modes, bonds) of MPOs the adapters build (qwthn_onnx.mpo's factorisation).
def _mpo_shapes() -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    from qwthn_onnx.mpo import bond_dims, factorize

    shapes = []
    for d_in, d_out, bond, cores in ((64, 8, 4, 3), (8, 64, 4, 3), (7, 5, 3, 1), (16, 12, 2, 2)):
        in_modes, out_modes = factorize(d_in, cores), factorize(d_out, cores)
        shapes.append((in_modes, out_modes, bond_dims(in_modes, out_modes, bond)))
    return shapes


def _core_dims(in_modes: Sequence[int], out_modes: Sequence[int], bonds: Sequence[int]):
    return [
        (bonds[k], i, o, bonds[k + 1])
        for k, (i, o) in enumerate(zip(in_modes, out_modes, strict=True))
    ]


_TAIL = bytes([3, *range(1, 250, 7)])  # batch selector, then a spread of signed values


def _circuit_seed(encoded) -> bytes:
    e = encoded
    header = _q(
        e.n_qubits, e.n_inputs, e.n_weights, 0, len(e.gates), len(e.params), len(e.constants),
        len(e.observables), e.n_qubits,
    )  # fmt: skip
    return (
        header
        + _q(*e.gates.reshape(-1).tolist())
        + _q(*e.params.reshape(-1).tolist())
        + struct.pack(f"<{len(e.constants)}d", *e.constants.tolist())
        + _q(*e.observables.reshape(-1).tolist())
        + _TAIL
    )


def _quantum_layer_seed(encoded) -> bytes:
    e = encoded
    constants = e.constants.tolist()
    return (
        bytes([0])
        + _q(1, e.n_qubits, e.n_inputs, e.n_weights)
        + _list(e.gates.reshape(-1).tolist())
        + _list(e.params.reshape(-1).tolist())
        + _list(e.observables.reshape(-1).tolist())
        + _q(len(constants))
        + struct.pack(f"<{len(constants)}d", *constants)
        + _list(b"")  # $QWTHN_MAX_QUBITS unset
        + _list([2, 5, e.n_inputs])
        + _list([e.n_weights])
    )


def _mpo_seed(in_modes, out_modes, bonds) -> bytes:
    cores = _core_dims(in_modes, out_modes, bonds)
    body = _q(len(in_modes), *in_modes, *out_modes, len(cores))
    return body + b"".join(_list(dims) for dims in cores) + _TAIL


def _mpo_linear_seed(in_modes, out_modes, bonds) -> bytes:
    cores = _core_dims(in_modes, out_modes, bonds)
    return (
        bytes([1])
        + _list(in_modes)
        + _list(out_modes)
        + _q(len(cores) + 1, len(cores))
        + b"".join(_list(dims) for dims in cores)
        + _list([3, math.prod(in_modes)])
    )


def seed_corpus(name: str, directory: Path) -> None:
    """Write seeds for target ``name`` into ``directory``, generated from real encodings: the
    circuit presets' encodings and the MPO shapes the adapters use."""
    from qwthn_onnx.circuit.encoding import encode

    _target(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoded = [encode(c) for c in _circuits()]
    seeds = {
        "circuit": [_circuit_seed(e) for e in encoded],
        "mpo": [_mpo_seed(*shape) for shape in _mpo_shapes()],
        "op_attributes": [_quantum_layer_seed(e) for e in encoded]
        + [_mpo_linear_seed(*shape) for shape in _mpo_shapes()],
    }[name]
    for k, seed in enumerate(seeds):
        (directory / f"seed-{k:02d}").write_bytes(seed)


# --- running --------------------------------------------------------------------------------------


def _crash_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(_CRASH_PREFIXES))


def _limits() -> list[str]:
    """libFuzzer's memory and time limits. It reads its RSS as ru_maxrss, which on Linux a
    child inherits from the process it was forked from (here, say, pytest holding torch):
    the RSS limit sits that much higher, so a big parent is no false out-of-memory."""
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return [
        f"-rss_limit_mb={inherited_mb + MEMORY_LIMIT_MB}",
        f"-malloc_limit_mb={MEMORY_LIMIT_MB}",
        f"-timeout={TIMEOUT_S}",
    ]


def run(
    name: str,
    seconds: float,
    workdir: Path,
    *,
    binary: Path | None = None,
    seed: int | None = None,
) -> FuzzResult:
    """Fuzz target ``name`` for about ``seconds`` (libFuzzer's -max_total_time); ``seed`` fixes
    libFuzzer's random choices (None: libFuzzer picks one).

    The corpus (seeded on first use) and reproducers live under ``workdir``; the target is
    built into build/fuzz unless ``binary`` names a libFuzzer executable to run instead.
    An input slower than ``TIMEOUT_S`` counts as a hang, one needing more than
    ``MEMORY_LIMIT_MB`` as a crash.
    """
    _target(name)
    if binary is None:
        binary = build(DEFAULT_BUILD_DIR)[name]
    workdir = Path(workdir)
    corpus, artifacts = workdir / "corpus" / name, workdir / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    if not corpus.is_dir() or not any(corpus.iterdir()):
        seed_corpus(name, corpus)
    command = [
        str(binary), f"-max_total_time={max(1, math.ceil(seconds))}", *_limits(),
        *([f"-seed={seed}"] if seed is not None else []),
        "-max_len=4096", "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus),
    ]  # fmt: skip
    start = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    log = out.stdout + out.stderr
    crashes = _crash_files(artifacts)
    if out.returncode != 0 and not crashes:
        raise FuzzSetupError(
            f"{binary} exited with status {out.returncode} without a reproducer; it could not "
            f"run here:\n{log[-4000:]}"
        )
    executions = [int(n) for n in _EXECUTIONS.findall(log)]
    return FuzzResult(
        target=name,
        engine="libfuzzer",
        seconds=elapsed,
        executions=executions[-1] if executions else 0,
        crashed=out.returncode != 0,
        crash_files=crashes,
        log=log[-20000:],
    )


def replay(name: str, inputs: Sequence[Path], *, binary: Path | None = None) -> FuzzResult:
    """Run target ``name`` once on each of ``inputs`` (e.g. the kept reproducers in
    ``REGRESSIONS / name``); ``crashed`` says whether any of them still fails."""
    _target(name)
    if binary is None:
        binary = build(DEFAULT_BUILD_DIR)[name]
    start = time.monotonic()
    command = [str(binary), *_limits(), *map(str, inputs)]
    out = subprocess.run(command, capture_output=True, text=True)
    return FuzzResult(
        target=name,
        engine="libfuzzer",
        seconds=time.monotonic() - start,
        executions=len(inputs),
        crashed=out.returncode != 0,
        log=(out.stdout + out.stderr)[-20000:],
    )
