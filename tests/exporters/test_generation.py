"""onnxruntime generation with the KV cache vs transformers' generate on the same model."""

import numpy as np
import pytest
import torch

from qwthn_onnx.cli.run import main as run_main
from qwthn_onnx.ops.fallback import FallbackMismatchError
from qwthn_onnx.runtime import ExportIntegrityError, check_export_integrity
from qwthn_onnx.runtime.generation import (
    GenerationConfig,
    GenerationError,
    _filtered_probabilities,
    next_tokens,
)
from qwthn_onnx.runtime.session import FallbackWarning, QWTHNSession


@pytest.fixture(scope="module")
def llama(exported):
    _, result, model = exported("llama")
    return result.directory, model


def _torch_greedy(model, tokenizer_session, prompts, n):
    """transformers' greedy generate on left-padded prompts, new tokens per prompt."""
    encoded = [tokenizer_session.encode(p) for p in prompts]
    longest = max(map(len, encoded))
    pad = model.config.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
            pad_token_id=pad, eos_token_id=model.config.eos_token_id,
        )  # fmt: skip
    rows = []
    for row in out[:, longest:].tolist():
        if model.config.eos_token_id in row:
            row = row[: row.index(model.config.eos_token_id) + 1]
        rows.append(row)
    return rows


@pytest.mark.parametrize("kernels", [True, False])
def test_greedy_equals_transformers_token_for_token(llama, kernels):
    directory, model = llama
    session = QWTHNSession(directory, kernels=kernels, threads=1)
    prompts = ["12+34=", "7+5=", "a longer prompt 99+1="]
    ours = session.generate_ids(
        [session.encode(p) for p in prompts], GenerationConfig(max_new_tokens=12)
    )
    assert ours == _torch_greedy(model, session, prompts, 12)
    assert session.kernels is kernels


def test_generate_returns_text_counts_and_finish_reason(llama):
    directory, _ = llama
    session = QWTHNSession(directory, threads=1)
    result = session.generate("12+34=", max_new_tokens=5)
    assert result.prompt_tokens == len(session.encode("12+34="))
    assert len(result.token_ids) <= 5
    assert result.finish_reason in ("stop", "length")
    assert result.text == session.tokenizer.decode(
        [t for t in result.token_ids if t != session.config["eos_token_id"]],
        skip_special_tokens=True,
    )
    batch = session.generate(["1+1=", "22+22="], max_new_tokens=3)
    assert isinstance(batch, list) and len(batch) == 2


def test_sampling_is_reproducible_with_a_seed_and_varies_without(llama):
    directory, _ = llama
    session = QWTHNSession(directory, threads=1)
    kwargs = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.5}
    a = session.generate("3+4=", seed=7, **kwargs).token_ids
    b = session.generate("3+4=", seed=7, **kwargs).token_ids
    assert a == b
    others = {tuple(session.generate("3+4=", seed=s, **kwargs).token_ids) for s in range(8)}
    assert len(others) > 1


def test_top_k_one_and_tiny_top_p_are_greedy(llama):
    directory, _ = llama
    session = QWTHNSession(directory, threads=1)
    greedy = session.generate("5+6=", max_new_tokens=8).token_ids
    for kwargs in ({"top_k": 1}, {"top_p": 1e-9}):
        sampled = session.generate("5+6=", 8, do_sample=True, temperature=3.0, seed=1, **kwargs)
        assert sampled.token_ids == greedy


def test_stop_strings_and_stop_tokens_end_generation(llama):
    directory, _ = llama
    session = QWTHNSession(directory, threads=1)
    free = session.generate("9+9=", max_new_tokens=12)
    assert len(free.text) >= 2, "the random model should emit some text"
    stop = free.text[1]
    cut = session.generate("9+9=", max_new_tokens=12, stop=[stop])
    assert cut.text == free.text[: free.text.index(stop)] and cut.finish_reason == "stop"
    first = free.token_ids[0]
    ids = session.generate_ids(
        [session.encode("9+9=")], GenerationConfig(max_new_tokens=12, stop_token_ids=(first,))
    )
    assert ids == [[first]]


def test_sampling_distribution_follows_temperature_top_k_top_p():
    logits = np.log(np.array([[0.5, 0.25, 0.15, 0.1]]))
    p = _filtered_probabilities(logits, GenerationConfig(do_sample=True))
    np.testing.assert_allclose(p, [[0.5, 0.25, 0.15, 0.1]])
    p = _filtered_probabilities(logits, GenerationConfig(do_sample=True, top_k=2))
    np.testing.assert_allclose(p, [[2 / 3, 1 / 3, 0, 0]])
    p = _filtered_probabilities(logits, GenerationConfig(do_sample=True, top_p=0.7))
    np.testing.assert_allclose(p, [[2 / 3, 1 / 3, 0, 0]])  # 0.5 < 0.7 <= 0.75
    p = _filtered_probabilities(logits, GenerationConfig(do_sample=True, temperature=0.5))
    np.testing.assert_allclose(p, [[0.25, 0.0625, 0.0225, 0.01]] / np.float64(0.345))
    rng = np.random.default_rng(0)
    draws = np.concatenate(
        [next_tokens(np.repeat(logits, 1000, 0), GenerationConfig(do_sample=True), rng)
         for _ in range(20)]
    )  # fmt: skip
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.15, 0.1], atol=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_k": -1}, "top_k must be an int >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": -2}, "max_new_tokens must be >= 0"),
    ],
)
def test_bad_generation_parameters_are_named(llama, kwargs, message):
    session = QWTHNSession(llama[0], threads=1)
    with pytest.raises(GenerationError, match=message):
        session.generate("1+1=", **{"do_sample": True, **kwargs})


