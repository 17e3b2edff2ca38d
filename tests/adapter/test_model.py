import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from qwthn_onnx.adapter import (
    AdapterError,
    QWTHNConfig,
    QWTHNLayer,
    QWTHNModel,
    find_target_modules,
    load_adapter,
)
from qwthn_onnx.demo import DEMO_ARCHITECTURES
from qwthn_onnx.mpo import MPOError

SMALL = {"n_qubits": 3, "n_layers": 2, "rank": 4}


@pytest.mark.parametrize("arch", sorted(DEMO_ARCHITECTURES))
def test_step_zero_outputs_equal_base_exactly(tiny_model, batch, arch):
    base = tiny_model(arch)
    reference = copy.deepcopy(base).eval()
    model = QWTHNModel(base, QWTHNConfig(**SMALL)).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("llama", {"q_proj", "v_proj"}), ("qwen2", {"q_proj", "v_proj"}), ("gpt2", {"c_attn"})],
)
def test_default_targets_per_architecture(tiny_model, arch, expected):
    config = QWTHNConfig(**SMALL)
    model = QWTHNModel(tiny_model(arch), config)
    assert {n.rsplit(".", 1)[-1] for n in model.adapted_modules} == expected
    assert set(model.qwthn_config.target_modules) == expected  # recorded for reloads
    assert config.target_modules is None  # the caller's config is not mutated
    assert len(model.adapted_modules) == 2 * len(expected)  # two transformer blocks
    if arch == "gpt2":
        layers = model.adapter_layers().values()
        assert all(isinstance(layer.base_layer, Conv1D) for layer in layers)


def test_only_adapter_parameters_train_and_base_stays_frozen(tiny_model, batch):
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".qwthn." in n for n in trainable)
    base_before = {k: v.clone() for k, v in model.base_state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()
    for k, v in model.base_state_dict().items():
        assert torch.equal(v, base_before[k]), k
    # After the first step the zero core has moved, so every adapter part receives gradient.
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for part in ("mpo_down", "angle_proj", "qnn.weights", "quantum_proj", "mpo_up"):
        assert any(part in n and g is not None and g.abs().sum() > 0 for n, g in grads.items()), (
            part
        )


@pytest.mark.parametrize("fusion", ["weighted", "linear"])
@pytest.mark.parametrize("ansatz", ["paper", "hardware_efficient"])
def test_fusions_and_ansatze_change_the_output_once_trained(tiny_model, batch, fusion, ansatz):
    base = tiny_model("qwen2")
    ref = copy.deepcopy(base).eval()
    cfg = QWTHNConfig(**SMALL, fusion=fusion, ansatz=ansatz, init_delta="normal")
    model = QWTHNModel(base, cfg).eval()
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, ref(**batch).logits)
    layer = next(iter(model.adapter_layers().values()))
    assert hasattr(layer.qwthn, "fusion_alpha") == (fusion == "linear")


@pytest.mark.parametrize(
    ("fusion", "absent"),
    [("mpo", {"angle_proj", "qnn", "quantum_proj"}), ("qnn", {"fusion_alpha", "fusion_beta"})],
)
def test_ablation_fusions_train_one_path_alone(tiny_model, batch, fusion, absent):
    """'mpo': the MPO path alone, no circuit (and no parameters of one); 'qnn': the circuit's
    path alone, f = P(q). Each trains: the loss falls and the output is f through mpo_up."""
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL, fusion=fusion))
    adapter = next(iter(model.adapter_layers().values())).qwthn
    names = {n.split(".")[0] for n, _ in adapter.named_parameters()}
    assert not names & absent
    full = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL))
    # 'qnn' keeps every parameter of the weighted fusion (which has no fusion parameters).
    fewer = model.trainable_parameters() < full.trainable_parameters()
    assert fewer == (fusion == "mpo")
    with torch.no_grad():  # the adapter computes its one path
        x = torch.randn(2, 64)
        a = adapter.mpo_down(x)
        if fusion == "mpo":
            expected = adapter.mpo_up(a)
        else:
            z = torch.pi * torch.tanh(adapter.angle_proj(a))
            expected = adapter.mpo_up(adapter.quantum_proj(adapter.qnn(z)))
        torch.testing.assert_close(adapter(x), expected)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.set_quantum_backend("torch")  # no circuit to configure for 'mpo': nothing to do
    if fusion == "mpo":
        with pytest.raises(AdapterError, match="has no circuit to replace"):
            model.replace_circuit(next(iter(model.adapter_layers())), None)


