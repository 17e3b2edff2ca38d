"""OpenQASM export (and import) of a QWTHN adapter's quantum circuit.

The circuit IR (:class:`~qwthn_onnx.circuit.ir.Circuit`) is what runs inside every adapter; this
module writes it as OpenQASM 3 for quantum hardware and reads such programs back, so a circuit can
be inspected, run elsewhere, and re-imported without a second source of truth.

Decisions (made by experiment with openqasm3 1.0.1, qiskit 2.6 and qiskit-qasm3-import 0.6):

* Programs are built as an ``openqasm3.ast`` tree and printed with ``openqasm3.dumps``; only the
  leading ``//`` comment block is plain text (the AST has no comment node). Comments may precede
  ``OPENQASM 3.0;`` per the specification, and both parsers accept that.
* Name map (stable, see :data:`INPUT_PREFIX` etc.): circuit input ``i`` is ``input float[64]
  x_i;``, weight ``j`` kept as an input is ``input float[64] theta_j;``, qubit ``i`` is ``q[i]``
  (``q<i>`` in the dialects that declare one ``qubit`` per qubit) and its measurement lands in
  ``c[i]``. Every input (and weight) of the circuit is declared, used or not, so the
  declarations fix ``n_inputs`` / ``n_weights`` on read-back.
* Observables: ``qiskit.qasm3.loads`` rejects every ``pragma`` ("node of type Pragma is not
  supported"), but ignores annotations on ordinary statements. The observables therefore travel
  as the annotation ``@qwthn.observables ZIII,IZII`` on the final ``c = measure q;`` (on
  ``c[0] = measure q0;`` with named qubits); all three tools accept (and ignore) it. A program
  without the annotation reads back with one ``Z`` observable per measured qubit. Only Z/I
  observables are exported: a program measures in the Z basis, and X/Y observables would need
  basis rotations that change the circuit.
* Floats: ``openqasm3.dumps`` prints a ``FloatLiteral`` with ``str(float)``, Python's shortest
  round-trip repr, so every float64 survives text exactly. Negative values are written as
  ``UnaryExpression(-, FloatLiteral(|v|))``, which is what the parser produces for ``-v``. Values
  are never rewritten as multiples of pi.
* Dialects (``dialect=``, see :data:`DIALECTS` and docs/qpu.md), found by running the programs
  in qiskit 2.6 (``qiskit.qasm3.loads``), Amazon Braket's LocalSimulator (default simulator 1.41)
  and PennyLane 0.45 (``qml.from_qasm3``). Without ``stdgates.inc`` qiskit knows only ``U`` and
  ``gphase``; Braket cannot open the include, lacks ``cx``/``p``/``cp``/``crz``..., runs a
  program's own definition instead of its built-in of that name, and drops a ``gphase`` in a
  gate body under ``ctrl @``; PennyLane refuses the include, runs its built-in instead of a
  program's definition of that name, knows no ``rzz``/``rxx``/``ryy``, and runs a defined gate
  called on ``q[i]`` on new wires named after its formal qubits (silently wrong, or a wire
  error on a device with fixed wires). ``portable``
  (the default) is the text all three run exactly: no include, every gate used defined over
  ``U``, ``gphase`` and ``ctrl @ U`` (never ``ctrl @`` around a ``gphase``), one ``qubit q<i>;``
  per qubit. ``qiskit`` is the stdgates form, ``braket`` uses Braket's own gate names (definitions
  only for ``crx``/``cry``/``crz``), ``pennylane`` PennyLane's (definitions for ``rzz``/``rxx``/
  ``ryy``, which then need named qubits). :func:`qasm3_to_circuit` accepts exactly the
  definitions the dialects write, and reads every dialect back to the same circuit.
* Read-back: literal weights (or bound inputs) come back as ``Param.const``, so the round trip
  IR -> QASM -> IR is the identity only when inputs and weights are kept as ``input``
  declarations; the returned circuit then has ``n_weights=0`` (``n_inputs=0`` when bound).
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import openqasm3
import qiskit
from antlr4 import Token
from antlr4.error.Errors import ParseCancellationException
from openqasm3 import ast
from openqasm3.parser import QASM3ParsingError
from qiskit import ClassicalRegister, qasm2

from qwthn_onnx.circuit.ir import (
    GATES,
    MAX_QUBITS_ENV,
    Circuit,
    CircuitError,
    Gate,
    Param,
    max_qubits_limit,
)
from qwthn_onnx.circuit.qiskit_bridge import to_qiskit

__all__ = [
    "BIT_REGISTER",
    "DEFAULT_DIALECT",
    "DIALECTS",
    "INPUT_PREFIX",
    "OBSERVABLES_ANNOTATION",
    "QASM2_BASIS",
    "QUBIT_REGISTER",
    "WEIGHT_PREFIX",
    "QasmError",
    "check_dialect",
    "circuit_to_qasm2",
    "circuit_to_qasm3",
    "parameter_name",
    "qasm3_to_circuit",
]

QUBIT_REGISTER = "q"
BIT_REGISTER = "c"
INPUT_PREFIX = "x_"
WEIGHT_PREFIX = "theta_"
OBSERVABLES_ANNOTATION = "qwthn.observables"
QASM2_BASIS = ("rz", "sx", "x", "cx")
_STDGATES = "stdgates.inc"
_PREFIXES = {"input": INPUT_PREFIX, "weight": WEIGHT_PREFIX}
_NAME_RE = re.compile(rf"({INPUT_PREFIX}|{WEIGHT_PREFIX})(0|[1-9][0-9]*)")
# stdgates.inc names for the same gates as IR gates of another name.
_STDGATES_ALIASES = {"phase": "p", "cphase": "cp", "CX": "cx"}
_CONSTANTS = {"pi": math.pi, "π": math.pi, "tau": math.tau, "τ": math.tau, "euler": math.e}
_BINARY: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}


class QasmError(ValueError):
    """An OpenQASM program that cannot be read as a QWTHN circuit; says where (1-based line and
    column) and what is supported instead."""


def parameter_name(kind: Literal["input", "weight"], index: int) -> str:
    """The OpenQASM ``input`` name of circuit input ``index`` (``x_<i>``) or weight (``theta_<j>``).

    The map is part of the file format: hardware runners bind values by these names.
    """
    return f"{_PREFIXES[kind]}{index}"


# --------------------------------------------------------------------------------------------
# AST building blocks
# --------------------------------------------------------------------------------------------


def _float_literal(value: float) -> ast.Expression:
    """A float that prints in shortest round-trip form and parses back to the same AST."""
    literal = ast.FloatLiteral(abs(value))
    if math.copysign(1.0, value) < 0:
        return ast.UnaryExpression(ast.UnaryOperator["-"], literal)
    return literal


def _call(name: str, args: list[ast.Expression], qubits: list[ast.Identifier]) -> ast.QuantumGate:
    return ast.QuantumGate(modifiers=[], name=ast.Identifier(name), arguments=args, qubits=qubits)


# The tools each dialect was run in (tests/exporters/test_qasm_dialects.py), named in its comments.
_QISKIT = "qiskit 2.6 (qiskit.qasm3.loads, qiskit-qasm3-import 0.6)"
_BRAKET = "Amazon Braket LocalSimulator (amazon-braket-sdk 1.127, default simulator 1.41)"
_PENNYLANE = "PennyLane 0.45 (qml.from_qasm3)"

# qiskit's definitions of RZZGate / RXXGate / RYYGate: a ZZ rotation, in a rotated basis for XX
# and YY. None of the three tools has a gate of these names.
_ROTATIONS = """
gate rxx(theta) a, b { h a; h b; cx a, b; rz(theta) b; cx a, b; h a; h b; }
gate ryy(theta) a, b {
  rx(pi / 2) a; rx(pi / 2) b; cx a, b; rz(theta) b; cx a, b; rx(-(pi / 2)) a; rx(-(pi / 2)) b;
}
gate rzz(theta) a, b { cx a, b; rz(theta) b; cx a, b; }
"""
# Every IR gate over the built-ins U and gphase, exact to the matrix (global phase included);
# dependencies first. ctrl @ modifies U only: Braket drops a gphase in a body under ctrl @.
_OVER_U = (
    """
