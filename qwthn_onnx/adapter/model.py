"""Attach QWTHN adapters to a transformers model, report parameters, save/load the adapter.

The on-disk adapter follows PEFT's layout: ``adapter_config.json`` and
``adapter_model.safetensors`` with keys ``base_model.model.<module path>.qwthn.<param>``.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from qwthn_onnx._io import atomic_directory, atomic_path
from qwthn_onnx.adapter.config import CONFIG_FILE_NAME, QWTHNConfig
from qwthn_onnx.adapter.layer import SUPPORTED_LAYER_TYPES, QuantumLayer, QWTHNLayer
from qwthn_onnx.circuit import Circuit

__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "AdapterError",
    "ParameterReport",
    "QWTHNModel",
    "check_adapter_directory",
    "default_target_modules",
    "find_target_modules",
    "inject_adapters",
    "load_adapter",
]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_KEY_PREFIX = "base_model.model."
_WEIGHTS_METADATA = {"format": "pt", "adapter": "QWTHN"}


class AdapterError(ValueError):
    """Targets that match nothing, a model that is already adapted, mismatched adapter files."""


def default_target_modules(model: nn.Module) -> list[str]:
    """The architecture's default targets, from peft's table (attention q/v where it exists)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in table:
        raise AdapterError(
            f"no default target modules for model_type {model_type!r}; pass target_modules "
            f"explicitly (names or a regex). Candidates: {_candidate_names(model)}"
        )
    return list(table[model_type])


