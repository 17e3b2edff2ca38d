"""The way back: ONNX -> model.pt, bit for bit, trainable, and exportable again."""

import json

import numpy as np
import onnx
import pytest
import torch

from exporters import ExportOptions, export_model
from exporters.cli import import_main
from exporters.onnx_import import ImportError_, import_onnx
from qwthn_onnx import TrainingArguments, load_model_pt, tokenize_examples, train
from qwthn_onnx.demo import make_task
from qwthn_onnx.runtime.metadata import MetadataError


def _assert_same_weights(a, b):
    sa, sb = a.base_model.state_dict(), b.base_model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_import_rebuilds_the_model_bit_for_bit(exported, arch, batch):
    _, result, original = exported(arch)
    loaded = import_onnx(result.directory / "model.onnx")
    _assert_same_weights(loaded.model, original)
    assert loaded.model.qwthn_config == original.qwthn_config
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(**batch).logits, original(**batch).logits)
    assert loaded.tokenizer.encode("12+3=") == [*loaded.tokenizer.encode("12+3=")]
    assert loaded.training["note"] == "test"


def test_import_cli_writes_model_pt_that_loads_and_trains_then_exports_again(
    exported, tmp_path, tokenizer, capsys
):
    _, result, original = exported("llama")
    out = tmp_path / "back.pt"
    assert import_main([str(result.directory), "-o", str(out)]) == 0
    assert "imported LlamaForCausalLM with 4 adapted layers" in capsys.readouterr().out
    loaded = load_model_pt(out)
    _assert_same_weights(loaded.model, original)

    # continue training from the imported file: adapters change, the base does not
    examples, _ = make_task("and_add", 32, 1)
    before = {k: v.clone() for k, v in loaded.model.adapter_state_dict().items()}
    train(
        loaded.model,
        tokenize_examples(examples, loaded.tokenizer),
        TrainingArguments(steps=2, batch_size=8, learning_rate=1e-2),
        progress=False,
    )
    after = loaded.model.adapter_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k, v in original.base_state_dict().items():
        assert torch.equal(loaded.model.base_state_dict()[k], v), k

    # export again: verified, and the graph differs from the first only in adapter weights
    from qwthn_onnx import save_model_pt

    trained = save_model_pt(tmp_path / "trained.pt", loaded.model, loaded.tokenizer)
    again = export_model(trained, tmp_path / "again", ExportOptions())
    assert again.verification.passed
    first = onnx.load(str(result.directory / "model.onnx"))
    second = onnx.load(str(again.directory / "model.onnx"))
    assert [n.op_type for n in first.graph.node] == [n.op_type for n in second.graph.node]
    changed = {
        a.name
        for a, b in zip(first.graph.initializer, second.graph.initializer, strict=True)
        if not np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    }
    assert changed and all(".qwthn." in name for name in changed)


def test_a_plain_onnx_file_is_refused(tmp_path):
    from qwthn_onnx.ops.models import mpo_linear_model

    path = tmp_path / "plain.onnx"
    onnx.save(mpo_linear_model([np.ones((1, 2, 2, 1), np.float32)]), str(path))
    with pytest.raises(MetadataError, match="was not written by qwthn-export"):
        import_onnx(path)
    assert import_main([str(path), "-o", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_truncated_onnx_is_refused(exported, tmp_path):
    _, result, _ = exported("llama")
    path = tmp_path / "cut.onnx"
    path.write_bytes((result.directory / "model.onnx").read_bytes()[:20000])
    with pytest.raises(MetadataError, match="not a readable ONNX file"):
        import_onnx(path)


def _edited(result, tmp_path, edit):
    proto = onnx.load(str(result.directory / "model.onnx"))
    props = {p.key: p for p in proto.metadata_props}
    edit(proto, props)
    path = tmp_path / "edited.onnx"
    onnx.save(proto, str(path))
    return path


def test_metadata_that_does_not_fit_the_graph_is_refused(exported, tmp_path):
    _, result, _ = exported("llama")

    def wrong_weight(proto, props):
        weights = json.loads(props["qwthn.weights"].value)
        key = next(k for k in weights if k.endswith("qnn.weights"))
        weights[key] = "no_such_initializer"
        props["qwthn.weights"].value = json.dumps(weights)

    with pytest.raises(ImportError_, match="initializer 'no_such_initializer' is not in the graph"):
        import_onnx(_edited(result, tmp_path, wrong_weight))

    def other_circuit(proto, props):
        config = json.loads(props["qwthn.adapter_config"].value)
        config["n_layers"] = 3
        props["qwthn.adapter_config"].value = json.dumps(config)

    with pytest.raises(ImportError_, match="circuit"):
        import_onnx(_edited(result, tmp_path, other_circuit))

    def broken_json(proto, props):
        props["qwthn.cache"].value = "{not json"

    with pytest.raises(MetadataError, match=r"'qwthn\.cache' is not JSON"):
        import_onnx(_edited(result, tmp_path, broken_json))


@pytest.mark.parametrize("name", ["../escape", "/abs", ".hidden", ""])
def test_tokenizer_file_names_in_metadata_must_be_plain(name):
    from qwthn_onnx.runtime.metadata import decode_files

    with pytest.raises(MetadataError, match="is not a plain file name"):
        decode_files({name: {"text": "x"}})


@pytest.mark.parametrize("value", [b"\xff\xfe not utf-8", 7, None])
def test_metadata_values_that_are_not_text_are_refused(exported, value):
    """onnxruntime's metadata map or a damaged protobuf can hand over bytes or other types."""
    from qwthn_onnx.runtime.metadata import ExportMetadata

    _, result, _ = exported("llama")
    props = {p.key: p.value for p in onnx.load(str(result.directory / "model.onnx")).metadata_props}
    props["qwthn.cache"] = value
    with pytest.raises(MetadataError, match=r"'qwthn\.cache' is not JSON"):
        ExportMetadata.from_props(props)
