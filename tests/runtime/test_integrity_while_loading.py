"""The weight data of an export is checked while onnxruntime loads it (the rest before): a
damaged ``model.onnx.data`` still refuses the session, with the integrity error, not
onnxruntime's."""

from __future__ import annotations

import shutil

import pytest

from exporters import ExportOptions, export_model
from qwthn_onnx.runtime import ExportIntegrityError
from qwthn_onnx.runtime.export_dir import MODEL_DATA, check_integrity
from qwthn_onnx.runtime.session import QWTHNSession
from tests.exporters.conftest import make_model_pt


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    path, _ = make_model_pt(root / "model.pt", "llama")
    options = ExportOptions(verify=False, external_data=True)
    return export_model(path, root / "export", options).directory


def _copy(external, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(external, copy)
    return copy


def test_an_intact_export_loads_and_its_parts_check(external):
    QWTHNSession(external)
    for weights in (None, False, True):
        check_integrity(external, weights=weights)


def test_a_flipped_weight_byte_refuses_the_session(external, tmp_path):
    copy = _copy(external, tmp_path)
    data = bytearray((copy / MODEL_DATA).read_bytes())
    data[len(data) // 2] ^= 0x10
    (copy / MODEL_DATA).write_bytes(bytes(data))
    check_integrity(copy, weights=False)  # the structure is intact: onnxruntime may parse it
    with pytest.raises(ExportIntegrityError, match=r"model\.onnx\.data: contents differ"):
        QWTHNSession(copy)


def test_truncated_weights_give_the_integrity_error_not_onnxruntimes(external, tmp_path):
    copy = _copy(external, tmp_path)
    data = (copy / MODEL_DATA).read_bytes()
    (copy / MODEL_DATA).write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportIntegrityError, match=r"model\.onnx\.data: \d+ bytes, manifest says"):
        QWTHNSession(copy)