def _candidate_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the layers QWTHN can adapt (what a user would type)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _adaptable(m)}
    return sorted(names)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, SUPPORTED_LAYER_TYPES) and not isinstance(module, QWTHNLayer)


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_target_modules(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Full names of the adaptable modules matching ``targets`` (PEFT's matching rules).

    A list matches a name exactly or as a dotted suffix; a string is a regex that must match the
    whole name. Raises AdapterError listing the candidates when nothing matches, or when a
    matched module is not a linear layer.
    """
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise AdapterError(f"target_modules regex {targets!r} is invalid: {e}") from e
    matched, wrong_type = [], []
    for name, module in model.named_modules():
        if not name or not _matches(name, targets):
            continue
        if isinstance(module, QWTHNLayer):
            raise AdapterError(f"module {name!r} already has a QWTHN adapter")
        (matched if _adaptable(module) else wrong_type).append((name, module))
    if wrong_type and not matched:
        name, module = wrong_type[0]
        raise AdapterError(
            f"target {name!r} is a {type(module).__name__}; QWTHN adapts nn.Linear and Conv1D "
            f"layers. Candidates in this model: {_candidate_names(model)}"
        )
    if not matched:
        raise AdapterError(
            f"target_modules {targets!r} match no module of this "
            f"{type(model).__name__}. Candidates: {_candidate_names(model)}"
        )
    if not isinstance(targets, str):
        found = {t for t in targets if any(_matches(n, [t]) for n, _ in matched)}
        missing = [t for t in targets if t not in found]
        if missing:
            raise AdapterError(
                f"target_modules {missing} match no linear layer of this "
                f"{type(model).__name__}. Candidates: {_candidate_names(model)}"
            )
    return [name for name, _ in matched]


def inject_adapters(model: nn.Module, config: QWTHNConfig) -> list[str]:
    """Wrap every target layer of ``model`` in place with a QWTHNLayer; freeze everything else.

    Returns the adapted module names. Adapter parameters are created in float32 (the QNN needs
    it) on the device of the layer they wrap.
    """
    targets = config.target_modules or default_target_modules(model)
    names = find_target_modules(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        device = next(base.parameters()).device
        layer = QWTHNLayer(base, config, config.circuit_for(name))
        setattr(parent, child, layer.to(device))
    return names


@dataclass(frozen=True)
class ParameterReport:
    """Trainable-parameter counts: QWTHN against LoRA (peft) on the same targets."""

    base_parameters: int
    qwthn_trainable: int
    qwthn_per_part: dict[str, int]
    lora_trainable: dict[int, int]  # rank -> trainable parameters
    rank: int
    targets: list[str]

    def reduction_vs_lora(self, rank: int | None = None) -> float:
        """Fraction fewer trainable parameters than LoRA at ``rank`` (default: the same r)."""
        lora = self.lora_trainable[rank or self.rank]
        return 1.0 - self.qwthn_trainable / lora

    def render(self) -> str:
        """A rich table as plain text (what the CLI prints)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Trainable parameters ({len(self.targets)} adapted modules)")
        for col in ("method", "trainable", "% of base", "vs QWTHN"):
            table.add_column(col, justify="right" if col != "method" else "left")

        def row(label: str, n: int) -> None:
            ratio = f"{n / self.qwthn_trainable:.2f}x" if self.qwthn_trainable else "-"
            table.add_row(label, f"{n:,}", f"{100 * n / self.base_parameters:.3f}%", ratio)

        row(f"QWTHN r={self.rank}", self.qwthn_trainable)
        for part, n in self.qwthn_per_part.items():
            table.add_row(f"  {part}", f"{n:,}", "", "")
        for r, n in sorted(self.lora_trainable.items()):
            row(f"LoRA r={r} (peft)", n)
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(table)
        red = self.reduction_vs_lora()
        verdict = "fewer" if red >= 0 else "more"
        return console.export_text() + (
            f"QWTHN trains {abs(red):.1%} {verdict} parameters than LoRA at the same rank "
            f"r={self.rank}.\n"
        )


def _lora_trainable(model: nn.Module, targets: list[str], ranks: list[int]) -> dict[int, int]:
    """Count what peft's LoRA would train, on a meta-device twin of the base (no memory)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    counts = {}
    for r in ranks:
        with torch.device("meta"):
            twin = AutoModelForCausalLM.from_config(model.config)
        with warnings.catch_warnings():  # peft calls transformers APIs deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            lora = get_peft_model(twin, LoraConfig(r=r, target_modules=targets))
        counts[r] = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return counts


class QWTHNModel(nn.Module):
    """A transformers model with QWTHN adapters: forward/generate delegate to the base model."""

    def __init__(self, base_model: nn.Module, config: QWTHNConfig) -> None:
        super().__init__()
        if config.target_modules is None:  # record the defaults, so a reload adapts the same
            config = dataclasses.replace(config, target_modules=default_target_modules(base_model))
        self.base_model = base_model
        self.qwthn_config = config
        self.adapted_modules = inject_adapters(base_model, config)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    @property
    def config(self):
        return self.base_model.config

    def adapter_layers(self) -> dict[str, QWTHNLayer]:
        return {name: self.base_model.get_submodule(name) for name in self.adapted_modules}

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Base weights under their original names (as the unadapted model would save them)."""
        out = {}
        for key, value in self.base_model.state_dict().items():
            if ".qwthn." in key:
                continue
            out[key.replace(".base_layer.", ".")] = value
        return out

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights with PEFT-like keys ``base_model.model.<path>.qwthn.<param>``.

        Under FSDP2 the parameters are shards (DTensors): they are gathered whole, which is a
        collective, so every rank must call this (``save_adapter`` does it for you)."""
        return {
            _KEY_PREFIX + key: _whole(value.detach()).clone()
            for key, value in self.base_model.state_dict().items()
            if ".qwthn." in key
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter weights; every key must match, in name and shape."""
        own = self.adapter_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise AdapterError(
                f"adapter weights do not fit this model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise AdapterError(
                    f"adapter weight {key} has shape {list(value.shape)}, model expects "
                    f"{list(own[key].shape)}"
                )
        stripped = {k[len(_KEY_PREFIX) :]: v for k, v in state.items()}
        self.base_model.load_state_dict(stripped, strict=False)

    def save_adapter(self, directory: str | Path, *, is_main_process: bool = True) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` as one atomic directory,
        so an interrupted save never pairs new weights with an old config.

        In a distributed run call it on every rank (FSDP2 shards are gathered collectively)
        and let only the main process write, as with ``save_pretrained(is_main_process=...)``.
        """
        directory = Path(directory)
        if is_main_process:
            check_adapter_directory(directory)
        state = self.adapter_state_dict()
        if is_main_process:
            with atomic_directory(directory) as tmp:
                _write_adapter_files(tmp, state, self.qwthn_config)
        return directory

    def write_adapter_files(self, directory: str | Path) -> None:
        """Write the adapter's two files into an existing directory that holds other files too
        (a Trainer checkpoint, next to its optimizer state), each file replaced atomically.
        ``save_adapter`` is for a directory of the adapter's own."""
        _write_adapter_files(Path(directory), self.adapter_state_dict(), self.qwthn_config)

    def load_adapter_weights(self, directory: str | Path) -> None:
        """Load the weights of the adapter saved in ``directory`` (by ``save_adapter`` or a
        Trainer checkpoint) into this model, e.g. to resume training. Its configuration must
        match this model's (the simulator choice aside), so that the weights mean the same."""
        config, state = _read_adapter(directory)
        differ = [
            f.name
            for f in dataclasses.fields(QWTHNConfig)
            if f.name != "quantum_backend"
            and getattr(config, f.name) != getattr(self.qwthn_config, f.name)
        ]
        if differ:
            raise AdapterError(
                f"the adapter in {directory} was configured differently from this model "
                f"(fields {differ}); attach it to a fresh base model with load_adapter()"
            )
        self.load_adapter_state_dict(state)

    def replace_circuit(self, module: str, circuit: Circuit) -> None:
        """Run ``circuit`` in adapted ``module`` instead of its current one (e.g. a program
        edited or optimised by another tool and read back from OpenQASM).

        It must take the same angles and give the same observables' count. Trained weights are
        kept when the new circuit has as many (weights kept as ``theta_j`` inputs); a circuit
        with weights baked in as constants has none. The override is recorded in the config,
        so model.pt, export and import carry it.
        """
        layers = self.adapter_layers()
        if module not in layers:
            raise AdapterError(f"{module!r} is not an adapted module; adapted: {list(layers)}")
        if layers[module].qwthn.fusion == "mpo":
            raise AdapterError(f"{module!r} has no circuit to replace (fusion='mpo')")
        old = layers[module].qwthn.qnn
        if (circuit.n_inputs, circuit.n_observables) != (
            old.circuit.n_inputs,
            old.circuit.n_observables,
        ):
            raise AdapterError(
                f"the new circuit of {module} takes {circuit.n_inputs} angles and gives "
                f"{circuit.n_observables} observables; the adapter needs "
                f"{old.circuit.n_inputs} and {old.circuit.n_observables}"
            )
        if circuit.n_weights not in (0, old.circuit.n_weights):
            raise AdapterError(
                f"the new circuit of {module} has {circuit.n_weights} weights; use 0 (values "
                f"as constants) or the current {old.circuit.n_weights} (kept as trained)"
            )
        new = QuantumLayer(circuit, backend=old.backend).to(old.weights.device)
        new.estimator = old.estimator
        with torch.no_grad():
            if circuit.n_weights:
                new.weights.copy_(old.weights)
        new.weights.requires_grad_(old.weights.requires_grad)
        layers[module].qwthn.qnn = new
        circuits = dict(self.qwthn_config.circuits or {})
        circuits[module] = circuit.to_dict()
        self.qwthn_config = dataclasses.replace(self.qwthn_config, circuits=circuits)

    def set_quantum_backend(
        self,
        backend: str,
        *,
        shots: int | None = 1024,
        simulator: str = "basic",
        seed: int | None = None,
    ) -> None:
        """Choose how every adapter's circuit runs: ``"torch"``, ``"cpp"``, ``"auto"`` (exact
        simulators), or ``"shots"``: sampled expectations from ``shots`` runs on a qiskit
        ``simulator`` ("basic" or "aer"), gradients by parameter shift, as on a QPU.
        The choice is not saved with the model."""
        estimator = None
        if backend == "shots":
            from qwthn_onnx.circuit.sampling import ShotEstimator

            estimator = ShotEstimator(shots=shots, backend=simulator, seed=seed)
        elif backend not in ("torch", "cpp", "auto"):
            raise AdapterError(
                f"quantum backend {backend!r} is not one of 'torch', 'cpp', 'auto', 'shots'"
            )
        for layer in self.adapter_layers().values():
            if layer.qwthn.fusion == "mpo":  # the ablation without a circuit
                continue
            qnn = layer.qwthn.qnn
            qnn.estimator = estimator
            if estimator is None:
                qnn.backend = backend

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self, lora_ranks: tuple[int, ...] = (4, 8, 16)) -> ParameterReport:
        parts: dict[str, int] = {}
        for layer in self.adapter_layers().values():
            for name, child in layer.qwthn.named_children():
                n = sum(p.numel() for p in child.parameters())
                parts[name] = parts.get(name, 0) + n
        fusion = sum(
            p.numel()
            for layer in self.adapter_layers().values()
            for name, p in layer.qwthn.named_parameters(recurse=False)
        )
        if fusion:
            parts["fusion (alpha, beta)"] = fusion
        ranks = sorted({*lora_ranks, self.qwthn_config.rank})
        return ParameterReport(
            base_parameters=sum(
                p.numel() for n, p in self.base_model.named_parameters() if ".qwthn." not in n
            ),
            qwthn_trainable=self.trainable_parameters(),
            qwthn_per_part={k: v for k, v in parts.items() if v},
            lora_trainable=_lora_trainable(self.base_model, self.adapted_modules, ranks),
            rank=self.qwthn_config.rank,
            targets=list(self.adapted_modules),
        )


def check_adapter_directory(directory: str | Path) -> None:
    """Fail before any work when ``directory`` cannot become an adapter directory: it is a
    file, or holds files that are not an adapter's (a save replaces the whole directory)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AdapterError(f"{directory} is a file, not a directory: choose a directory path")
    if directory.is_dir():
        ours = (CONFIG_FILE_NAME, ADAPTER_WEIGHTS_NAME)
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in ours)
        if foreign:
            raise AdapterError(
                f"{directory} holds files that are not a QWTHN adapter ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); saving replaces the whole directory, "
                "so choose a new or empty one, or remove them"
            )


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2 shard (a DTensor; gathering it is a collective), else itself."""
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.full_tensor()
    return tensor


def _write_adapter_files(
    directory: Path, state: dict[str, torch.Tensor], config: QWTHNConfig
) -> None:
    # atomic_path for the file mode too: safetensors creates owner-only (0600) files
    with atomic_path(directory / ADAPTER_WEIGHTS_NAME) as weights:
        save_file(state, weights, metadata=_WEIGHTS_METADATA)
    config.save(directory)


def _read_adapter(directory: str | Path) -> tuple[QWTHNConfig, dict[str, torch.Tensor]]:
    directory = Path(directory)
    config = QWTHNConfig.load(directory)
    path = directory / ADAPTER_WEIGHTS_NAME
    try:
        state = load_file(path)
    except FileNotFoundError as e:
        raise AdapterError(f"{path} not found: save the adapter with save_adapter()") from e
    except SafetensorError as e:
        raise AdapterError(f"{path} is not a valid safetensors file: {e}") from e
    return config, state


def load_adapter(base_model: nn.Module, directory: str | Path) -> QWTHNModel:
    """Attach the adapter saved in ``directory`` to ``base_model`` (PEFT's from_pretrained).
    A Trainer checkpoint directory of a QWTHN model works too."""
    config, state = _read_adapter(directory)
    model = QWTHNModel(base_model, config)
    model.load_adapter_state_dict(state)
    return model
