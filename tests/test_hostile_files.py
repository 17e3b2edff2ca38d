"""Hostile and damaged files through every public door: pickles that would run code, truncated
and bit-flipped model.pt / model.onnx / QASM files, tensors that do not fit their config.

Each must end in a clear refusal (a CLI: non-zero exit, one ``error:`` line, no traceback), run
nothing, allocate nothing absurd, and leave the process able to load the next valid file.
"""

import builtins
import io
import os
import random
import re
import shutil
import subprocess
import zipfile

import pytest
import torch

from exporters.cli import USER_ERRORS, export_main, import_main, qasm_main
from exporters.onnx_import import import_onnx
from exporters.qasm import QasmError, qasm3_to_circuit
from fuzz.python_targets import tiny_artifacts
from qwthn_onnx import ModelFileError, load_model_pt
from qwthn_onnx.checkpoint import read_model_pt


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model.pt and its export (model.onnx, qasm/*.qasm), built once."""
    return tiny_artifacts(tmp_path_factory.mktemp("hostile") / "artifacts")


def _payload(files):
    return torch.load(files / "model.pt", weights_only=True)


def _one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error: ")], stderr


def _cli(name, *args):
    """A console script in a fresh process (what a user runs)."""
    return subprocess.run([shutil.which(name), *map(str, args)], capture_output=True, text=True)


# --------------------------------------------------------------------------------------------
# Pickles that would execute code
# --------------------------------------------------------------------------------------------


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _hide(payload, where, exploit):
    if where == "payload":
        payload["extra"] = exploit
    elif where == "tokenizer":
        name = next(iter(payload["tokenizer"]["files"]))
        payload["tokenizer"]["files"][name] = exploit
    elif where == "training":
        payload["training"]["losses"] = [1.0, exploit]
    elif where == "adapter_state_dict":
        key = next(iter(payload["adapter"]["state_dict"]))
        payload["adapter"]["state_dict"][key] = exploit
    else:  # "base_config": in place of a string deep in the base model part
        payload["base_model"]["config_json"] = exploit
    return payload


WHERE = ["payload", "tokenizer", "training", "adapter_state_dict", "base_config"]


@pytest.mark.parametrize("kind", [_System, _Exec])
@pytest.mark.parametrize("where", WHERE)
def test_code_running_pickle_is_refused_by_the_loaders_and_nothing_runs(
    files, tmp_path, kind, where
):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_hide(_payload(files), where, kind(marker)), evil)
    for load in (read_model_pt, load_model_pt):
        with pytest.raises(ModelFileError, match="refused, the file needs arbitrary unpickling"):
            load(evil)
    assert not marker.exists()
    assert load_model_pt(files / "model.pt").model is not None  # the next valid load works


@pytest.mark.parametrize("where", ["tokenizer", "adapter_state_dict"])
def test_code_running_pickle_is_refused_by_the_clis(files, tmp_path, where, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_hide(_payload(files), where, _System(marker)), evil)
    program = next((files / "onnx" / "qasm").glob("*.qasm"))
    assert export_main([str(evil), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert qasm_main(["load", str(evil), str(program), "--layer", "x", "-o", "o.pt"]) == 2
    err = capsys.readouterr().err
    assert err.count("refused, the file needs arbitrary unpickling") == 2
    child = _cli("qwthn-export", evil, "-o", tmp_path / "out2")
    assert child.returncode == 2
    _one_error_line(child.stderr)
    assert not marker.exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Truncated and bit-flipped files
# --------------------------------------------------------------------------------------------


def _offsets(size: int) -> list[int]:
    return sorted({0, 1, 2, 4, 16, 64, 512, size - 1, *range(0, size, max(1, size // 24))})


def _flipped(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_truncated_model_pt_is_refused_at_every_offset(files, tmp_path):
    data = (files / "model.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    for offset in _offsets(len(data)):
        cut.write_bytes(data[:offset])
        with pytest.raises(ModelFileError, match=r"cut\.pt"):
            load_model_pt(cut)
    assert load_model_pt(files / "model.pt").tokenizer is not None


def _tensors(payload: dict) -> dict[str, torch.Tensor]:
    base, adapter = payload["base_model"]["state_dict"], payload["adapter"]["state_dict"]
    return {**{f"base.{k}": v for k, v in base.items()}, **adapter}


def test_bit_flipped_model_pt_is_refused_or_unchanged(files, tmp_path):
    """torch.load does not check the zip's CRC-32s, we do: a flip in any member's data is
    refused; the flips that load hit bytes no member holds (zip padding, timestamps), so the
    weights are exactly the original ones, never silently other ones."""
    data = (files / "model.pt").read_bytes()
    original = _tensors(read_model_pt(files / "model.pt"))
    flipped = tmp_path / "flipped.pt"
    refused = 0
    for seed in range(40):
        flipped.write_bytes(_flipped(data, seed))
        try:
            loaded = _tensors(read_model_pt(flipped))
        except ModelFileError:
            refused += 1
            continue
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[k], original[k]) for k in original), seed
    assert refused >= 30  # most bytes of the file are member data
    assert load_model_pt(files / "model.pt").model is not None


def test_damaged_model_pt_through_the_export_cli(files, tmp_path):
    data = (files / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    child = _cli("qwthn-export", tmp_path / "cut.pt", "-o", tmp_path / "out")
    assert child.returncode == 2
    _one_error_line(child.stderr)
    assert "truncated or damaged" in child.stderr and not (tmp_path / "out").exists()


def test_truncated_and_bit_flipped_onnx_is_refused_by_the_importer(files, tmp_path, capsys):
    data = (files / "onnx" / "model.onnx").read_bytes()
    damaged = tmp_path / "model.onnx"
    variants = [data[:o] for o in _offsets(len(data))] + [_flipped(data, s) for s in range(12)]
    refused = 0
    for variant in variants:
        damaged.write_bytes(variant)
        try:
            import_onnx(damaged)
        except USER_ERRORS:
            refused += 1
    assert refused >= len(_offsets(len(data)))  # every truncation at least
    assert import_main([str(damaged.with_name("absent.onnx")), "-o", str(tmp_path / "a.pt")]) == 2
    damaged.write_bytes(data[: len(data) // 2])
    assert import_main([str(damaged), "-o", str(tmp_path / "b.pt")]) == 2
    _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b.pt").exists()
    assert import_onnx(files / "onnx" / "model.onnx").model is not None


def test_damaged_onnx_through_the_run_verify_and_import_clis(files, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(files / "onnx", export)
    model = export / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    for name, args in (
        ("qwthn-run", [export, "-p", "1+1="]),
        ("qwthn-verify", [export]),
        ("qwthn-import", [export, "-o", tmp_path / "back.pt"]),
    ):
        child = _cli(name, *args)
        assert child.returncode == 2, (name, child.stderr[-2000:])
        _one_error_line(child.stderr)


def test_truncated_and_bit_flipped_qasm_is_refused(files, tmp_path, capsys):
    program = next((files / "onnx" / "qasm").glob("*.qasm"))
    text = program.read_text()
    for offset in _offsets(len(text)):
        try:
            qasm3_to_circuit(text[:offset])
        except QasmError:
            continue  # a prefix that is a whole program (cut in a comment) may still read
    for seed in range(40):
        variant = _flipped(text.encode(), seed).decode("utf-8", errors="replace")
        try:
            qasm3_to_circuit(variant)
        except QasmError:
            continue
    cut = tmp_path / "cut.qasm"
    cut.write_text(text[: len(text) // 2])
    binary = tmp_path / "binary.qasm"
    binary.write_bytes(b"\xff\xfe" + text.encode())
    for bad in (cut, binary):
        args = ["load", str(files / "model.pt"), str(bad), "--layer", "x", "-o", "o.pt"]
        assert qasm_main(args) == 2
        _one_error_line(capsys.readouterr().err)
    assert qasm3_to_circuit(text).n_qubits == 2


# --------------------------------------------------------------------------------------------
# Tensors that do not fit their config
# --------------------------------------------------------------------------------------------


def _saved(payload, path):
    torch.save(payload, path)
    return path


def test_adapter_tensor_of_the_wrong_shape_is_refused(files, tmp_path):
    payload = _payload(files)
    key = next(iter(payload["adapter"]["state_dict"]))
    payload["adapter"]["state_dict"][key] = torch.zeros(3, 5)
    with pytest.raises(ModelFileError, match=r"adapter .* does not fit its own config.*\[3, 5\]"):
        load_model_pt(_saved(payload, tmp_path / "bad.pt"))


def test_base_tensor_of_the_wrong_shape_is_refused_before_allocation(files, tmp_path):
    payload = _payload(files)
    state = payload["base_model"]["state_dict"]
    key = "model.embed_tokens.weight"
    state[key] = state[key][:, :8].clone()
    with pytest.raises(ModelFileError, match=rf"base weight {key} has shape \[\d+, 8\]"):
        load_model_pt(_saved(payload, tmp_path / "bad.pt"))


def test_config_asking_for_absurd_sizes_is_refused_before_allocation(files, tmp_path):
    """hidden_size 2**40 would need petabytes: the refusal names the shapes (computed on the
    meta device), where an attempted allocation would have failed with another error."""
    payload = _payload(files)
    payload["base_model"]["config_json"] = payload["base_model"]["config_json"].replace(
        '"hidden_size": 16', '"hidden_size": 1099511627776'
    )
    with pytest.raises(ModelFileError, match=r"has shape \[\d+, 16\], the stored config builds"):
        load_model_pt(_saved(payload, tmp_path / "wide.pt"))
    payload = _payload(files)
    payload["base_model"]["config_json"] = payload["base_model"]["config_json"].replace(
        '"num_hidden_layers": 1', '"num_hidden_layers": 1000000000'
    )
    with pytest.raises(ModelFileError, match="asks for 1000000000 layers"):
        load_model_pt(_saved(payload, tmp_path / "deep.pt"))


def test_tensor_claiming_absurd_elements_is_refused(files, tmp_path):
    """A broadcast tensor claims 2**40 elements over one stored value: refused by shape, never
    materialised; the same size over a real (strided) storage is refused as damaged."""
    payload = _payload(files)
    key = next(iter(payload["adapter"]["state_dict"]))
    payload["adapter"]["state_dict"][key] = torch.zeros(1).expand(2**40)
    path = _saved(payload, tmp_path / "huge.pt")
    with pytest.raises(ModelFileError, match=r"\[1099511627776\]"):
        load_model_pt(path)
    with zipfile.ZipFile(path) as archive:  # stride 0 -> 1: the storage cannot hold the size
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    pkl = next(name for name in members if name.endswith("data.pkl"))
    # the stride tuple (0,) after the size tuple and its memo put: the only zero stride
    members[pkl], count = re.subn(
        rb"(\x85(?:q.|r....))K\x00\x85",
        lambda m: m[1] + b"K\x01\x85",
        members[pkl],
        flags=re.DOTALL,
    )
    assert count == 1
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    (tmp_path / "strided.pt").write_bytes(out.getvalue())
    with pytest.raises(ModelFileError, match="truncated or damaged"):
        load_model_pt(tmp_path / "strided.pt")


def test_damaged_tokenizer_files_are_refused(files, tmp_path):
    payload = _payload(files)
    payload["tokenizer"]["files"]["tokenizer.json"] = '{"version": "1.0", "post_processor": 7}'
    with pytest.raises(ModelFileError, match="the stored tokenizer files do not load"):
        load_model_pt(_saved(payload, tmp_path / "tok.pt"))
