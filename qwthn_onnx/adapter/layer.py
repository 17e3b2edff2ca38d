"""The QWTHN adapter path and the layer that wraps a frozen linear with it.

h = W0 x + s * Delta(x)
a = MPO_down(x)              d_in -> r
z = angle_map(a)             r -> n angles (Linear unless identity; optional pi*tanh)
q = QNN(z)                   n expectation values in [-1, 1]
f = a * P(q)  |  alpha*a + beta*P(q)     (P: Linear n -> r)
Delta(x) = MPO_up(f)         r -> d_out
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from qwthn_onnx import native
from qwthn_onnx.adapter.config import QWTHNConfig
from qwthn_onnx.circuit import Circuit, build_ansatz, expectation_values
from qwthn_onnx.circuit.sampling import ShotEstimator, sampled_expectations
from qwthn_onnx.mpo import MPOLinear
from qwthn_onnx.ops.torch_ops import circuit_arguments, quantum_layer

__all__ = ["SUPPORTED_LAYER_TYPES", "QWTHNAdapter", "QWTHNLayer", "linear_dims"]

SUPPORTED_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def linear_dims(layer: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored transposed)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(
        f"QWTHN adapts nn.Linear and transformers Conv1D layers, not {type(layer).__name__}"
    )


class QuantumLayer(nn.Module):
    """A parameterised circuit as a module: angles ``[..., n_inputs]`` -> ``[..., n_obs]``.

    ``backend``: ``"torch"`` (the PyTorch simulator, any device), ``"cpp"`` (the C++ kernel,
    CPU) or ``"auto"`` (the kernel for CPU tensors when it is built, else PyTorch). With an
    ``estimator`` set (see ``QWTHNModel.set_quantum_backend``), the circuit instead runs with
    shots on a qiskit backend, as on a QPU, with parameter-shift gradients.
    """

    def __init__(
        self,
        circuit: Circuit,
        init: str = "uniform",
        init_scale: float = 0.1,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        self.circuit = circuit
        self.backend = backend
        self.estimator: ShotEstimator | None = None
        self._kernel_arguments = circuit_arguments(circuit)
        self.weights = nn.Parameter(torch.empty(circuit.n_weights))
        with torch.no_grad():
            if init == "uniform":
                self.weights.uniform_(-init_scale, init_scale)
            else:
                self.weights.normal_(0.0, init_scale)

    def _use_kernel(self, angles: torch.Tensor) -> bool:
        if self.backend == "auto":
            return angles.device.type == "cpu" and native.available()
        return self.backend == "cpp"

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        if self.estimator is not None:
            return sampled_expectations(self.circuit, angles, self.weights, self.estimator)
        if self._use_kernel(angles):
            return quantum_layer(angles, self.weights, *self._kernel_arguments)
        return expectation_values(self.circuit, angles, self.weights)

    def extra_repr(self) -> str:
        c = self.circuit
        return f"qubits={c.n_qubits}, gates={len(c.gates)}, weights={c.n_weights}"


class QWTHNAdapter(nn.Module):
    """Delta(x): the MPO path fused with the quantum circuit, computed in float32 or wider."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: QWTHNConfig,
        circuit: Circuit | None = None,
    ) -> None:
        super().__init__()
        r, n = config.rank, config.n_qubits
        mpo = {"bond_dim": config.mpo_bond_dim, "num_cores": config.mpo_num_cores}
        self.mpo_down = MPOLinear(
            in_features,
            r,
            in_modes=config.modes_for(in_features),
            out_modes=config.modes_for(r),
            **mpo,
        )
        self.fusion = config.fusion
        self.squash = config.angle_squash == "pi_tanh"
        if self.fusion != "mpo":  # the ablation without a circuit has no QNN path at all
            self.angle_proj = (
                nn.Linear(r, n) if config.resolved_angle_map() == "linear" else nn.Identity()
            )
            if circuit is None:
                circuit = build_ansatz(config.ansatz, n, config.n_layers)
            self.qnn = QuantumLayer(
                circuit, config.qnn_init, config.qnn_init_scale, config.quantum_backend
            )
            self.quantum_proj = nn.Linear(circuit.n_observables, r)
        if self.fusion == "weighted":
            # f = a * P(q) starts near a, so the MPO path learns from step 1 and the QNN modulates.
            nn.init.ones_(self.quantum_proj.bias)
        elif self.fusion == "linear":
            self.fusion_alpha = nn.Parameter(torch.tensor(float(config.fusion_alpha)))
            self.fusion_beta = nn.Parameter(torch.tensor(float(config.fusion_beta)))
        self.mpo_up = MPOLinear(
            r,
            out_features,
            in_modes=config.modes_for(r),
            out_modes=config.modes_for(out_features),
            zero_last_core=config.init_delta == "zero",
            **mpo,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # Mixed precision (bf16 autocast) stops here: the circuit kernels take float32/64
            # only, and the adapter is small enough that full precision costs nothing.
            with torch.autocast(x.device.type, enabled=False):
                return self._delta(x)
        return self._delta(x)

    def _delta(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        x = x.to(compute)
        a = self.mpo_down(x)
        if self.fusion == "mpo":
            return self.mpo_up(a)
        z = self.angle_proj(a)
        if self.squash:
            z = math.pi * torch.tanh(z)
        p = self.quantum_proj(self.qnn(z))
        if self.fusion == "weighted":
            f = a * p
        elif self.fusion == "linear":
            f = self.fusion_alpha * a + self.fusion_beta * p
        else:  # "qnn"
            f = p
        return self.mpo_up(f)


class QWTHNLayer(nn.Module):
    """A frozen ``nn.Linear``/``Conv1D`` plus ``scaling * Delta(dropout(x))``."""

    def __init__(
        self, base_layer: nn.Module, config: QWTHNConfig, circuit: Circuit | None = None
    ) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base_layer)
        self.base_layer = base_layer
        self.qwthn = QWTHNAdapter(d_in, d_out, config, circuit)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        delta = self.qwthn(self.dropout(x))
        return out + (self.scaling * delta).to(out.dtype)

    def __getattr__(self, name: str):
        # transformers code reads e.g. ``q_proj.weight``; answer from the wrapped layer (as PEFT).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)
