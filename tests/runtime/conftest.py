import pytest

from exporters import ExportOptions, export_model
from tests.exporters.conftest import make_model_pt


@pytest.fixture(scope="session")
def export(tmp_path_factory):
    """A tiny llama with adapters, exported (no verification: the exporter tests do that)."""
    root = tmp_path_factory.mktemp("runtime_export")
    path, _ = make_model_pt(root / "model.pt", "llama")
    return export_model(path, root / "export", ExportOptions(verify=False)).directory
