"""Data-parallel training (DDP, FSDP2) with the C++ kernels, through examples/train_distributed.py
under torchrun and accelerate's launcher: 2 CPU processes (gloo) compute what one does."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from qwthn_onnx import AdapterError, QWTHNConfig, QWTHNModel, native
from qwthn_onnx.circuit import build_ansatz
from qwthn_onnx.integrations import QWTHNTrainer
from qwthn_onnx.ops.torch_ops import circuit_arguments, quantum_layer
from tests.examples_loader import EXAMPLES, TINY_ADAPTER, load_example

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)

SCRIPT = str(EXAMPLES / "train_distributed.py")
# SGD, so parameters after a step are a linear image of the gradients: equal parameters mean
# equal gradients. Three steps: the first only reaches the zero-initialised last MPO core.
ARGS = [*TINY_ADAPTER, "--steps", "3", "--optimizer", "sgd", "--lr", "0.5"]
# The processes sum their halves of the batch and all-reduce, one process sums all at once:
# float32 rounding in another order, a few ulps (2.4e-7 measured on parameters of size ~2).
# Wrong normalisation (per-process means, a missing factor of the process count) is >= 1e-3.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
SMALL = QWTHNConfig(rank=4, n_qubits=2, n_layers=1)


def _losses(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"^step \d+ loss (\S+)$", stdout, re.MULTILINE)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, plain training (no wrapper, no process group): losses and the adapter."""
    out = tmp_path_factory.mktemp("reference") / "adapter"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_example("train_distributed").run([*ARGS, "--strategy", "none", "--output", str(out)])
    losses = _losses(stdout.getvalue())
    assert len(losses) == 3
    return losses, load_file(out / "adapter_model.safetensors")


def _check_matches(reference, losses, adapter_dir) -> None:
    expected_losses, expected = reference
    torch.testing.assert_close(losses, expected_losses, **TOLERANCE)
    got = load_file(adapter_dir / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOLERANCE, msg=key)
    assert any(v.abs().max() > 0.1 for v in got.values())  # trained, not a zero adapter


def test_kernel_leaves_parameter_storage_resizable():
    """FSDP2 frees unsharded parameters by resizing their storage to 0; numpy views made by the
    kernel used to pin it ("Trying to resize storage that is not resizable")."""
    assert native.available()
    circuit = build_ansatz("paper", 2, 1)
    weights = torch.nn.Parameter(torch.rand(circuit.n_weights))
    x = torch.rand(3, 2, requires_grad=True)
    quantum_layer(x, weights, *circuit_arguments(circuit)).sum().backward()
    weights.untyped_storage().resize_(0)


def test_fsdp2_with_the_kernel_in_one_process_matches_plain_training(tmp_path, reference):
    out = tmp_path / "adapter"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_example("train_distributed").run([*ARGS, "--strategy", "fsdp2", "--output", str(out)])
    assert "(1 process(es), fsdp2)" in stdout.getvalue()
    _check_matches(reference, _losses(stdout.getvalue()), out)


def _run(command: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    # one thread per process; HF_HOME: no accelerate config file of the user's applies
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def _launch(launcher: list[str], strategy: str, out, tmp_path) -> str:
    command = [*launcher, SCRIPT, *ARGS, "--strategy", strategy, "--output", str(out)]
    result = _run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(2 process(es), {strategy})" in result.stdout
    return result.stdout


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_torchrun_two_processes_match_one(tmp_path, reference, strategy):
    stdout = _launch(TORCHRUN, strategy, tmp_path / "out", tmp_path)
    _check_matches(reference, _losses(stdout), tmp_path / "out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_runs_the_same_script(tmp_path, reference):
    # --multi_gpu starts the processes through torchrun, which works on CPU (gloo); --cpu
    # would start one process (more need mpirun).
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    accelerate += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    accelerate += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    stdout = _launch(accelerate, "ddp", tmp_path / "out", tmp_path)
    _check_matches(reference, _losses(stdout), tmp_path / "out")


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"MASTER_ADDR": "127.0.0.1"}, [], "accelerate launch --multi_gpu"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, ["--global-batch-size", "3"], "split evenly"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, ["--strategy", "none"], "one process"),
        ({}, ["--model", "no-such-model"], "no such file or directory"),
    ],
    ids=["accelerate-cpu", "uneven-batch", "none-with-two", "model"],
)
def test_launch_mistakes_stop_every_process_before_any_collective(
    monkeypatch, capsys, tmp_path, env, argv, message
):
    for key, value in {**env, "MASTER_PORT": "1"}.items():  # a collective would fail loudly
        monkeypatch.setenv(key, value)
    example = load_example("train_distributed")
    common = load_example("example_common")
    assert common.run_main(example.run, [*argv, "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not torch.distributed.is_initialized()


def test_trainer_under_torchrun_matches_one_process(tmp_path):
    """QWTHNTrainer with DDP: 2 processes x 4 examples train as 1 process x 8."""
    args = [*TINY_ADAPTER, "--steps", "3", "--save-steps", "3", "--quiet"]
    one = load_example("train_with_trainer").run(
        [*args, "--batch-size", "8", "--output", str(tmp_path / "one")]
    )
    script = str(EXAMPLES / "train_with_trainer.py")
    command = [*TORCHRUN, script, *args, "--batch-size", "4", "--output", str(tmp_path / "two")]
    result = _run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("adapter saved") == 1  # one process reports (and writes)
    state = json.loads((tmp_path / "two" / "checkpoint-3" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    expected = [entry["loss"] for entry in one.state.log_history if "loss" in entry]
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    # AdamW divides by the gradients' own scale, so float32 rounding of near-zero gradient
    # entries moves parameters more than with SGD: 2e-6 measured; the batch split wrong
    # (each process on all the data) moved them by 2.5e-2.
    got = load_file(tmp_path / "two" / "adapter_model.safetensors")
    for key, value in load_file(tmp_path / "one" / "adapter_model.safetensors").items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=5e-5, msg=key)


def test_trainer_refuses_torchrun_processes_it_would_run_apart(tmp_path, monkeypatch):
    """Without a GPU and without use_cpu=True, Trainer treats torchrun's processes as separate
    jobs (measured: world_size 1 in each), which would train each on all the data."""
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path), report_to="none")  # decided here: one process
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun would have set
    model = QWTHNModel(load_example("example_common").load_base(None, 0)[0], SMALL)
    with pytest.raises(AdapterError, match="pass use_cpu=True"):
        QWTHNTrainer(model=model, args=args)