gate x a { U(pi, 0, pi) a; }
gate y a { U(pi, pi / 2, pi / 2) a; }
gate z a { U(0, 0, pi) a; }
gate h a { U(pi / 2, 0, pi) a; }
gate s a { U(0, 0, pi / 2) a; }
gate sdg a { U(0, 0, -(pi / 2)) a; }
gate t a { U(0, 0, pi / 4) a; }
gate tdg a { U(0, 0, -(pi / 4)) a; }
gate p(theta) a { U(0, 0, theta) a; }
gate rx(theta) a { U(theta, -(pi / 2), pi / 2) a; }
gate ry(theta) a { U(theta, 0, 0) a; }
gate rz(theta) a { gphase(-theta / 2); U(0, 0, theta) a; }
gate cx a, b { ctrl @ U(pi, 0, pi) a, b; }
gate cy a, b { ctrl @ U(pi, pi / 2, pi / 2) a, b; }
gate cz a, b { ctrl @ U(0, 0, pi) a, b; }
gate cp(theta) a, b { ctrl @ U(0, 0, theta) a, b; }
gate crx(theta) a, b { ctrl @ U(theta, -(pi / 2), pi / 2) a, b; }
gate cry(theta) a, b { ctrl @ U(theta, 0, 0) a, b; }
gate crz(theta) a, b { U(0, 0, -theta / 2) a; ctrl @ U(0, 0, theta) a, b; }
gate swap a, b { cx a, b; cx b, a; cx a, b; }
"""
    + _ROTATIONS
)
# Braket has no controlled rotations: each over its built-ins, exact (X or Z flips the sign of
# the rotation on the target, so the two halves cancel when the control is 0).
_BRAKET_CONTROLLED = """
gate crx(theta) a, b { rx(theta / 2) b; cz a, b; rx(-theta / 2) b; cz a, b; }
gate cry(theta) a, b { ry(theta / 2) b; cnot a, b; ry(-theta / 2) b; cnot a, b; }
gate crz(theta) a, b { rz(theta / 2) b; cnot a, b; rz(-theta / 2) b; cnot a, b; }
"""
# IR gate -> Braket's built-in of the same matrix (xx/yy/zz are exp(-i theta/2 PP), as RXX...).
_BRAKET_NAMES = {
    "sdg": "si",
    "tdg": "ti",
    "cx": "cnot",
    "p": "phaseshift",
    "cp": "cphaseshift",
    "rxx": "xx",
    "ryy": "yy",
    "rzz": "zz",
}


@dataclass(frozen=True)
class _Dialect:
    """How one dialect writes a program."""

    summary: str
    tools: tuple[str, ...]
    include: bool  # include "stdgates.inc"
    register: bool  # qubit[n] q; else one `qubit q<i>;` per qubit
    definitions: str  # gate definitions written when used, dependencies first
    names: Mapping[str, str] = field(default_factory=dict)  # IR gate -> name written


_DIALECTS = {
    "portable": _Dialect(
        "no include; every gate used is defined over U, gphase and ctrl @ U; one qubit per "
        "declaration (q0, q1, ...)",
        (_QISKIT, _BRAKET, _PENNYLANE),
        include=False,
        register=False,
        definitions=_OVER_U,
    ),
    "qiskit": _Dialect(
        "stdgates.inc included; rzz, rxx, ryy defined",
        (_QISKIT,),
        include=True,
        register=True,
        definitions=_ROTATIONS,
    ),
    "braket": _Dialect(
        "Braket's built-in gates (cnot, si, ti, phaseshift, cphaseshift, xx, yy, zz); crx, cry, "
        "crz defined over them",
        (_BRAKET,),
        include=False,
        register=True,
        definitions=_BRAKET_CONTROLLED,
        names=_BRAKET_NAMES,
    ),
    "pennylane": _Dialect(
        "PennyLane's built-in gates; rzz, rxx, ryy defined, so one qubit per declaration (q0, "
        "q1, ...): PennyLane cannot call a defined gate on q[i]",
        (_PENNYLANE,),
        include=False,
        register=False,
        definitions=_ROTATIONS,
    ),
}
DIALECTS: tuple[str, ...] = tuple(_DIALECTS)
DEFAULT_DIALECT = "portable"
# Gates no tool knows without the definition the program carries.
_NEED_DEFINITION = frozenset({"rzz", "rxx", "ryy"})
# Names of IR gates in stdgates.inc and in Braket, accepted on reading.
_READ_ALIASES = {**_STDGATES_ALIASES, **{v: k for k, v in _BRAKET_NAMES.items()}}


def check_dialect(dialect: str) -> str:
    """``dialect`` if it is one of :data:`DIALECTS`; a ValueError naming them otherwise."""
    if dialect not in _DIALECTS:
        raise ValueError(
            f"unknown OpenQASM dialect {dialect!r}; choose one of {', '.join(DIALECTS)} "
            f"(default {DEFAULT_DIALECT}: runs in qiskit, Braket and PennyLane alike)"
        )
    return dialect


@functools.cache
def _definitions(source: str) -> dict[str, ast.QuantumGateDefinition]:
    """The parsed gate definitions of a table, by name, in table order (parsed once, on use)."""
    program = openqasm3.parse("OPENQASM 3.0;\n" + source)
    return {node.name.name: node for node in program.statements}


def _needed_definitions(source: str, names: set[str]) -> list[ast.QuantumGateDefinition]:
    """The definitions of ``names`` and of the gates their bodies call, dependencies first."""
    table = _definitions(source)
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in table and name not in needed:
            needed.add(name)
            todo += [g.name.name for g in table[name].body if isinstance(g, ast.QuantumGate)]
    return [node for name, node in table.items() if name in needed]


@functools.cache
def _accepted_definitions() -> dict[str, frozenset[str]]:
    """Gate name -> the printed definitions of it that some dialect writes."""
    accepted: dict[str, set[str]] = {}
    for spec in _DIALECTS.values():
        for name, node in _definitions(spec.definitions).items():
            accepted.setdefault(name, set()).add(openqasm3.dumps(node))
    return {name: frozenset(texts) for name, texts in accepted.items()}


def _check_z_observables(circuit: Circuit) -> None:
    for obs in circuit.observables:
        if set(obs) - {"I", "Z"}:
            raise CircuitError(
                f"observable {obs!r} contains X or Y; only Z-basis observables (Z/I Pauli "
                "strings) export to QASM, since the program measures every qubit in the Z basis."
            )


def _bound_values(name: str, values: Sequence[float], size: int) -> list[float]:
    result = [float(v) for v in values]
    if len(result) != size:
        raise CircuitError(f"got {len(result)} {name} values, the circuit has {size}.")
    if not all(math.isfinite(v) for v in result):
        raise CircuitError(f"{name} values must be finite to be written as QASM literals.")
    return result


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _comments(circuit: Circuit, layer: str | None, inputs: str, weights: str, dialect: str) -> str:
    n = circuit.n_qubits
    spec = _DIALECTS[dialect]
    qubit = (
        f"{QUBIT_REGISTER}[i]" if spec.register else f"{QUBIT_REGISTER}i ({QUBIT_REGISTER}0, ...)"
    )
    lines = [
        "QWTHN adapter quantum circuit, exported by qwthn-onnx",
        f"layer: {layer!r}" if layer is not None else "layer: (not given)",
        f"{n} qubits, {circuit.n_gates} gates; inputs: {circuit.n_inputs}, {inputs}; "
        f"weights: {circuit.n_weights}, {weights}",
        "observables (character i acts on qubit i): " + ", ".join(circuit.observables),
        "read them from the measured bits: <Z_i> = P(c[i]=0) - P(c[i]=1); a product of Z's is "
        "the mean of (-1)^(sum of its bits)",
        f"name map: circuit input i -> {INPUT_PREFIX}i, weight j -> {WEIGHT_PREFIX}j, "
        f"qubit i -> {qubit}, its measurement -> {BIT_REGISTER}[i]",
        f"the @{OBSERVABLES_ANNOTATION} annotation on the measurement holds the observables "
        "for machines",
        f"OpenQASM dialect: {dialect} ({spec.summary})",
        "runs exactly in: " + "; ".join(spec.tools),
    ]
    return "".join(f"// {line}\n" for line in lines)


def _describe(kind: Literal["input", "weight"], values: list[float] | None, size: int) -> str:
    if values is not None:
        return "bound to literals"
    if size == 0:
        return "none"
    names = parameter_name(kind, 0)
    if size > 1:
        names += f" .. {parameter_name(kind, size - 1)}"
    return f"input float[64] {names}"


def circuit_to_qasm3(
    circuit: Circuit,
    weights: Sequence[float] | None = None,
    *,
    weights_as_inputs: bool = False,
    inputs: Sequence[float] | None = None,
    layer: str | None = None,
    dialect: str = DEFAULT_DIALECT,
) -> str:
    """The circuit as an OpenQASM 3 program that measures every qubit into ``c``.

    Inputs are ``input float[64] x_i`` unless ``inputs`` binds them to literals; weights are
    ``input float[64] theta_j`` when ``weights`` is None or ``weights_as_inputs`` (which then wins
    over ``weights``), else literals. ``layer`` names the adapted layer in the comments;
    ``dialect`` (one of :data:`DIALECTS`) chooses the form: ``portable`` runs in qiskit, Braket
    and PennyLane alike. Raises :class:`CircuitError` for X/Y observables or input/weight values
    of the wrong size, ValueError for an unknown dialect.
    """
    spec = _DIALECTS[check_dialect(dialect)]
    _check_z_observables(circuit)
    bound: dict[str, list[float] | None] = {
        "input": None if inputs is None else _bound_values("inputs", inputs, circuit.n_inputs),
        "weight": None
        if weights is None or weights_as_inputs
        else _bound_values("weights", weights, circuit.n_weights),
    }
    sizes = {"input": circuit.n_inputs, "weight": circuit.n_weights}

    def argument(param: Param) -> ast.Expression:
        if param.kind == "const":
            return _float_literal(param.value)
        values = bound[param.kind]
        if values is None:
            return ast.Identifier(parameter_name(param.kind, param.value))
        return _float_literal(values[param.value])

    def qubit(wire: int) -> ast.Identifier | ast.IndexedIdentifier:
        if not spec.register:
            return ast.Identifier(f"{QUBIT_REGISTER}{wire}")
        return ast.IndexedIdentifier(ast.Identifier(QUBIT_REGISTER), [[ast.IntegerLiteral(wire)]])

    def bit(wire: int) -> ast.IndexedIdentifier:
        return ast.IndexedIdentifier(ast.Identifier(BIT_REGISTER), [[ast.IntegerLiteral(wire)]])

    n = circuit.n_qubits
    used = {spec.names.get(gate.name, gate.name) for gate in circuit.gates}
    statements: list[ast.Statement] = [ast.Include(_STDGATES)] if spec.include else []
    statements += _needed_definitions(spec.definitions, used)
    statements += [
        ast.IODeclaration(
            ast.IOKeyword.input,
            ast.FloatType(ast.IntegerLiteral(64)),
            ast.Identifier(parameter_name(kind, i)),
        )
        for kind, values in bound.items()
        if values is None
        for i in range(sizes[kind])
    ]
    if spec.register:
        register = ast.Identifier(QUBIT_REGISTER)
        statements.append(ast.QubitDeclaration(register, ast.IntegerLiteral(n)))
    else:
        statements += [ast.QubitDeclaration(qubit(i), None) for i in range(n)]
    statements.append(
        ast.ClassicalDeclaration(
            ast.BitType(ast.IntegerLiteral(n)), ast.Identifier(BIT_REGISTER), None
        )
    )
    statements += [
        _call(
            spec.names.get(gate.name, gate.name),
            [argument(p) for p in gate.params],
            [qubit(w) for w in gate.wires],
        )
        for gate in circuit.gates
    ]
    if spec.register:
        measures = [
            ast.QuantumMeasurementStatement(
                ast.QuantumMeasurement(register), ast.Identifier(BIT_REGISTER)
            )
        ]
    else:
        measures = [
            ast.QuantumMeasurementStatement(ast.QuantumMeasurement(qubit(i)), bit(i))
            for i in range(n)
        ]
    measures[0].annotations = [
        ast.Annotation(OBSERVABLES_ANNOTATION, ",".join(circuit.observables))
    ]
    statements += measures

    described = {kind: _describe(kind, bound[kind], sizes[kind]) for kind in bound}
    header = _comments(circuit, layer, described["input"], described["weight"], dialect)
    return header + openqasm3.dumps(ast.Program(statements, version="3.0"))


def circuit_to_qasm2(
    circuit: Circuit,
    inputs: Sequence[float],
    weights: Sequence[float],
    basis: Sequence[str] = QASM2_BASIS,
) -> str:
    """A bound OpenQASM 2 program over the ``basis`` gates, for hardware that takes only QASM 2.

    qiskit transpiles the circuit (``optimization_level=1``, fixed seed): it changes the gates
    (and may drop diagonal gates right before the measurements, and the global phase), never the
    measured distribution. Angles are printed by qiskit's QASM 2 exporter, which writes values
    within 1e-12 of a simple multiple of pi as that multiple, so they are not bit-exact.
    The program includes ``qelib1.inc`` as qiskit (and IBM hardware) define it, with ``sx``; a
    strict OpenQASM 2 reader needs ``qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS`` or the like.
    """
    _check_z_observables(circuit)
    qc = to_qiskit(
        circuit,
        _bound_values("inputs", inputs, circuit.n_inputs),
        _bound_values("weights", weights, circuit.n_weights),
    )
    qc.add_register(ClassicalRegister(circuit.n_qubits, BIT_REGISTER))
    qc.measure(range(circuit.n_qubits), range(circuit.n_qubits))
    lowered = qiskit.transpile(qc, basis_gates=list(basis), optimization_level=1, seed_transpiler=0)
    return qasm2.dumps(lowered)


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _syntax_error(err: QASM3ParsingError) -> str:
    """``line N, column M: what`` (1-based) from either kind of error openqasm3 raises."""
    match = re.match(r"L(\d+):C(\d+): (.*)", str(err), re.DOTALL)
    if match:
        return f"line {match[1]}, column {int(match[2]) + 1}: {match[3]}"
    cause = err.__cause__
    if isinstance(cause, ParseCancellationException) and cause.args:
        cause = cause.args[0]
    token = getattr(cause, "offendingToken", None)
    if token is None:
        return "syntax error at an unknown position"
    what = "end of input" if token.type == Token.EOF else repr(token.text)
    return f"line {token.line}, column {token.column + 1}: unexpected {what}"


def _line(node: ast.QASMNode) -> str:
    return f"line {node.span.start_line}"


def _text(node: ast.QASMNode) -> str:
    return openqasm3.dumps(node).strip()


def _constant(expr: ast.Expression) -> float | None:
    """The value of a constant expression, or None when it is not one we evaluate."""
    if isinstance(expr, ast.FloatLiteral | ast.IntegerLiteral):
        return float(expr.value)
    if isinstance(expr, ast.Identifier):
        return _CONSTANTS.get(expr.name)
    if isinstance(expr, ast.UnaryExpression) and expr.op.name == "-":
        inner = _constant(expr.expression)
        return None if inner is None else -inner
    if isinstance(expr, ast.BinaryExpression) and expr.op.name in _BINARY:
        lhs, rhs = _constant(expr.lhs), _constant(expr.rhs)
        return None if lhs is None or rhs is None else _BINARY[expr.op.name](lhs, rhs)
    return None


class _Reader:
    """Collects a circuit from a parsed program, one top-level statement at a time."""

    def __init__(self) -> None:
        self.qubits: str | None = None  # the register's name, when there is one
        self.named: dict[str, int] = {}  # qubit name -> index, when declared one by one
        self.n_qubits = 0
        self.inputs: dict[str, Param] = {}
        self.defined: set[str] = set()
        self.gates: list[Gate] = []
        self.measured: list[int] = []
        self.observables: tuple[str, ...] | None = None
        self.handlers: dict[type, Callable] = {
            ast.Include: self._include,
            ast.QubitDeclaration: self._qubit_declaration,
            ast.ClassicalDeclaration: self._bit_declaration,
            ast.IODeclaration: self._input,
            ast.QuantumGateDefinition: self._gate_definition,
            ast.QuantumGate: self._gate,
            ast.QuantumMeasurementStatement: self._measure,
            ast.QuantumBarrier: lambda node: None,  # no effect on the state
        }

    def read(self, node: ast.Statement) -> None:
        for annotation in node.annotations:
            if annotation.keyword == OBSERVABLES_ANNOTATION:
                self._observables(annotation)
        handler = self.handlers.get(type(node))
        if handler is None:
            raise QasmError(
                f"{_line(node)}: unsupported statement {_text(node).splitlines()[0]!r} "
                f"({type(node).__name__}); a QWTHN circuit is declarations, gates and final "
                "measurements only (no classical control flow, resets, or other statements)."
            )
        handler(node)

    def _include(self, node: ast.Include) -> None:
        if node.filename != _STDGATES:
            raise QasmError(f"{_line(node)}: only {_STDGATES!r} can be included.")

    def _qubit_declaration(self, node: ast.QubitDeclaration) -> None:
        """One register (``qubit[4] q;``) or single qubits (``qubit q0;``, index = order)."""
        name = node.qubit.name
        single = node.size is None and self.qubits is None and name not in self.named
        if not single and (
            self.qubits is not None or self.named or not isinstance(node.size, ast.IntegerLiteral)
        ):
            raise QasmError(
                f"{_line(node)}: declare exactly one qubit register of literal size, e.g. "
                f"'qubit[4] {QUBIT_REGISTER};', or distinct single qubits, e.g. 'qubit "
                f"{QUBIT_REGISTER}0; qubit {QUBIT_REGISTER}1;', not both."
            )
        size = self.n_qubits + 1 if single else node.size.value
        limit = max_qubits_limit()
        if not 1 <= size <= limit:  # before anything is sized by the register
            raise QasmError(
                f"{_line(node)}: qubit[{size}]: a circuit has 1..{limit} qubits "
                f"(raise the limit with ${MAX_QUBITS_ENV} if you have the memory)."
            )
        if single:
            self.named[name] = self.n_qubits
        else:
            self.qubits = name
        self.n_qubits = size

    def _bit_declaration(self, node: ast.ClassicalDeclaration) -> None:
        if not isinstance(node.type, ast.BitType) or node.init_expression is not None:
            raise QasmError(
                f"{_line(node)}: unsupported classical declaration {_text(node)!r}; only a bit "
                f"register for the measurements is allowed, e.g. 'bit[4] {BIT_REGISTER};'."
            )

    def _input(self, node: ast.IODeclaration) -> None:
        if node.io_identifier != ast.IOKeyword.input or not isinstance(node.type, ast.FloatType):
            raise QasmError(f"{_line(node)}: {_text(node)!r}: only 'input float' is supported.")
        name = node.identifier.name
        match = _NAME_RE.fullmatch(name)
        if match is None or name in self.inputs:
            raise QasmError(
                f"{_line(node)}: input {name!r} is a duplicate or not named "
                f"{INPUT_PREFIX}<i> (circuit input i) or {WEIGHT_PREFIX}<j> (weight j)."
            )
        kind = "input" if match[1] == INPUT_PREFIX else "weight"
        self.inputs[name] = Param(kind, int(match[2]))

    def _gate_definition(self, node: ast.QuantumGateDefinition) -> None:
        name = node.name.name
        if openqasm3.dumps(node) not in _accepted_definitions().get(name, ()):
            raise QasmError(
                f"{_line(node)}: unsupported definition of gate {name!r}; only the definitions "
                f"circuit_to_qasm3 writes (in any of the dialects {', '.join(DIALECTS)}) are "
                f"accepted. Supported gates: {sorted(GATES)}."
            )
        self.defined.add(name)

    def _gate(self, node: ast.QuantumGate) -> None:
        where = _line(node)
        written = node.name.name
        name = _READ_ALIASES.get(written, written)
        spec = GATES.get(name)
        if spec is None or (written in _NEED_DEFINITION and written not in self.defined):
            raise QasmError(
                f"{where}: unsupported gate {written!r}; supported gates are {sorted(GATES)} "
                f"({', '.join(sorted(_NEED_DEFINITION))} with the gate definition "
                "circuit_to_qasm3 writes)."
            )
        if node.modifiers or node.duration is not None:
            raise QasmError(f"{where}: gate modifiers and durations are not supported.")
        if self.measured:
            raise QasmError(f"{where}: gate {written!r} after a measurement; measure at the end.")
        if len(node.arguments) != spec.n_params or len(node.qubits) != spec.n_qubits:
            raise QasmError(
                f"{where}: {written} takes {spec.n_params} argument(s) and {spec.n_qubits} "
                f"qubit(s), got {len(node.arguments)} and {len(node.qubits)}."
            )
        wires = tuple(self._qubit(q, where) for q in node.qubits)
        if len(set(wires)) != len(wires):
            raise QasmError(f"{where}: {written} acts on a repeated qubit.")
        self.gates.append(Gate(name, wires, tuple(self._param(a, where) for a in node.arguments)))

    def _measure(self, node: ast.QuantumMeasurementStatement) -> None:
        operand = node.measure.qubit
        if isinstance(operand, ast.Identifier) and operand.name == self.qubits:
            qubits: Sequence[int] = range(self.n_qubits)
        else:
            qubits = [self._qubit(operand, _line(node))]
        self.measured += [q for q in qubits if q not in self.measured]

    def _observables(self, annotation: ast.Annotation) -> None:
        where = _line(annotation)
        observables = tuple(s.strip() for s in (annotation.command or "").split(","))
        if self.observables is not None:
            raise QasmError(f"{where}: @{OBSERVABLES_ANNOTATION} given twice.")
        for obs in observables:
            if not obs or set(obs) - {"I", "Z"}:
                raise QasmError(
                    f"{where}: @{OBSERVABLES_ANNOTATION} observable {obs!r} is not a Z/I Pauli "
                    "string; a QASM program measures in the Z basis only."
                )
        self.observables = observables

    def _qubit(self, operand: ast.QASMNode, where: str) -> int:
        if isinstance(operand, ast.Identifier) and operand.name in self.named:
            return self.named[operand.name]
        if (
            isinstance(operand, ast.IndexedIdentifier)
            and operand.name.name == self.qubits
            and len(operand.indices) == 1
            and isinstance(operand.indices[0], list)
            and len(operand.indices[0]) == 1
            and isinstance(operand.indices[0][0], ast.IntegerLiteral)
            and 0 <= operand.indices[0][0].value < self.n_qubits
        ):
            return operand.indices[0][0].value
        if self.named:
            expected = f"one of the declared qubits {', '.join(self.named)}"
        else:
            expected = (
                f"{self.qubits or QUBIT_REGISTER}[i] with a literal 0 <= i < {self.n_qubits} "
                "(after the qubit declaration)"
            )
        raise QasmError(f"{where}: qubit operand {_text(operand)!r} must be {expected}.")

    def _param(self, expr: ast.Expression, where: str) -> Param:
        if isinstance(expr, ast.Identifier) and expr.name in self.inputs:
            return self.inputs[expr.name]
        try:
            value = _constant(expr)
        except (ZeroDivisionError, OverflowError) as err:
            raise QasmError(f"{where}: cannot evaluate {_text(expr)!r}: {err}.") from None
        if value is None:
            raise QasmError(
                f"{where}: gate argument {_text(expr)!r} is not supported; use one declared "
                f"input ({INPUT_PREFIX}<i> / {WEIGHT_PREFIX}<j>) or a constant expression of "
                f"numbers, {', '.join(_CONSTANTS)} and + - * /."
            )
        return Param.const(value)

    def circuit(self, n_inputs: int | None, n_weights: int | None) -> Circuit:
        if not self.n_qubits:
            raise QasmError(
                f"the program declares no qubit register ('qubit[n] {QUBIT_REGISTER};')."
            )
        observables = self.observables
        if observables is None:
            observables = tuple(
                "".join("Z" if q == m else "I" for q in range(self.n_qubits)) for m in self.measured
            )
        z_qubits = {i for obs in observables for i, c in enumerate(obs) if c == "Z"}
        unmeasured = sorted(z_qubits - set(self.measured))
        if not observables or unmeasured:
            raise QasmError(
                "the observables need measured qubits: measure every qubit of a Z observable "
                f"(unmeasured: {unmeasured}), and measure at least one qubit or give "
                f"@{OBSERVABLES_ANNOTATION}."
            )
        found = {k: [n for n, p in self.inputs.items() if p.kind == k] for k in _PREFIXES}
        sizes = {"input": n_inputs, "weight": n_weights}
        expected = {
            k: [parameter_name(k, i) for i in range(len(found[k]) if n is None else n)]
            for k, n in sizes.items()
        }
        if any(sorted(found[k]) != sorted(expected[k]) for k in _PREFIXES):
            raise QasmError(
                f"the program's inputs do not match the layer: expected "
                f"{expected['input'] + expected['weight']}, found "
                f"{found['input'] + found['weight']} (n_inputs={n_inputs}, n_weights={n_weights})."
            )
        try:
            return Circuit(
                self.n_qubits,
                tuple(self.gates),
                observables,
                len(expected["input"]),
                len(expected["weight"]),
            )
        except CircuitError as err:
            raise QasmError(f"the program is not a valid circuit: {err}") from err


def qasm3_to_circuit(
    text: str, *, n_inputs: int | None = None, n_weights: int | None = None
) -> Circuit:
    """Read a program written by :func:`circuit_to_qasm3` (or one in the same subset) back.

    ``x_i`` / ``theta_j`` become ``Param.input(i)`` / ``Param.weight(j)``, numbers and constant
    expressions ``Param.const``. Given ``n_inputs`` / ``n_weights`` (the layer's; pass 0 for
    bound inputs / literal weights), the declared inputs must be exactly ``x_0..`` / ``theta_0..``;
    otherwise they are inferred from the declarations. Raises :class:`QasmError`.
    """
    try:
        program = openqasm3.parse(text)
    except QASM3ParsingError as err:
        raise QasmError(f"invalid OpenQASM 3 at {_syntax_error(err)}") from err
    except AttributeError as err:  # openqasm3 cannot give a span to a program without tokens
        raise QasmError(
            "the OpenQASM 3 parser found no statement to read (is the program empty, or only "
            f"comments?) ({err}); write the program circuit_to_qasm3 writes, starting with "
            "'OPENQASM 3.0;'"
        ) from err
    reader = _Reader()
    for statement in program.statements:
        reader.read(statement)
    return reader.circuit(n_inputs, n_weights)
