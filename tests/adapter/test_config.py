import json

import pytest

from qwthn_onnx.adapter import ConfigError, QWTHNConfig


def test_defaults_follow_the_paper_circuit():
    c = QWTHNConfig()
    assert (c.n_qubits, c.n_layers, c.ansatz, c.fusion) == (10, 10, "paper", "weighted")
    assert c.scaling == c.alpha / c.rank
    assert c.resolved_angle_map() == "linear"
    assert QWTHNConfig(rank=10).resolved_angle_map() == "identity"


def test_round_trip_through_json(tmp_path):
    c = QWTHNConfig(target_modules=["q_proj"], rank=4, fusion="linear", mpo_modes={64: [4, 4, 4]})
    c.save(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["adapter_type"] == "QWTHN" and data["mpo_modes"] == {"64": [4, 4, 4]}
    assert QWTHNConfig.load(tmp_path) == c


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"n_layers": -1}, "n_layers"),
        ({"mpo_bond_dim": 2.5}, "mpo_bond_dim"),
        ({"n_qubits": 1}, "n_qubits"),
        ({"fusion": "sum"}, "fusion"),
        ({"ansatz": "qaoa"}, "ansatz"),
        ({"angle_map": "identity", "rank": 8, "n_qubits": 4}, "angle_map"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": []}, "target_modules"),
        ({"mpo_modes": {"64": [8, 8]}}, "mpo_modes"),
        ({"quantum_backend": "qpu"}, "quantum_backend"),
    ],
)
def test_impossible_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        QWTHNConfig(**kwargs)


def test_unknown_fields_and_wrong_type_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown adapter config fields \['ranks'\]"):
        QWTHNConfig.from_dict({"ranks": 4})
    with pytest.raises(ConfigError, match="adapter_type is 'LORA'"):
        QWTHNConfig.from_dict({"adapter_type": "LORA"})
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QWTHNConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        QWTHNConfig.load(tmp_path / "missing")
