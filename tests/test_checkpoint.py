import pathlib

import pytest
import torch

from qwthn_onnx import ModelFileError, QWTHNConfig, QWTHNModel, load_model_pt, save_model_pt
from qwthn_onnx.checkpoint import FORMAT_NAME, read_model_pt

SMALL = {"n_qubits": 3, "n_layers": 2, "rank": 4, "init_delta": "normal"}


class _Exploit:
    """Unpickling this object touches a marker file: proof that code would have run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def saved(tmp_path, tiny_model, tokenizer):
    model = QWTHNModel(tiny_model("llama"), QWTHNConfig(**SMALL)).eval()
    path = save_model_pt(
        tmp_path / "model.pt", model, tokenizer, {"steps": 3, "losses": [1.0, 0.5]}
    )
    return path, model


def test_round_trip_is_bit_exact(saved, batch, tokenizer):
    path, model = saved
    loaded = load_model_pt(path)
    m = loaded.model.eval()
    for k, v in model.base_state_dict().items():
        assert torch.equal(m.base_state_dict()[k], v), k
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(m.adapter_state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(m(**batch).logits, model(**batch).logits)
    assert loaded.training == {"steps": 3, "losses": [1.0, 0.5]}
    assert loaded.tokenizer.encode("12+3=") == tokenizer.encode("12+3=")
    assert loaded.producer["name"] == "qwthn-onnx"
    assert m.qwthn_config == model.qwthn_config


def test_payload_is_plain_data_loadable_with_weights_only(saved):
    payload = torch.load(saved[0], weights_only=True)
    assert payload["format"] == FORMAT_NAME and payload["format_version"] == 1
    assert payload["base_model"]["architecture"] == "LlamaForCausalLM"
    assert "model.layers.0.self_attn.q_proj.weight" in payload["base_model"]["state_dict"]
    assert read_model_pt(saved[0])["adapter"]["config"]["rank"] == 4


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT_NAME, "payload": _Exploit(marker)}, evil)
    with pytest.raises(ModelFileError, match="refused, the file needs arbitrary unpickling"):
        load_model_pt(evil)
    assert not marker.exists()


def test_damaged_and_foreign_files_are_refused(tmp_path, saved):
    path, _ = saved
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or damaged"):
        read_model_pt(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match=r"text\.pt"):
        read_model_pt(tmp_path / "text.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a qwthn-onnx model file"):
        read_model_pt(tmp_path / "foreign.pt")
    torch.save({"format": FORMAT_NAME, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="format_version 99 is not supported"):
        read_model_pt(tmp_path / "future.pt")
    torch.save(
        {"format": FORMAT_NAME, "format_version": 1, "base_model": {}}, tmp_path / "partial.pt"
    )
    with pytest.raises(ModelFileError, match="missing 'architecture'"):
        read_model_pt(tmp_path / "partial.pt")
    payload = torch.load(path, weights_only=True)
    payload["base_model"]["dtype"] = "load"  # a torch attribute that is not a dtype
    torch.save(payload, tmp_path / "bad_dtype.pt")
    with pytest.raises(ModelFileError, match=r"base_model\.dtype 'load' is not a torch dtype"):
        read_model_pt(tmp_path / "bad_dtype.pt")
    with pytest.raises(ModelFileError, match="no such file"):
        read_model_pt(tmp_path / "absent.pt")


def test_base_reference_instead_of_weights(tmp_path, tiny_model, tokenizer, batch):
    base_dir = tmp_path / "base"
    tiny_model("qwen2").save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = QWTHNModel(AutoModelForCausalLM.from_pretrained(base_dir), QWTHNConfig(**SMALL)).eval()
    path = save_model_pt(tmp_path / "ref.pt", model, tokenizer, base_reference=base_dir)
    payload = read_model_pt(path)
    assert payload["base_model"]["state_dict"] is None
    assert payload["base_model"]["reference"]["path"] == str(base_dir.resolve())
    with torch.no_grad():
        assert torch.equal(load_model_pt(path).model.eval()(**batch).logits, model(**batch).logits)
    weights = next(base_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match=r"changed since model\.pt was written"):
        load_model_pt(path)


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp(saved, monkeypatch):
    path, model = saved
    before = path.read_bytes()

    def broken_save(obj, f):
        pathlib.Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_model_pt(path, model)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
