"""The model cut at its QuantumLayer nodes: same results as onnxruntime, jobs in dependency order,
one job per round, padding not sent, refusals before any work, reports written whole or not at
all."""

import json

import numpy as np
import pytest

from qwthn_onnx.cli.run import main as run_main
from qwthn_onnx.qpu.backend import ExactBackend, LayerCall, QPUError
from qwthn_onnx.qpu.offload import OffloadSession
from qwthn_onnx.qpu.registry import make_backend
from qwthn_onnx.qpu.report import generation_report
from qwthn_onnx.runtime.generation import GenerationConfig
from qwthn_onnx.runtime.session import QWTHNSession
from qwthn_onnx.runtime.signature import empty_cache, position_ids

PROMPTS = ["12&34=", "5&6="]


class ShiftedBackend(ExactBackend):
    """Exact values plus a known offset: what a biased device would return."""

    name = "shifted"

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.jobs: list[list[LayerCall]] = []

    def run(self, calls):
        self.jobs.append(list(calls))
        return [r + self.offset for r in super().run(calls)]


class NarrowBackend(ExactBackend):
    name = "narrow"
    num_qubits = 2


def _feed(session: QWTHNSession, ids: list[list[int]]) -> dict[str, np.ndarray]:
    width = max(map(len, ids))
    tokens = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros_like(tokens)
    for row, seq in enumerate(ids):  # left padding, as generation lays batches out
        tokens[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return {
        "input_ids": tokens,
        "attention_mask": mask,
        "position_ids": position_ids(mask, width),
        **empty_cache(session.metadata.cache, len(ids), session.cache_dtype),
    }


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("kernels", [True, False])
def test_exact_offload_equals_onnxruntime(exported, arch, kernels):
    _, result, _ = exported(arch)
    plain = QWTHNSession(result.directory, kernels=kernels)
    offload = QWTHNSession(result.directory, kernels=kernels, quantum=ExactBackend())
    feed = _feed(plain, [plain.encode(p) for p in PROMPTS])
    want, got = plain.run(feed), offload.run(feed)
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, rtol=1e-5, err_msg=name)
    assert plain.generate(PROMPTS, 6) == offload.generate(PROMPTS, 6)


def test_rounds_follow_the_layers_and_each_round_is_one_job(exported):
    _, result, _ = exported("llama")
    backend = ShiftedBackend(0.0)
    session = QWTHNSession(result.directory, quantum=backend)
    offload = session.session
    # two decoder layers, q and v adapted: layer 1 needs layer 0's output, q and v do not
    # need each other
    assert [[q.layer.split(".")[2] for q in r] for r in offload.rounds] == [["0", "0"], ["1", "1"]]
    ids = [session.encode(p) for p in PROMPTS]
    session.run(_feed(session, ids))
    assert len(backend.jobs) == len(offload.rounds) == len(offload.jobs) == 2
    real_tokens = sum(map(len, ids))
    assert real_tokens < len(ids) * max(map(len, ids))  # the batch is padded
    for job, record in zip(backend.jobs, offload.jobs, strict=True):
        assert len(job) == 2  # both layers of the round in one job
        assert all(call.inputs.shape[0] == real_tokens for call in job)  # no padding rows
        assert record.circuits == 2 * real_tokens and record.rows == [real_tokens] * 2
        assert record.max_abs_error == 0.0


def test_a_biased_backend_changes_the_output_and_the_error_is_recorded(exported):
    _, result, _ = exported("llama")
    plain = QWTHNSession(result.directory)
    shifted = QWTHNSession(result.directory, quantum=ShiftedBackend(0.25))
    feed = _feed(plain, [plain.encode(p) for p in PROMPTS])
    assert np.abs(shifted.run(feed)["logits"] - plain.run(feed)["logits"]).max() > 1e-3
    assert [j.max_abs_error for j in shifted.session.jobs] == pytest.approx([0.25, 0.25])
    assert [j.mean_abs_error for j in shifted.session.jobs] == pytest.approx([0.25, 0.25])


def test_a_circuit_wider_than_the_device_is_refused_before_any_work(exported):
    _, result, _ = exported("llama")
    with pytest.raises(QPUError, match=r"3 qubits, but narrow has 2.*fewer qubits"):
        QWTHNSession(result.directory, quantum=NarrowBackend())


