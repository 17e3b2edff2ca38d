import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters import SUPPORTED_ARCHITECTURES, ExportError, ExportOptions, export_model
from exporters.causal_lm import CacheGeometry, sample_inputs
from exporters.cli import export_main
from exporters.verify import NEW_TOKENS, PROMPTS
from qwthn_onnx import ModelFileError
from qwthn_onnx.ops.schemas import DOMAIN, circuit_from_node, register_schemas
from qwthn_onnx.runtime import session_options
from qwthn_onnx.runtime.export_dir import MANIFEST as MANIFEST_NAME
from qwthn_onnx.runtime.metadata import ExportMetadata
from qwthn_onnx.runtime.signature import past_names, present_names
from tests.exporters.conftest import make_model_pt


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_directory_has_every_file_and_a_checked_model(exported):
    path, result, model = exported("llama")
    out = result.directory
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "manifest.json", "verify.json", "config.json", "tokenizer.json"} <= names
    assert not list(out.parent.glob(".onnx.partial-*")), "temporary directory left behind"
    register_schemas()
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (
        manifest["source"]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    )
    assert manifest["model"]["adapted_layers"] == model.adapted_modules
    assert manifest["options"]["opset"] == 18
    assert manifest["verification"]["passed"] is True
    assert manifest["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size


def test_graph_has_one_custom_node_per_adapter_part_and_fallbacks(exported):
    _, result, model = exported("llama")
    proto = onnx.load(str(result.directory / "model.onnx"))
    ops = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    n_layers = len(model.adapted_modules)
    assert ops == {"QuantumLayer": n_layers, "MPOLinear": 2 * n_layers}
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("", 18), (DOMAIN, 1)}
    assert {f.name for f in proto.functions} == {"QuantumLayer", "MPOLinear"}
    circuits = {circuit_from_node(n) for n in proto.graph.node if n.op_type == "QuantumLayer"}
    assert circuits == {layer.qwthn.qnn.circuit for layer in model.adapter_layers().values()}


def test_inputs_and_outputs_follow_the_kv_cache_conventions(exported):
    _, result, model = exported("llama")
    proto = onnx.load(str(result.directory / "model.onnx"), load_external_data=False)
    inputs = {i.name: _dims(i) for i in proto.graph.input}
    outputs = {o.name: _dims(o) for o in proto.graph.output}
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert inputs["input_ids"] == ["batch", "sequence_length"]
    assert inputs["attention_mask"] == ["batch", "total_sequence_length"]
    assert inputs["position_ids"] == ["batch", "sequence_length"]
    for layer in range(cfg.num_hidden_layers):
        key, value = past_names(layer)
        assert inputs[key] == ["batch", 2, "past_sequence_length", head_dim]
        assert inputs[value] == inputs[key]
        assert outputs[present_names(layer)[0]][:2] == ["batch", 2]
    assert outputs["logits"] == ["batch", "sequence_length", cfg.vocab_size]


def test_metadata_carries_what_the_round_trip_needs(exported):
    _, result, model = exported("llama")
    meta = ExportMetadata.from_model(onnx.load(str(result.directory / "model.onnx")))
    assert meta.adapter_config == model.qwthn_config.to_dict()
    assert meta.base_model["architecture"] == "LlamaForCausalLM"
    assert meta.cache == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}
    assert set(meta.circuits) == set(model.adapted_modules)
    assert meta.training == {"steps": 0, "note": "test"}
    assert "tokenizer.json" in meta.tokenizer_files()
    assert meta.producer["torch"] == str(torch.__version__)
    # every parameter of the adapted model is mapped to an initializer
    params = {n for n, _ in model.base_model.named_parameters(remove_duplicate=False)}
    assert params <= set(meta.weights)


def test_verification_covers_both_runtimes_prefill_decode_chunk_and_generation(exported):
    _, result, _ = exported("llama")
    report = json.loads((result.directory / "verify.json").read_text())
    assert report["passed"] and report["runtimes"] == ["kernels", "fallback"]
    assert report["prompts"] == list(PROMPTS)  # the char tokenizer has no chat template
    kinds = {c["case"].split()[0] for c in report["checks"]}
    assert kinds == {"prefill", "decode", "chunk"}
    assert any(c["case"].startswith("prefill batch=3") for c in report["checks"])  # left-padded
    assert any(c["case"].startswith("prefill batch=1") for c in report["checks"])
    assert {c["output"] for c in report["checks"]} == {"logits", "present"}
    assert max(c["max_abs_error"] for c in report["checks"]) < 1e-4
    logits = [c for c in report["checks"] if c["output"] == "logits"]
    assert all(c["flips"] == 0 and c["positions"] > 0 for c in logits)
    generation = report["generation"]
    assert {(g["runtime"], g["prompt"]) for g in generation} == {
        (r, p) for r in ("kernels", "fallback") for p in range(len(PROMPTS))
    }
    assert all(g["tokens"] == g["expected"] and len(g["tokens"]) == NEW_TOKENS for g in generation)
    assert set(report["criteria"]) >= {"logits", "present", "next_token", "generation"}


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_other_architectures_export_and_verify(exported, arch):
    _, result, model = exported(arch)
    assert result.verification.passed
    assert len(result.adapted_layers) == len(model.adapted_modules) > 0


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _run_both(model_dir, feed):
    kernel = ort.InferenceSession(str(model_dir / "model.onnx"), session_options(1))
    plain = ort.InferenceSession(str(model_dir / "model.onnx"))
    return kernel.run(None, feed), plain.run(None, feed)


