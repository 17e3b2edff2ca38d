"""The atheris targets: each runs, counts real executions and finds nothing on the seeds; the
harness flags what is not a documented refusal; every crash it found stays fixed."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

pytest.importorskip("atheris")

from fuzz.python_targets import (
    _ARTIFACTS_ENV,
    PYTHON_TARGETS,
    _target,
    replay,
    run,
    tiny_artifacts,
)

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' (the fast lane)

REGRESSIONS = Path(__file__).parent / "regressions"
REPO = Path(__file__).resolve().parents[2]
# The smoke runs try the same inputs in the same order every time (a CI run fails on a bug
# found, not on a new draw); `python -m fuzz` explores with fresh seeds.
SMOKE_SEED = 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One work directory for all targets: the tiny model behind the seeds is built once."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", sorted(PYTHON_TARGETS))
def test_smoke_run_finds_no_crash(workdir, name):
    result = run(name, 5, workdir, seed=SMOKE_SEED)
    assert not result.crashed, result.log[-3000:]
    assert result.crash_files == []
    assert result.engine == "atheris" and result.target == name
    assert f"INFO: Seed: {SMOKE_SEED}\n" in result.log
    # the model targets build a transformers model per input; the others parse thousands
    assert result.executions >= (2 if name in ("model_pt", "onnx_import") else 100), result.log
    assert any((workdir / name / "seeds").iterdir())


def test_seeds_are_cached_between_runs(workdir):
    run("qasm", 1, workdir)
    seeds = {p: p.stat().st_mtime_ns for p in (workdir / "qasm" / "seeds").iterdir()}
    run("qasm", 1, workdir)
    assert {p: p.stat().st_mtime_ns for p in (workdir / "qasm" / "seeds").iterdir()} == seeds


_CHILD = textwrap.dedent(
    """
    import sys
    import fuzz.python_targets as targets

    def one_input(data):
        if data.startswith(b"OPENQASM"):
            raise {error}("the parser let this through")

    targets._CHECKS["qasm"] = lambda: targets._Check(one_input, (ValueError,))
    targets._main(sys.argv)
    """
)


@pytest.mark.parametrize(("error", "crashes"), [("KeyError", True), ("ValueError", False)])
def test_only_documented_refusals_pass(tmp_path, error, crashes):
    """The child entry point lets the check's refusals pass and reports anything else as a
    crash with a reproducer (the check is replaced in the child only)."""
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "seed").write_bytes(b"OPENQASM 3.0;")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(error=error), "qasm", "-runs=50",
         f"-artifact_prefix={tmp_path}/", str(tmp_path / "seeds")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    reproducers = list(tmp_path.glob("crash-*"))
    assert (child.returncode != 0) is crashes, child.stderr[-2000:]
    assert bool(reproducers) is crashes
    if crashes:
        assert reproducers[0].read_bytes() == b"OPENQASM 3.0;"
        assert "KeyError: 'the parser let this through'" in child.stdout + child.stderr


def _regressions():
    return sorted(
        pytest.param(p.parent.name, p, id=f"{p.parent.name}/{p.name}")
        for p in REGRESSIONS.glob("*/*")
    )


@pytest.mark.parametrize(("name", "path"), _regressions())
def test_crash_reproducers_are_refused_clearly(name, path, workdir, monkeypatch):
    """Each reproducer is now one of its target's refusals. (infer_request tries each input
    under several datatypes and takes the refusals in its stride, so there only the fuzzer's
    verdict is checked; tests/serving/test_protocol.py checks those messages.)"""
    if name == "infer_feed":  # runs against the tiny export, as run() tells its child
        monkeypatch.setenv(_ARTIFACTS_ENV, str(tiny_artifacts(workdir / "artifacts")))
    if name != "infer_request":
        check = _target(name)()
        with pytest.raises(check.refusals):
            check.one_input(path.read_bytes())
    replay(name, path.read_bytes())  # the fuzzer's own wrapper lets it pass


def _edited_config(proto: onnx.ModelProto, **changes: object) -> bytes:
    prop = next(p for p in proto.metadata_props if p.key == "qwthn.base_model")
    base = json.loads(prop.value)
    base["config_json"] = json.dumps({**json.loads(base["config_json"]), **changes})
    prop.value = json.dumps(base)
    return proto.SerializeToString()


def _short_initializer(proto: onnx.ModelProto) -> bytes:
    weight = next(i for i in proto.graph.initializer if len(i.raw_data) > 4)
    weight.raw_data = weight.raw_data[:-4]
    return proto.SerializeToString()


def _metadata_not_utf8(proto: onnx.ModelProto) -> bytes:
    data = proto.SerializeToString()
    value = b'"qwthn-onnx"'  # in qwthn.producer; same length, so the protobuf stays well-formed
    assert value in data
    return data.replace(value, b'"qwthn-\xffnnx"', 1)


# The onnx_import crashes, rebuilt from the tiny export (model files are not committed).
ONNX_IMPORT_CRASHES = {
    "config-dtype-unknown": lambda proto: _edited_config(proto, dtype="dloat32"),
    "config-zero-attention-heads": lambda proto: _edited_config(proto, num_attention_heads=0),
    "initializer-data-shorter-than-dims": _short_initializer,
    "metadata-not-utf8": _metadata_not_utf8,
}


@pytest.mark.parametrize("crash", sorted(ONNX_IMPORT_CRASHES))
def test_onnx_import_crashes_are_refused_clearly(crash, workdir):
    proto = onnx.load(str(tiny_artifacts(workdir / "artifacts") / "onnx" / "model.onnx"))
    data = ONNX_IMPORT_CRASHES[crash](proto)
    check = _target("onnx_import")()
    with pytest.raises(check.refusals):
        check.one_input(data)
    replay("onnx_import", data)