def test_report_totals_and_cost_model(exported):
    _, result, _ = exported("llama")
    session = QWTHNSession(result.directory, quantum=ExactBackend())
    out = session.generate(PROMPTS, 3)
    report = generation_report(session.session, generated_tokens=6)
    totals = report["totals"]
    # prefill (2 rounds) + 2 decode steps (2 rounds each): 6 jobs
    assert totals["jobs"] == 6 == len(report["jobs"])
    prompt_tokens = sum(g.prompt_tokens for g in out)
    assert totals["circuits"] == 2 * 2 * prompt_tokens + 2 * 2 * 2 * 2
    assert totals["circuits_per_token"] == totals["circuits"] / 6
    assert totals["estimated_qpu_s"] is None  # exact: no shots, no device durations
    assert [r["layer"] for r in report["layers"]] == [
        q.layer for q in session.session.quantum_nodes
    ]


def test_make_backend_refusals():
    with pytest.raises(QPUError, match=r"unknown quantum backend 'qpu9'.*exact:.*aer:.*braket"):
        make_backend("qpu9")
    with pytest.raises(QPUError, match="shots must be an integer >= 1"):
        make_backend("aer", shots=0)
    with pytest.raises(QPUError, match="shots must be an integer >= 1"):
        make_backend("aer", shots=-5)
    with pytest.raises(QPUError, match="exact backend takes no shots"):
        make_backend("exact", shots=100)


