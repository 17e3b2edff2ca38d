"""QWTHNConfig: every choice of the adapter's data path, as a validated, JSON-serialisable field.

The paper's full method section was not available to us, so nothing about the
adapter is a constant: each reading we made is a field with a default, and ``help`` says what it
means. ``adapter_config.json`` is ``QWTHNConfig.to_dict()``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwthn_onnx._io import atomic_write_text
from qwthn_onnx.circuit import ANSATZE, Circuit, CircuitError, build_ansatz

__all__ = ["ABLATION_FUSIONS", "CONFIG_FILE_NAME", "ConfigError", "QWTHNConfig"]

CONFIG_FILE_NAME = "adapter_config.json"
ABLATION_FUSIONS = ("mpo", "qnn")  # one path of the adapter alone: trained, never exported
_FUSIONS = ("weighted", "linear", *ABLATION_FUSIONS)
_ANGLE_MAPS = ("auto", "linear", "identity")
_ANGLE_SQUASHES = ("pi_tanh", "none")
_INIT_DELTAS = ("zero", "normal")
_QNN_INITS = ("uniform", "normal")
_BACKENDS = ("torch", "cpp", "auto")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


@dataclass
class QWTHNConfig:
    """Configuration of QWTHN adapters (PEFT-like: one config, many adapted layers)."""

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt: a list of names (exact or dotted suffix) or one regex "
            "matched against the full module name. None: the architecture's default (peft's "
            "table, e.g. q_proj/v_proj for Llama/Qwen2, c_attn for GPT-2)."
        },
    )
    rank: int = field(
        default=8, metadata={"help": "r: width of the MPO bottleneck d_in -> r -> d_out."}
    )
    mpo_num_cores: int = field(
        default=3, metadata={"help": "K: cores per MPO (dims factorised automatically)."}
    )
    mpo_bond_dim: int = field(
        default=4, metadata={"help": "D: maximal bond dimension of each MPO."}
    )
    mpo_modes: dict[str, list[int]] | None = field(
        default=None,
        metadata={
            "help": "Explicit factorisations by dimension, e.g. "
            "{'768': [8, 8, 12], '8': [2, 2, 2]}; each list has mpo_num_cores entries. "
            "Dims not listed are factorised automatically."
        },
    )
    n_qubits: int = field(
        default=10, metadata={"help": "n: qubits of the QNN (one observable per qubit)."}
    )
    n_layers: int = field(default=10, metadata={"help": "L: layers of the QNN ansatz."})
    ansatz: str = field(
        default="paper",
        metadata={
            "help": f"QNN circuit: one of {sorted(ANSATZE)} (the README's 'What a QWTHN "
            "adapter computes' describes them)."
        },
    )
    circuits: dict[str, dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "Per adapted module, a circuit (Circuit.to_dict()) that replaces the ansatz "
            "there, e.g. one edited as OpenQASM and loaded with `qwthn-qasm load`. It takes "
            "n_qubits angles and gives n_qubits observables, like the ansatz."
        },
    )
    angle_map: str = field(
        default="auto",
        metadata={
            "help": "How the r MPO features become n angles: 'linear' (Linear r->n), 'identity' "
            "(needs rank == n_qubits), 'auto' (identity when rank == n_qubits, else linear)."
        },
    )
    angle_squash: str = field(
        default="pi_tanh",
        metadata={"help": "'pi_tanh': angles = pi*tanh(.) keeps them in (-pi, pi); 'none'."},
    )
    fusion: str = field(
        default="weighted",
        metadata={
            "help": "'weighted': f = a * P(q) (element-wise, paper v1); 'linear': f = alpha*a + "
            "beta*P(q) (paper v2), alpha and beta trainable. P: Linear n->r. Ablations, for "
            "studying the adapter (training only, not exported): 'mpo': f = a (no circuit); "
            "'qnn': f = P(q) (the circuit's path alone)."
        },
    )
    fusion_alpha: float = field(default=1.0, metadata={"help": "Initial alpha of linear fusion."})
    fusion_beta: float = field(default=1.0, metadata={"help": "Initial beta of linear fusion."})
    alpha: float = field(
        default=8.0,
        metadata={"help": "Scaling s = alpha / rank of the adapter output (LoRA's convention)."},
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    init_delta: str = field(
        default="zero",
        metadata={
            "help": "'zero': last MPO_up core starts at 0, so the adapted model equals the base "
            "model exactly at step 0; 'normal': random (for experiments)."
        },
    )
    qnn_init: str = field(
        default="uniform",
        metadata={"help": "QNN weights: 'uniform' in [-scale, scale] or 'normal' with std scale."},
    )
    qnn_init_scale: float = field(default=0.1, metadata={"help": "Scale of qnn_init (radians)."})
    quantum_backend: str = field(
        default="auto",
        metadata={
            "help": "Simulator running the QNN: 'torch' (PyTorch, any device), 'cpp' (the C++ "
            "kernel, CPU), 'auto' (the kernel on CPU when built, else PyTorch)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def resolved_angle_map(self) -> str:
        if self.angle_map == "auto":
            return "identity" if self.rank == self.n_qubits else "linear"
        return self.angle_map

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
        for name in ("rank", "mpo_num_cores", "mpo_bond_dim", "n_qubits", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_qubits < 2:
            raise ConfigError(f"n_qubits must be >= 2 for the ring ansatze, got {self.n_qubits}")
        choices = {
            "ansatz": tuple(ANSATZE),
            "angle_map": _ANGLE_MAPS,
            "angle_squash": _ANGLE_SQUASHES,
            "fusion": _FUSIONS,
            "init_delta": _INIT_DELTAS,
            "qnn_init": _QNN_INITS,
            "quantum_backend": _BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.angle_map == "identity" and self.rank != self.n_qubits:
            raise ConfigError(
                f"angle_map='identity' needs rank == n_qubits, got rank={self.rank}, "
                f"n_qubits={self.n_qubits}; use angle_map='linear' or 'auto'"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.qnn_init_scale < 0:
            raise ConfigError(f"qnn_init_scale must be >= 0, got {self.qnn_init_scale}")
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            if not self.target_modules or not all(isinstance(t, str) for t in self.target_modules):
                raise ConfigError(
                    f"target_modules must be a regex string or a non-empty list of names, "
                    f"got {self.target_modules!r}"
                )
            self.target_modules = list(self.target_modules)
        for dim, modes in (self.mpo_modes or {}).items():
            if len(modes) != self.mpo_num_cores:
                raise ConfigError(
                    f"mpo_modes[{dim!r}] = {modes} has {len(modes)} modes but mpo_num_cores is "
                    f"{self.mpo_num_cores}"
                )
        for module, data in (self.circuits or {}).items():
            try:
                circuit = Circuit.from_dict(data)
            except CircuitError as e:
                raise ConfigError(f"circuits[{module!r}] is not a valid circuit: {e}") from e
            if circuit.n_inputs != self.n_qubits or circuit.n_observables != self.n_qubits:
                raise ConfigError(
                    f"circuits[{module!r}] takes {circuit.n_inputs} angles and gives "
                    f"{circuit.n_observables} observables; the adapter has n_qubits="
                    f"{self.n_qubits} of each"
                )
        if self.mpo_modes is not None:
            self.mpo_modes = {str(k): [int(m) for m in v] for k, v in self.mpo_modes.items()}

    def circuit_for(self, module: str) -> Circuit:
        """The circuit of adapted ``module``: its override, else the configured ansatz."""
        if self.circuits and module in self.circuits:
            return Circuit.from_dict(self.circuits[module])
        return build_ansatz(self.ansatz, self.n_qubits, self.n_layers)

    def modes_for(self, dim: int) -> list[int] | None:
        """The explicit factorisation for ``dim``, or None to factorise automatically."""
        return (self.mpo_modes or {}).get(str(dim))

    def to_dict(self) -> dict[str, Any]:
        return {"adapter_type": "QWTHN", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QWTHNConfig:
        data = dict(data)
        kind = data.pop("adapter_type", "QWTHN")
        if kind != "QWTHN":
            raise ConfigError(f"adapter_type is {kind!r}, expected 'QWTHN'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        return atomic_write_text(
            Path(directory) / CONFIG_FILE_NAME, json.dumps(self.to_dict(), indent=2) + "\n"
        )

    @classmethod
    def load(cls, directory: str | Path) -> QWTHNConfig:
        path = Path(directory) / CONFIG_FILE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"{path} not found: is {directory} a saved QWTHN adapter?") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)