def test_kernels_and_fallbacks_agree_with_torch_on_a_long_prompt(exported):
    """Beyond the export-time cases: batch 2, 40 new tokens, 9 cached ones."""
    _, result, model = exported("llama")
    from exporters.causal_lm import CausalLMWithCache

    geometry = CacheGeometry.probe(model.base_model)
    inputs = sample_inputs(geometry, 2, 40, 9, model.config.vocab_size, torch.float32, seed=5)
    with torch.no_grad():
        expected = CausalLMWithCache(model.base_model, geometry)(*inputs.values())
    feed = {k: v.numpy() for k, v in inputs.items()}
    for outputs in _run_both(result.directory, feed):
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=2e-5, rtol=1e-4)


def test_the_adapters_matter_in_the_graph(exported, tmp_path):
    """Zeroing the quantum weights in the file changes the logits: the QNN is really there."""
    _, result, model = exported("llama")
    proto = onnx.load(str(result.directory / "model.onnx"))
    meta = ExportMetadata.from_model(proto)
    qnn = {meta.weights[k] for k in meta.weights if k.endswith("qnn.weights")}
    for init in proto.graph.initializer:
        if init.name in qnn:
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(
                onnx.numpy_helper.to_array(init)), init.name))  # fmt: skip
    onnx.save(proto, str(tmp_path / "zeroed.onnx"))
    feed = {
        k: v.numpy()
        for k, v in sample_inputs(
            CacheGeometry(2, 2, 16), 1, 5, 0, model.config.vocab_size, torch.float32
        ).items()
    }
    a = ort.InferenceSession(str(result.directory / "model.onnx"), session_options(1)).run(
        None, feed
    )
    b = ort.InferenceSession(str(tmp_path / "zeroed.onnx"), session_options(1)).run(None, feed)
    assert np.abs(a[0] - b[0]).max() > 1e-4


def test_no_fallback_export_needs_the_library(tmp_path):
    path, _ = make_model_pt(tmp_path / "model.pt")
    result = export_model(path, tmp_path / "out", ExportOptions(fallback=False))
    proto = onnx.load(str(result.directory / "model.onnx"))
    assert not proto.functions
    assert result.verification.runtimes == ["kernels"]
    with pytest.raises(Exception, match=r"QuantumLayer|MPOLinear|ai\.qwthn"):
        ort.InferenceSession(str(result.directory / "model.onnx"))


def test_export_replaces_an_earlier_export_and_keeps_it_when_failing(exported, tmp_path):
    path, _, _ = exported("llama")
    out = tmp_path / "out"
    export_model(path, out, ExportOptions(verify=False))
    before = _snapshot(out)
    # atol = rtol = 0 cannot pass (kernel and torch round differently): verification fails
    with pytest.raises(ExportError, match=r"verification failed: output .* differs from PyTorch"):
        export_model(path, out, ExportOptions(atol=0.0, rtol=0.0))
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "partial output left behind"
    export_model(path, out, ExportOptions(opset=20, verify=False))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["options"]["opset"] == 20


def test_refuses_to_overwrite_a_directory_that_is_not_an_export(tmp_path):
    path, _ = make_model_pt(tmp_path / "model.pt")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not a qwthn-export output"):
        export_model(path, out)
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("opset", [17, 99])
def test_opset_out_of_range_is_refused(tmp_path, opset):
    with pytest.raises(ExportError, match=f"opset {opset} is out of range"):
        export_model(tmp_path / "model.pt", tmp_path / "out", ExportOptions(opset=opset))


