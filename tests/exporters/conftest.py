import pytest
import torch

from exporters import ExportOptions, export_model
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model

# Small circuits keep the suite fast; init_delta="normal" makes the adapters change the output,
# so a wrong adapter path in the graph cannot hide behind a zero contribution.
ADAPTER = {"n_qubits": 3, "n_layers": 2, "rank": 4, "init_delta": "normal", "alpha": 8.0}


def make_model_pt(path, arch="llama", seed=0, **adapter):
    tokenizer = build_char_tokenizer()
    base = build_tiny_model(tokenizer, arch, seed=seed)
    torch.manual_seed(seed)
    model = QWTHNModel(base, QWTHNConfig(**{**ADAPTER, **adapter})).eval()
    save_model_pt(path, model, tokenizer, {"steps": 0, "note": "test"})
    return path, model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Factory of (model.pt, export dir, torch model) per architecture, exported once."""
    cache = {}

    def get(arch="llama"):
        if arch not in cache:
            root = tmp_path_factory.mktemp(f"export_{arch}")
            path, model = make_model_pt(root / "model.pt", arch)
            result = export_model(path, root / "onnx", ExportOptions())
            cache[arch] = (path, result, model)
        return cache[arch]

    return get
