"""The export verification criterion: what it compares, what it tolerates, what it catches."""

import json
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from exporters import ExportOptions, export_model
from exporters.causal_lm import CacheGeometry, CausalLMWithCache
from exporters.onnx_export import export_causal_lm
from exporters.verify import (
    NEW_TOKENS,
    PROMPTS,
    OutputCheck,
    Reference,
    Step,
    VerifyReport,
    _check_generation,
    _check_logits,
    _check_presents,
    torch_reference,
    verify_reference,
)
from qwthn_onnx import QWTHNConfig, QWTHNModel, save_model_pt
from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model
from qwthn_onnx.runtime import session_options
from qwthn_onnx.runtime.metadata import ExportMetadata
from qwthn_onnx.runtime.signature import ATTENTION_MASK, INPUT_IDS, LOGITS
from tests.exporters.conftest import ADAPTER

CHATML = (
    "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


def _loud_model_pt(path, scale=1e5):
    """A tiny model whose logits are ~1e5 in size: float32 rounding then differs between two
    correct runtimes by far more than 1e-4 on the logits near zero."""
    tokenizer = build_char_tokenizer()
    base = build_tiny_model(tokenizer, "llama", seed=3)
    with torch.no_grad():
        base.model.norm.weight.mul_(scale)
    torch.manual_seed(0)
    model = QWTHNModel(base, QWTHNConfig(**ADAPTER)).eval()
    save_model_pt(path, model, tokenizer)
    return model, tokenizer


def test_the_old_elementwise_criterion_fails_where_the_new_one_passes(tmp_path):
    """Float32 noise on large logits: the elementwise test fails on near-zero logits although
    both runtimes compute the same model; the scale-aware test passes and the tokens agree."""
    model, tokenizer = _loud_model_pt(tmp_path / "model.pt")
    result = export_model(tmp_path / "model.pt", tmp_path / "onnx", ExportOptions())
    report = result.verification
    assert report.passed
    logits = [c for c in report.checks if c.output == "logits"]
    assert max(c.max_abs_error for c in logits) > 1e-4  # real float32 noise, not zero

    geometry = CacheGeometry.probe(model.base_model)
    reference = torch_reference(
        CausalLMWithCache(model.base_model, geometry), tokenizer, model.config.vocab_size
    )
    session = ort.InferenceSession(str(result.directory / "model.onnx"), session_options(1))
    elementwise_ok = True
    for step in reference.steps:
        (got,) = session.run([LOGITS], step.feed)
        keep = step.feed[ATTENTION_MASK][:, -step.feed[INPUT_IDS].shape[1] :].astype(bool)
        want = step.expected[LOGITS]
        elementwise_ok &= np.allclose(got[keep], want[keep], atol=1e-4, rtol=1e-3)
    assert not elementwise_ok, "the old criterion should fail on this model"


def test_a_changed_weight_fails_verification(tmp_path, exported):
    """An MPO core altered in the file: logits leave their bound and the failure names them."""
    _, result, model = exported("llama")
    proto = onnx.load(str(result.directory / "model.onnx"))
    meta = ExportMetadata.from_model(proto)
    core = next(meta.weights[k] for k in meta.weights if "mpo_up.cores" in k)
    for init in proto.graph.initializer:
        if init.name == core:
            values = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(values + 0.5, init.name))
    onnx.save(proto, str(tmp_path / "changed.onnx"))
    geometry = CacheGeometry.probe(model.base_model)
    reference = torch_reference(
        CausalLMWithCache(model.base_model, geometry),
        build_char_tokenizer(),
        model.config.vocab_size,
    )
    report = verify_reference(tmp_path / "changed.onnx", reference, 1e-4, 1e-3, ["kernels"])
    assert not report.passed
    assert any("output logits (kernels" in line for line in report.failures())


def test_chat_template_prompt_is_verified_when_the_tokenizer_has_one(tiny_model):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHATML
    base = tiny_model("llama")
    reference = torch_reference(
        CausalLMWithCache(base, CacheGeometry.probe(base)), tokenizer, base.config.vocab_size
    )
    assert reference.prompts[: len(PROMPTS)] == list(PROMPTS)
    assert reference.prompts[-1].startswith("<user>") and reference.prompts[-1].endswith(
        "<assistant>"
    )
    assert len(reference.generated) == len(PROMPTS) + 1
    assert all(len(row) == NEW_TOKENS for row in reference.generated)
    kinds = [s.name.split()[0] for s in reference.steps]
    assert kinds == ["prefill"] + ["decode"] * (NEW_TOKENS - 1) + ["chunk", "prefill"]