def test_regex_and_suffix_targets(tiny_model):
    model = tiny_model("llama")
    assert find_target_modules(model, r".*layers\.1\.self_attn\.(q|k)_proj") == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj",
    ]
    assert find_target_modules(model, ["mlp.down_proj"]) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_unknown_targets_list_candidates(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(
        AdapterError, match=r"\['query'\] match no linear layer.*Candidates: \[.*'q_proj'"
    ):
        find_target_modules(model, ["q_proj", "query"])
    with pytest.raises(AdapterError, match=r"match no module.*Candidates"):
        find_target_modules(model, r"nothing.*")
    with pytest.raises(AdapterError, match=r"is a LlamaRMSNorm; QWTHN adapts nn\.Linear"):
        find_target_modules(model, ["input_layernorm"])
    with pytest.raises(AdapterError, match="regex"):
        find_target_modules(model, "q_proj(")
    adapted = QWTHNModel(model, QWTHNConfig(**SMALL))
    with pytest.raises(AdapterError, match="already has a QWTHN adapter"):
        QWTHNModel(adapted.base_model, QWTHNConfig(**SMALL))


def test_impossible_mpo_modes_fail_with_the_dimension(tiny_model):
    with pytest.raises(MPOError, match="multiply to 60, not 64"):
        QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL, mpo_modes={"64": [3, 4, 5]}))


def test_adapter_save_load_round_trip(tmp_path, tiny_model, batch):
    model = QWTHNModel(tiny_model("gpt2"), QWTHNConfig(**SMALL, init_delta="normal")).eval()
    model.save_adapter(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.qwthn.mpo_down.cores.0" in keys
    assert "base_model.model.transformer.h.1.attn.c_attn.qwthn.qnn.weights" in keys
    assert all(k.startswith("base_model.model.") and ".qwthn." in k for k in keys)
    loaded = load_adapter(tiny_model("gpt2"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(
        AdapterError, match=r"\['c_attn'\] match no module of this LlamaForCausalLM"
    ):
        load_adapter(tiny_model("llama"), tmp_path)
    state = model.adapter_state_dict()
    key = next(iter(state))
    with pytest.raises(AdapterError, match=r"do not fit this model: missing \["):
        loaded.load_adapter_state_dict({k: v for k, v in state.items() if k != key})
    with pytest.raises(AdapterError, match=f"{key} has shape"):
        loaded.load_adapter_state_dict({**state, key: torch.zeros(3)})
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="not a valid safetensors"):
        load_adapter(tiny_model("gpt2"), tmp_path)


def test_adapter_saves_replace_the_pair_and_refuse_foreign_directories(tmp_path, tiny_model):
    """Config and weights are replaced together (one directory swap), so a killed save never
    pairs new weights with an old config; a directory with other files is not ours to replace."""
    model = QWTHNModel(tiny_model("gpt2"), QWTHNConfig(**SMALL))
    target = tmp_path / "adapter"
    model.save_adapter(target)
    bigger = QWTHNModel(tiny_model("gpt2"), QWTHNConfig(**{**SMALL, "rank": 8}))
    bigger.save_adapter(target)
    assert load_adapter(tiny_model("gpt2"), target).qwthn_config.rank == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(AdapterError, match=r"holds files that are not a QWTHN adapter \(notes"):
        model.save_adapter(target)
    assert (target / "notes.txt").read_text() == "mine"
    with pytest.raises(AdapterError, match="is a file, not a directory"):
        model.save_adapter(target / "notes.txt")


def test_layer_forwards_attributes_of_the_wrapped_linear(tiny_model):
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL))
    layer = model.base_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, QWTHNLayer)
    assert layer.weight is layer.base_layer.weight and layer.in_features == 64


def test_parameter_report_matches_counts_and_peft(tiny_model):
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL))
    report = model.parameter_report(lora_ranks=(4, 8))
    assert report.qwthn_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(report.qwthn_per_part.values()) == report.qwthn_trainable
    # LoRA on q_proj (64->64) and v_proj (64->32) in two layers: r * (d_in + d_out) each.
    assert report.lora_trainable == {r: 2 * r * ((64 + 64) + (64 + 32)) for r in (4, 8)}
    text = report.render()
    assert "LoRA r=8 (peft)" in text and f"{report.qwthn_trainable:,}" in text
    assert report.reduction_vs_lora() == pytest.approx(
        1 - report.qwthn_trainable / report.lora_trainable[4]
    )


def test_adapted_model_deep_copies_with_identical_outputs(tiny_model, batch):
    model = QWTHNModel(tiny_model("gpt2"), QWTHNConfig(**SMALL, init_delta="normal")).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(**batch).logits, model(**batch).logits)
    assert twin.adapted_modules == model.adapted_modules
