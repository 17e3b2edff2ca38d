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
  and its measurement lands in ``c[i]``. Every input (and weight) of the circuit is declared, used
  or not, so the declarations fix ``n_inputs`` / ``n_weights`` on read-back.
* Observables: ``qiskit.qasm3.loads`` rejects every ``pragma`` ("node of type Pragma is not
  supported"), but ignores annotations on ordinary statements. The observables therefore travel
  as the annotation ``@qwthn.observables ZIII,IZII`` on the final ``c = measure q;``; both
  ``openqasm3.parse`` and ``qiskit.qasm3.loads`` accept it. A program without the annotation reads
  back with one ``Z`` observable per measured qubit. Only Z/I observables are exported: a program
  measures in the Z basis, and X/Y observables would need basis rotations that change the circuit.
* Floats: ``openqasm3.dumps`` prints a ``FloatLiteral`` with ``str(float)``, Python's shortest
  round-trip repr, so every float64 survives text exactly. Negative values are written as
  ``UnaryExpression(-, FloatLiteral(|v|))``, which is what the parser produces for ``-v``. Values
  are never rewritten as multiples of pi.
* ``rzz``, ``rxx`` and ``ryy`` are not in ``stdgates.inc``; each one used gets a ``gate``
  definition (qiskit's decomposition of ``RZZGate`` / ``RXXGate`` / ``RYYGate``) before use, and
  :func:`qasm3_to_circuit` accepts exactly those definitions.
* Read-back: literal weights (or bound inputs) come back as ``Param.const``, so the round trip
  IR -> QASM -> IR is the identity only when inputs and weights are kept as ``input``
  declarations; the returned circuit then has ``n_weights=0`` (``n_inputs=0`` when bound).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
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
    "INPUT_PREFIX",
    "OBSERVABLES_ANNOTATION",
    "QASM2_BASIS",
    "QUBIT_REGISTER",
    "WEIGHT_PREFIX",
    "QasmError",
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


def _half_pi(negative: bool = False) -> ast.Expression:
    half_pi = ast.BinaryExpression(
        ast.BinaryOperator["/"], ast.Identifier("pi"), ast.IntegerLiteral(2)
    )
    return ast.UnaryExpression(ast.UnaryOperator["-"], half_pi) if negative else half_pi


def _rotation_definition(name: str) -> ast.QuantumGateDefinition:
    """qiskit's definition of RZZ/RXX/RYY: a ZZ rotation, in a rotated basis for XX and YY."""
    a, b, theta = ast.Identifier("a"), ast.Identifier("b"), ast.Identifier("theta")
    zz = [_call("cx", [], [a, b]), _call("rz", [theta], [b]), _call("cx", [], [a, b])]
    if name == "rzz":
        body = zz
    elif name == "rxx":
        body = [_call("h", [], [q]) for q in (a, b)] + zz + [_call("h", [], [q]) for q in (a, b)]
    else:  # ryy
        before = [_call("rx", [_half_pi()], [q]) for q in (a, b)]
        body = before + zz + [_call("rx", [_half_pi(negative=True)], [q]) for q in (a, b)]
    return ast.QuantumGateDefinition(ast.Identifier(name), [theta], [a, b], body)


_DEFINED_GATES = frozenset({"rzz", "rxx", "ryy"})
_DEFINITIONS = {name: openqasm3.dumps(_rotation_definition(name)) for name in _DEFINED_GATES}


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


def _comments(circuit: Circuit, layer: str | None, inputs: str, weights: str) -> str:
    n = circuit.n_qubits
    lines = [
        "QWTHN adapter quantum circuit, exported by qwthn-onnx",
        f"layer: {layer!r}" if layer is not None else "layer: (not given)",
        f"{n} qubits, {circuit.n_gates} gates; inputs: {circuit.n_inputs}, {inputs}; "
        f"weights: {circuit.n_weights}, {weights}",
        "observables (character i acts on qubit i): " + ", ".join(circuit.observables),
        "read them from the measured bits: <Z_i> = P(c[i]=0) - P(c[i]=1); a product of Z's is "
        "the mean of (-1)^(sum of its bits)",
        f"name map: circuit input i -> {INPUT_PREFIX}i, weight j -> {WEIGHT_PREFIX}j, "
        f"qubit i -> {QUBIT_REGISTER}[i], its measurement -> {BIT_REGISTER}[i]",
        f"the @{OBSERVABLES_ANNOTATION} annotation on the measurement holds the observables "
        "for machines",
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
) -> str:
    """The circuit as an OpenQASM 3 program that measures every qubit into ``c``.

    Inputs are ``input float[64] x_i`` unless ``inputs`` binds them to literals; weights are
    ``input float[64] theta_j`` when ``weights`` is None or ``weights_as_inputs`` (which then wins
    over ``weights``), else literals. ``layer`` names the adapted layer in the comments. Raises
    :class:`CircuitError` for X/Y observables or input/weight values of the wrong size.
    """
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

    def qubit(wire: int) -> ast.IndexedIdentifier:
        return ast.IndexedIdentifier(ast.Identifier(QUBIT_REGISTER), [[ast.IntegerLiteral(wire)]])

    n = circuit.n_qubits
    used = {gate.name for gate in circuit.gates}
    statements: list[ast.Statement] = [ast.Include(_STDGATES)]
    statements += [_rotation_definition(name) for name in sorted(_DEFINED_GATES & used)]
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
    statements.append(ast.QubitDeclaration(ast.Identifier(QUBIT_REGISTER), ast.IntegerLiteral(n)))
    statements.append(
        ast.ClassicalDeclaration(
            ast.BitType(ast.IntegerLiteral(n)), ast.Identifier(BIT_REGISTER), None
        )
    )
    statements += [
        _call(gate.name, [argument(p) for p in gate.params], [qubit(w) for w in gate.wires])
        for gate in circuit.gates
    ]
    measure = ast.QuantumMeasurementStatement(
        ast.QuantumMeasurement(ast.Identifier(QUBIT_REGISTER)), ast.Identifier(BIT_REGISTER)
    )
    measure.annotations = [ast.Annotation(OBSERVABLES_ANNOTATION, ",".join(circuit.observables))]
    statements.append(measure)

    described = {kind: _describe(kind, bound[kind], sizes[kind]) for kind in bound}
    header = _comments(circuit, layer, described["input"], described["weight"])
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
        self.qubits: str | None = None
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
        if self.qubits is not None or not isinstance(node.size, ast.IntegerLiteral):
            raise QasmError(
                f"{_line(node)}: declare exactly one qubit register of literal size, "
                f"e.g. 'qubit[4] {QUBIT_REGISTER};'."
            )
        limit = max_qubits_limit()
        if not 1 <= node.size.value <= limit:  # before anything is sized by the register
            raise QasmError(
                f"{_line(node)}: qubit[{node.size.value}]: a circuit has 1..{limit} qubits "
                f"(raise the limit with ${MAX_QUBITS_ENV} if you have the memory)."
            )
        self.qubits, self.n_qubits = node.qubit.name, node.size.value

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
        if _DEFINITIONS.get(name) != openqasm3.dumps(node):
            raise QasmError(
                f"{_line(node)}: unsupported definition of gate {name!r}; only the definitions "
                f"of {sorted(_DEFINED_GATES)} that circuit_to_qasm3 writes are accepted. "
                f"Supported gates: {sorted(GATES)}."
            )
        self.defined.add(name)

    def _gate(self, node: ast.QuantumGate) -> None:
        where = _line(node)
        written = node.name.name
        name = _STDGATES_ALIASES.get(written, written)
        spec = GATES.get(name)
        if spec is None or (name in _DEFINED_GATES and name not in self.defined):
            raise QasmError(
                f"{where}: unsupported gate {written!r}; supported gates are {sorted(GATES)} "
                f"({', '.join(sorted(_DEFINED_GATES))} with the gate definition "
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
            qubits = range(self.n_qubits)
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
        raise QasmError(
            f"{where}: qubit operand {_text(operand)!r} must be {self.qubits or QUBIT_REGISTER}[i] "
            f"with a literal 0 <= i < {self.n_qubits} (after the qubit declaration)."
        )

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
        if self.qubits is None:
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
