"""Devices to compile for: IBM's offline fake backends by name, or a device described by hand.

``resolve_device("fake_torino")`` is one of the snapshots of real IBM devices that
``qiskit_ibm_runtime.fake_provider`` ships (coupling map, basis gates, gate errors and durations,
T1/T2, readout errors): listed from the module, so a newer qiskit-ibm-runtime brings its new
devices. A device given by hand is a spec string (see :func:`parse_custom_device`)::

    custom:basis=rz,sx,x,cx;coupling=ring:5;error_2q=0.01;duration_2q=3e-7

built as a ``GenericBackendV2`` whose target carries exactly the errors and durations given
(none given: an ideal device, where only the layout and routing matter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from .backend import QPUError

if TYPE_CHECKING:
    from qiskit.providers import BackendV2

__all__ = [
    "CUSTOM_PREFIX",
    "CUSTOM_SYNTAX",
    "CustomDevice",
    "available_devices",
    "is_fake_device",
    "parse_custom_device",
    "resolve_device",
]

CUSTOM_PREFIX = "custom:"
CUSTOM_SYNTAX = (
    "custom:basis=rz,sx,x,cx;coupling=line:N|ring:N|full:N|0-1,1-2,...[;error_1q=P;error_2q=P;"
    "error_readout=P;duration_1q=S;duration_2q=S;duration_readout=S]"
)
MAX_CUSTOM_QUBITS = 1024
MAX_CUSTOM_EDGES = 16384  # directed; full:N has N(N-1)
_DEFAULT_BASIS = ("rz", "sx", "x", "cx")
# rz is virtual on IBM devices (a frame change: no time, no error); a custom device does the same
_VIRTUAL = frozenset({"rz"})
_NUMBERS = (
    "error_1q",
    "error_2q",
    "error_readout",
    "duration_1q",
    "duration_2q",
    "duration_readout",
)


@cache
def _fake_backends() -> dict[str, type[BackendV2]]:
    from qiskit_ibm_runtime import fake_provider
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    found: dict[str, type[BackendV2]] = {}
    for obj in vars(fake_provider).values():
        if isinstance(obj, type) and issubclass(obj, FakeBackendV2) and obj is not FakeBackendV2:
            name = getattr(obj, "backend_name", None)
            if isinstance(name, str) and name.startswith("fake_"):
                found[name] = obj
    return found


def available_devices() -> list[str]:
    """The fake IBM devices ``resolve_device`` knows by name (``fake_torino``, ...), sorted."""
    return sorted(_fake_backends())


def is_fake_device(name: str) -> bool:
    """Whether ``name`` is one of :func:`available_devices` (an offline snapshot)."""
    return name in _fake_backends()


def resolve_device(name: str) -> BackendV2:
    """The qiskit backend for ``name``: a fake IBM device or a ``custom:...`` spec."""
    if not isinstance(name, str):
        raise QPUError(f"a device is named by a string, got {name!r}.")
    key = name.strip()
    if key.startswith(CUSTOM_PREFIX):
        return parse_custom_device(key).backend()
    cls = _fake_backends().get(key.lower())
    if cls is None:
        raise QPUError(
            f"unknown device {name!r}. Available: {', '.join(available_devices())}; "
            f"or describe one by hand: {CUSTOM_SYNTAX}"
        )
    return cls()


@dataclass(frozen=True)
class CustomDevice:
    """A device given by hand: basis gates, a coupling map (undirected edges, used both ways),
    optional depolarizing gate errors, symmetric readout error and durations (seconds)."""

    spec: str
    basis: tuple[str, ...]
    num_qubits: int
    edges: tuple[tuple[int, int], ...]
    error_1q: float | None = None
    error_2q: float | None = None
    error_readout: float | None = None
    duration_1q: float | None = None
    duration_2q: float | None = None
    duration_readout: float | None = None

    def backend(self) -> BackendV2:
        """A ``GenericBackendV2`` with exactly these properties (no random ones)."""
        from qiskit.providers.fake_provider import GenericBackendV2
        from qiskit.transpiler import InstructionProperties

        directed = [list(e) for a, b in self.edges for e in ((a, b), (b, a))]
        backend = GenericBackendV2(
            self.num_qubits,
            basis_gates=list(self.basis),
            coupling_map=directed or None,
            noise_info=False,
            seed=0,
        )
        backend.name = self.spec
        target = backend.target
        for gate in target.operation_names:
            op = target.operation_from_name(gate)
            if gate in ("delay", "reset") or not hasattr(op, "num_qubits"):
                continue
            if gate == "measure":
                error, duration = self.error_readout, self.duration_readout
            elif gate in _VIRTUAL:
                error, duration = 0.0, 0.0
            elif op.num_qubits == 1:
                error, duration = self.error_1q, self.duration_1q
            else:
                error, duration = self.error_2q, self.duration_2q
            if error is None and duration is None:
                continue
            for qargs in target.qargs_for_operation_name(gate) or ():
                target.update_instruction_properties(
                    gate, qargs, InstructionProperties(duration=duration, error=error)
                )
        return backend


def _coupling(value: str, spec: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    kind, _, size = value.partition(":")
    if kind in ("line", "ring", "full"):
        try:
            n = int(size)
        except ValueError:
            raise QPUError(f"{spec!r}: {kind}:N needs a qubit count N, got {size!r}.") from None
        _check_size(n, spec)
        if kind == "full":
            edges = tuple((a, b) for a in range(n) for b in range(a + 1, n))
        else:
            edges = tuple((i, i + 1) for i in range(n - 1))
            if kind == "ring" and n > 2:
                edges += ((n - 1, 0),)
        return n, edges
    pairs = []
    for item in value.split(","):
        a, sep, b = item.strip().partition("-")
        try:
            pair = (int(a), int(b))
        except ValueError:
            pair = None
        if not sep or pair is None or pair[0] < 0 or pair[1] < 0 or pair[0] == pair[1]:
            raise QPUError(
                f"{spec!r}: coupling edge {item!r} is not two distinct qubit indices like 0-1; "
                "give line:N, ring:N, full:N or an edge list such as 0-1,1-2,2-3."
            )
        pairs.append(tuple(sorted(pair)))
    n = max(max(p) for p in pairs) + 1
    _check_size(n, spec)
    return n, tuple(dict.fromkeys(pairs))  # type: ignore[arg-type]


def _check_size(n: int, spec: str) -> None:
    if not 1 <= n <= MAX_CUSTOM_QUBITS:
        raise QPUError(f"{spec!r}: a custom device has 1..{MAX_CUSTOM_QUBITS} qubits, got {n}.")


def parse_custom_device(spec: str) -> CustomDevice:
    """Read ``custom:key=value;...`` (syntax: :data:`CUSTOM_SYNTAX`).

    ``basis`` defaults to rz,sx,x,cx; ``coupling`` is required. Errors are probabilities
    (depolarizing for gates, a symmetric bit flip for readout); durations are in seconds. rz is
    virtual (no time, no error) as on IBM devices.
    """
    from qiskit.circuit.library import get_standard_gate_name_mapping

    body = spec.strip().removeprefix(CUSTOM_PREFIX)
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("basis", "coupling", *_NUMBERS):
            raise QPUError(
                f"{spec!r}: {part!r} is not a known key=value; the syntax is {CUSTOM_SYNTAX}"
            )
        if key in fields:
            raise QPUError(f"{spec!r}: {key} is given twice.")
        fields[key] = value.strip()
    if "coupling" not in fields:
        raise QPUError(
            f"{spec!r}: a custom device needs coupling=...; the syntax is {CUSTOM_SYNTAX}"
        )
    n, edges = _coupling(fields["coupling"], spec)
    if 2 * len(edges) > MAX_CUSTOM_EDGES:
        raise QPUError(
            f"{spec!r}: {2 * len(edges)} directed couplings, more than {MAX_CUSTOM_EDGES}; "
            "describe a sparser device (line, ring or an edge list)."
        )
    basis = tuple(
        b.strip().lower() for b in fields.get("basis", ",".join(_DEFAULT_BASIS)).split(",")
    )
    standard = get_standard_gate_name_mapping()
    for gate in basis:
        if gate not in standard or gate in ("measure", "reset", "delay"):
            raise QPUError(f"{spec!r}: basis gate {gate!r} is not a qiskit standard gate.")
    if edges and not any(standard[g].num_qubits == 2 for g in basis):
        raise QPUError(
            f"{spec!r}: the basis {','.join(basis)} has no two-qubit gate for the couplings; "
            "add one, e.g. cx or cz."
        )
    numbers: dict[str, float] = {}
    for key in _NUMBERS:
        if key in fields:
            try:
                value = float(fields[key])
            except ValueError:
                value = math.nan
            limit = 1.0 if key.startswith("error") else math.inf
            if not 0 <= value <= limit:
                unit = "a probability in [0, 1]" if limit == 1.0 else "seconds >= 0"
                raise QPUError(f"{spec!r}: {key} must be {unit}, got {fields[key]!r}.")
            numbers[key] = value
    return CustomDevice(spec.strip(), basis, n, edges, **numbers)