def test_cli_writes_the_report_and_matches_plain_output(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    args = [str(result.directory), "-p", PROMPTS[0], "-n", "4", "-q"]
    assert run_main(args) == 0
    plain = capsys.readouterr().out
    report = tmp_path / "report.json"
    assert run_main([*args, "--quantum-backend", "exact", "--quantum-report", str(report)]) == 0
    assert capsys.readouterr().out == plain
    data = json.loads(report.read_text())
    assert data["backend"] == "exact" and data["totals"]["jobs"] == 2 * 4


def test_cli_refusals_name_the_problem(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    base = [str(result.directory), "-p", "1&2="]
    assert run_main([*base, "--quantum-backend", "warp:drive"]) == 2
    assert "unknown quantum backend 'warp:drive'" in capsys.readouterr().err
    assert run_main([*base, "--quantum-backend", "exact", "--shots", "0"]) == 2
    assert "shots must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main([*base, "--shots", "10"])
    assert "--shots needs --quantum-backend" in capsys.readouterr().err


def test_an_interrupted_generation_leaves_no_report(exported, tmp_path, monkeypatch, capsys):
    _, result, _ = exported("llama")
    report = tmp_path / "report.json"

    def interrupt(self, calls):
        raise KeyboardInterrupt

    monkeypatch.setattr(ExactBackend, "run", interrupt)
    args = [str(result.directory), "-p", "1&2=", "--quantum-backend", "exact"]
    assert run_main([*args, "--quantum-report", str(report)]) == 130
    assert list(tmp_path.iterdir()) == []
    assert "interrupted" in capsys.readouterr().err


def test_each_prompt_in_a_padded_batch_sees_only_its_own_rows(exported):
    """A biased backend gives each prompt of a left-padded batch exactly what it gives that
    prompt alone; a finished sequence sends no circuits in later steps."""
    _, result, _ = exported("llama")
    prompts = ["12&34=", "5&6=", "777&1="]
    batched = QWTHNSession(result.directory, quantum=ShiftedBackend(0.05)).generate(prompts, 5)
    for prompt, together in zip(prompts, batched, strict=True):
        alone = QWTHNSession(result.directory, quantum=ShiftedBackend(0.05)).generate(prompt, 5)
        assert alone == together
    # the first prompt's first token becomes a stop token: that sequence ends after step 0
    backend = ShiftedBackend(0.05)
    session = QWTHNSession(result.directory, quantum=backend)
    ids = [session.encode(p) for p in prompts]
    stop = batched[0].token_ids[0]
    config = GenerationConfig(max_new_tokens=5, stop_token_ids=(stop,))
    new = session.generate_ids(ids, config)
    assert len(new[0]) == 1 and max(map(len, new)) > 2  # one finished early, others went on
    decode_jobs = backend.jobs[2:]  # after the prefill's two rounds, two rounds per step
    for k, job in enumerate(decode_jobs):
        step = k // 2 + 1  # the step feeds each sequence's token `step - 1`
        live = sum(len(tokens) > step for tokens in new)
        assert all(call.inputs.shape[0] == live for call in job), (step, new)


def test_layers_without_names_of_their_own_are_refused(exported, tmp_path):
    import onnx

    _, result, _ = exported("llama")
    model = onnx.load(str(result.directory / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "QuantumLayer":
            node.name = ""
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(QPUError, match="without a name of their own"):
        OffloadSession(path, ExactBackend())


def test_a_model_without_quantum_layers_is_refused(tmp_path):
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(QPUError, match=r"no ai\.qwthn QuantumLayer nodes"):
        OffloadSession(path, ExactBackend())


def test_more_refusals_before_any_work(monkeypatch):
    with pytest.raises(QPUError, match="seed must be an integer >= 0"):
        make_backend("aer", shots=10, seed=-1)
    with pytest.raises(QPUError, match="give the shots"):
        make_backend("ibm:fake_torino")
    with pytest.raises(QPUError, match="applies to aer:<device> only"):
        make_backend("braket:local", noise=False)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "qiskit_aer" else real(name)
    )
    with pytest.raises(QPUError, match=r"needs qiskit_aer, which is not installed.*\[qpu\]"):
        make_backend("aer:fake_torino", shots=10)


def test_cli_checks_the_report_path_and_quantum_flags_first(exported, tmp_path, capsys):
    _, result, _ = exported("llama")
    base = [str(result.directory), "-p", "1&2="]
    for extra, message in (
        (["--quantum-backend", "exact", "--quantum-report", str(tmp_path)], "not a file"),
        (["--quantum-seed", "3"], "--quantum-seed needs --quantum-backend"),
        (["--no-noise"], "--no-noise needs --quantum-backend"),
    ):
        with pytest.raises(SystemExit):
            run_main([*base, *extra])
        assert message in capsys.readouterr().err


def test_the_cost_model_counts_readout_and_the_repetition_delay(exported):
    _, result, _ = exported("llama")
    backend = make_backend("aer:fake_torino", shots=100, seed=1, noise=False)
    session = QWTHNSession(result.directory, quantum=backend)
    session.generate("1&2=", 1)
    report = generation_report(session.session)
    assert report["rep_delay_s"] == pytest.approx(250e-6)
    per_shot = {
        r["layer"]: r["duration_s"] + r["readout_s"] + report["rep_delay_s"]
        for r in report["layers"]
    }
    expected = sum(
        rows * 100 * per_shot[layer]
        for job in report["jobs"]
        for layer, rows in zip(job["layers"], job["rows"], strict=True)
    )
    assert report["totals"]["estimated_qpu_s"] == pytest.approx(expected)
    gates_only = generation_report(session.session, shot_overhead_s=0.0)
    assert gates_only["totals"]["estimated_qpu_s"] < expected / 20


@pytest.mark.parametrize("spec", ["exact", "aer"])
def test_every_backend_refuses_a_layer_name_reused_for_another_circuit(spec):
    from qwthn_onnx.circuit import paper_circuit

    backend = make_backend(spec)
    circuit, other = paper_circuit(3, 1), paper_circuit(3, 2)
    weights = np.zeros(circuit.n_weights)
    backend.prepare("q_proj", circuit, weights)
    with pytest.raises(QPUError, match="another circuit or other weights"):
        backend.prepare("q_proj", other, np.zeros(other.n_weights))
    with pytest.raises(QPUError, match="another circuit or other weights"):
        backend.run([LayerCall("q_proj", circuit, weights + 1, np.zeros((2, 3)))])
    with pytest.raises(QPUError, match=r"inputs must be \[N, 3\]"):
        backend.run([LayerCall("q_proj", circuit, weights, np.zeros((2, 4)))])
    assert backend.run([LayerCall("q_proj", circuit, weights, np.zeros((2, 3)))])[0].shape == (
        2,
        3,
    )