def test_prompt_longer_than_the_context_is_refused(llama):
    session = QWTHNSession(llama[0], threads=1)
    with pytest.raises(GenerationError, match="the model's context is 128"):
        session.generate_ids([[5] * 200])


def test_generation_stops_at_the_context_length(llama):
    session = QWTHNSession(llama[0], threads=1)
    ids = session.generate_ids([[5] * 126], GenerationConfig(max_new_tokens=10))
    assert len(ids[0]) <= 2


def test_missing_library_falls_back_with_a_warning(llama, monkeypatch, tmp_path):
    monkeypatch.setenv("QWTHN_OPS_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.warns(FallbackWarning, match="Running the fallback functions"):
        session = QWTHNSession(llama[0], threads=1)
    assert not session.kernels
    assert session.generate("1+2=", max_new_tokens=3).token_ids


def test_qwthn_run_prints_the_generated_text(llama, capsys):
    directory, _ = llama
    session = QWTHNSession(directory, threads=1)
    expected = session.generate("12+3=", max_new_tokens=6).text
    assert run_main([str(directory), "-p", "12+3=", "-n", "6", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"12+3={expected}".strip()
    assert "tokens/s" in captured.err and "kernels" in captured.err
    assert run_main([str(directory / "nothing"), "-p", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_export_that_no_longer_matches_its_manifest_is_refused(llama, tmp_path, capsys):
    """A changed weight still parses and would answer wrongly without a word: loading an export
    directory checks every file against manifest.json first."""
    import shutil

    import onnx
    from onnx import numpy_helper

    directory = shutil.copytree(llama[0], tmp_path / "export")
    proto = onnx.load(str(directory / "model.onnx"))
    weight = next(i for i in proto.graph.initializer if i.name.endswith("q_proj.base_layer.weight"))
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = -values.flat[0] + 1.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(directory / "model.onnx"))
    QWTHNSession(directory / "model.onnx", threads=1)  # parses: only the manifest can tell
    with pytest.raises(ExportIntegrityError, match=r"model\.onnx: .*Export it again"):
        QWTHNSession(directory, threads=1)
    assert run_main([str(directory), "-p", "1+1="]) == 2
    assert "does not match its manifest.json" in capsys.readouterr().err

    shutil.copy2(llama[0] / "model.onnx", directory / "model.onnx")
    (directory / "qasm" / "index.json").unlink()
    with pytest.raises(ExportIntegrityError, match=r"qasm/index\.json: missing"):
        check_export_integrity(directory)
    (directory / "manifest.json").write_text('{"files": 3}')
    with pytest.raises(ExportIntegrityError, match=r"manifest\.json is damaged"):
        check_export_integrity(directory)


def test_fallback_bodies_that_no_longer_match_their_nodes_are_refused(llama, tmp_path):
    """Without the kernels onnxruntime picks each node's body by its overload name, never
    reading the attributes: a node edited after export would run its old circuit."""
    import onnx

    proto = onnx.load(str(llama[0] / "model.onnx"))
    node = next(n for n in proto.graph.node if n.op_type == "QuantumLayer")
    observables = next(a for a in node.attribute if a.name == "observables")
    observables.ints[:] = [1 if code == 3 else code for code in observables.ints]  # Z -> X
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    with pytest.raises(FallbackMismatchError, match=f"node '{node.name}' does not match"):
        QWTHNSession(edited, kernels=False)
    QWTHNSession(edited, kernels=True)  # the kernel reads the attributes: nothing is stale

    proto = onnx.load(str(llama[0] / "model.onnx"))
    body = next(f for f in proto.functions if f.name == "QuantumLayer")
    constant = next(
        n for n in body.node if n.op_type == "Constant" and any(n.attribute[0].t.raw_data)
    )  # zeroing an all-zero constant would change nothing
    constant.attribute[0].t.raw_data = bytes(len(constant.attribute[0].t.raw_data))
    onnx.save(proto, str(edited))
    with pytest.raises(FallbackMismatchError, match="edited after export"):
        QWTHNSession(edited, kernels=False)


def test_readme_inference_example_runs(llama, tmp_path, monkeypatch):
    """The README's inference snippet runs as written against an export at runs/demo/onnx."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Quickstart: inference in onnxruntime") :]
    start = section.index("```python\n") + len("```python\n")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "onnx").symlink_to(llama[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(section[start : section.index("```", start)], namespace)
    assert namespace["answer"].finish_reason in ("stop", "length")
    assert len(namespace["samples"]) == 2
    ids = namespace["ids"]
    assert namespace["logits"].shape == (1, ids.shape[1], 80)
    (plain_logits, *_) = namespace["plain"].run(None, namespace["feed"])
    np.testing.assert_allclose(namespace["logits"], plain_logits, atol=1e-4)