def _step(logits, mask):
    batch, sequence = logits.shape[:2]
    return Step(
        "prefill",
        {INPUT_IDS: np.zeros((batch, sequence), np.int64), ATTENTION_MASK: mask},
        {LOGITS: logits},
    )


def test_token_flips_are_counted_and_the_logits_bound_decides():
    expected = np.array([[[5.0, 5.0 + 1e-6, 0.0], [9.0, 1.0, 0.0]]])  # a near-tie, a clear max
    step = _step(expected, np.ones((1, 2), np.int64))
    flipped_tie = expected.copy()
    flipped_tie[0, 0, 0] += 2e-6  # the argmax flips at the tie, well within the bound
    check = _check_logits("kernels", step, flipped_tie, atol=1e-4, rtol=1e-3)
    assert check.passed and check.flips == 1 and check.positions == 2
    assert check.bound == pytest.approx(1e-4 + 1e-3 * 9.0)
    wrong = expected.copy()
    wrong[0, 1, 1] = 9.5  # a clear choice moves: only possible with an error above the bound
    check = _check_logits("kernels", step, wrong, atol=1e-4, rtol=1e-3)
    assert not check.passed and check.flips == 1 and check.max_abs_error == pytest.approx(8.5)
    assert check.kl > 0.5 and check.logprob_error > 1.0


def test_padding_positions_are_not_compared():
    expected = np.zeros((2, 3, 4))
    expected[:, :, 0] = 1.0
    mask = np.array([[0, 1, 1], [1, 1, 1]])
    got = expected.copy()
    got[0, 0] = 1e6  # garbage where row 0 is left padding
    assert _check_logits("fallback", _step(expected, mask), got, 1e-4, 1e-3).passed
    present = {"present.0.key": np.ones((2, 1, 3, 2))}
    garbage = {"present.0.key": present["present.0.key"].copy()}
    garbage["present.0.key"][0, :, 0] = np.nan
    step = Step("prefill", {INPUT_IDS: np.zeros((2, 3)), ATTENTION_MASK: mask}, present)
    assert _check_presents("fallback", step, garbage, 1e-4, 1e-3).passed
    garbage["present.0.key"][1, :, 0] = 2.0  # a kept position
    assert not _check_presents("fallback", step, garbage, 1e-4, 1e-3).passed


def test_generation_may_part_only_at_a_near_tie():
    logits = [np.array([[3.0, 1.0, 0.0]]), np.array([[2.0, 2.0 + 1e-7, 0.0]])]
    reference = Reference([], [], [], [[0, 1]], logits, CacheGeometry(1, 1, 1), np.float32, 0)

    def report_with(tokens):
        report = VerifyReport(1e-4, 1e-3, ["kernels"])
        report.checks.append(OutputCheck("kernels", "c", "logits", 1e-5, 3.0, 1e-3, True))
        _check_generation(report, "kernels", reference, [tokens])
        return report

    tie = report_with([0, 0])  # parts at step 1, where torch's top two are 1e-7 apart
    assert tie.passed and tie.generation[0].diverged_at == 1 and tie.generation[0].near_tie
    clear = report_with([1, 1])  # parts at step 0, a clear choice
    assert not clear.passed and "generation (kernels, prompt 0): token 0" in clear.failures()[0]


def test_verify_json_states_what_was_compared(exported):
    _, result, _ = exported("llama")
    report = json.loads((result.directory / "verify.json").read_text())
    assert "max |torch logits|" in report["criteria"]["logits"]
    assert "near-tie" in report["criteria"]["generation"]
    assert "not gated" in report["criteria"]["next_token"]
    assert report["atol"] == 1e-4 and report["rtol"] == 1e-3
    for check in report["checks"]:
        assert check["bound"] == pytest.approx(1e-4 + 1e-3 * check["scale"])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_the_export_path_uses_no_deprecated_transformers_api(tiny_model, arch):
    """transformers warns (warnings or its logger) when a deprecated argument or attribute is
    used, e.g. past_key_values, removed in 5.40; the export path must not trigger any."""
    base = QWTHNModel(tiny_model(arch), QWTHNConfig(rank=4, n_qubits=2, n_layers=1)).base_model
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            proto, weights, module, _ = export_causal_lm(base)
            torch_reference(module, build_char_tokenizer(), base.config.vocab_size)
    finally:
        logger.removeHandler(handler)
    deprecations = [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    assert not deprecations
    assert {t.name for t in proto.graph.initializer} == set(weights)