def test_unwritable_output_fails_before_the_model_is_read(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # the model does not exist: the output check must come first
    with pytest.raises(ExportError, match="exists and is not a directory"):
        export_model(tmp_path / "missing.pt", blocker)
    with pytest.raises(ExportError, match="not writable"):
        export_model(tmp_path / "missing.pt", blocker / "sub" / "out")


def test_model_pt_that_is_not_ours_or_damaged_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ModelFileError, match="not a qwthn-onnx model file"):
        export_model(foreign, tmp_path / "a")
    path, _ = make_model_pt(tmp_path / "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated or damaged"):
        export_model(truncated, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_model_pt_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    from tests.test_checkpoint import _Exploit

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "qwthn-onnx/model", "payload": _Exploit(marker)}, evil)
    assert export_main([str(evil), "-o", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named_with_the_supported_list(tmp_path, tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt

    base = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64,
        )
    )  # fmt: skip
    model = QWTHNModel(base, QWTHNConfig(n_qubits=2, n_layers=1, rank=2))
    save_model_pt(tmp_path / "neox.pt", model, tokenizer)
    with pytest.raises(ExportError, match="GPTNeoXForCausalLM is not supported") as info:
        export_model(tmp_path / "neox.pt", tmp_path / "out")
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in str(info.value)


def test_cli_exports_prints_a_summary_and_fails_cleanly(exported, tmp_path, capsys):
    path, _, _ = exported("llama")
    assert export_main([str(path), "-o", str(tmp_path / "cli"), "--opset", "19"]) == 0
    out = capsys.readouterr().out
    assert "verification" in out and "model.onnx" in out and "exported 4 adapted layers" in out
    assert export_main([str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert export_main([str(path), "-o", str(tmp_path / "y"), "--opset", "5"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_external_data_export_runs_checks_and_imports(tmp_path):
    from exporters.onnx_import import import_onnx

    path, model = make_model_pt(tmp_path / "model.pt")
    result = export_model(path, tmp_path / "out", ExportOptions(external_data=True))
    data = result.files["model.onnx.data"]
    assert data >= 4 * sum(p.numel() for p in model.parameters()) - 80 * 64 * 4  # tied embedding
    assert result.files["model.onnx"] < data / 2, "weights should live in model.onnx.data"
    assert result.verification.passed
    loaded = import_onnx(result.directory)
    for key, value in model.base_model.state_dict().items():
        assert torch.equal(loaded.model.base_model.state_dict()[key], value), key


def test_float16_export_keeps_adapters_in_float32(tmp_path):
    path, _ = make_model_pt(tmp_path / "model.pt")
    result = export_model(path, tmp_path / "out", ExportOptions(dtype="float16"))
    report = json.loads((result.directory / "verify.json").read_text())
    assert report["passed"] and report["atol"] == 5e-2
    proto = onnx.load(str(result.directory / "model.onnx"))
    types = {t.name: t.data_type for t in proto.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["model.model.layers.0.self_attn.q_proj.base_layer.weight"] == f16
    assert types["model.model.layers.0.self_attn.q_proj.qwthn.qnn.weights"] == f32
    key = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}[past_names(0)[0]]
    assert key == f16


def test_interrupted_export_leaves_the_previous_output_and_no_partial(
    exported, tmp_path, monkeypatch
):
    import exporters.export as export_module

    path, _, _ = exported("llama")
    out = tmp_path / "out"
    export_model(path, out, ExportOptions(verify=False))
    before = _snapshot(out)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "verify_reference", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_model(path, out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_highest_supported_opset_exports_and_verifies(exported, tmp_path):
    from exporters.onnx_export import MAX_OPSET

    path, _, _ = exported("llama")
    result = export_model(path, tmp_path / "out", ExportOptions(opset=MAX_OPSET))
    assert result.verification.passed
    proto = onnx.load(str(result.directory / "model.onnx"), load_external_data=False)
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("", MAX_OPSET), (DOMAIN, 1)}


@pytest.mark.parametrize("fusion", ["mpo", "qnn"])
def test_ablation_fusions_are_refused_with_the_reason(tmp_path, fusion):
    path, _ = make_model_pt(tmp_path / "model.pt", fusion=fusion)
    with pytest.raises(ExportError, match=f"fusion='{fusion}' is an ablation") as info:
        export_model(path, tmp_path / "out")
    assert "'weighted' and 'linear'" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_linear_weights_are_stored_as_the_graph_multiplies_by_them(exported, arch):
    """No Transpose of a weight is left for onnxruntime to fold at every session start: the
    initializer holds W^T, the metadata says so, and it is the model's weight transposed. A
    weight the graph also reads untransposed (tied embeddings) keeps its Transpose."""
    _, result, model = exported(arch)
    proto = onnx.load(str(result.directory / "model.onnx"))
    initializers = {t.name: t for t in proto.graph.initializer}
    uses = Counter(name for node in proto.graph.node for name in node.input)
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    assert not [n for n in transposes if n.input[0] in initializers and uses[n.input[0]] == 1]
    meta = ExportMetadata.from_model(proto)
    state = model.base_model.state_dict()
    by_name = {name: key for key, name in meta.weights.items()}
    if arch == "llama":  # nn.Linear weights; GPT-2's Conv1D multiplies untransposed
        assert len(meta.transposed_weights) >= 4
    for name in meta.transposed_weights:
        stored = onnx.numpy_helper.to_array(initializers[name])
        np.testing.assert_array_equal(stored, state[by_name[name]].numpy().T)


def test_metadata_without_transposed_weights_reads_as_none_transposed(exported):
    _, result, _ = exported("llama")
    proto = onnx.load(str(result.directory / "model.onnx"), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["qwthn.format_version"] == "2"  # older readers refuse it: "upgrade"
    del props["qwthn.transposed_weights"]  # as files written before it
    props["qwthn.format_version"] = "1"
    assert ExportMetadata.from_props(props).transposed_weights == []
    props["qwthn.transposed_weights"] = json.dumps({"not": "a list"})
    with pytest.raises(ValueError, match="transposed_weights' has the wrong type"):
        ExportMetadata.from_props(props)
