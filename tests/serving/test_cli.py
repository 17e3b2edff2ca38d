"""``qwthn-serve`` / ``python -m serving``: what it refuses before it listens."""

import subprocess
import sys

import pytest

from serving.cli import build_parser, main
from tests.serving.conftest import ROOT


def test_bad_path_exits_2_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "serving", "/no/such/export"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "qwthn-serve: error: /no/such/export: no such directory" in result.stderr
    assert "model.onnx + manifest.json" in result.stderr  # says what is expected


def test_a_directory_without_models_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no models found" in capsys.readouterr().err


def test_a_version_that_is_not_an_export_exits_2(tmp_path, capsys):
    (tmp_path / "m" / "1").mkdir(parents=True)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "m" / "1") in err and "not an export directory" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-batch-size", "0"],
        ["--timeout-s", "0"],
        ["--max-body-mb", "x"],
        ["--port", "-1"],
        ["--max-tokens", "0"],
        ["--max-concurrent-generations", "0"],
    ],
)
def test_bad_flags_exit_2(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), *flags])
    assert info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_defaults():
    args = build_parser().parse_args(["somewhere"])
    assert (args.host, args.port, args.max_batch_size, args.max_queue_delay_ms) == (
        "127.0.0.1",
        8000,
        8,
        0.0,
    )
    assert (args.max_body_mb, args.timeout_s, args.no_batching) == (16.0, 60.0, False)
    assert (args.max_tokens, args.max_concurrent_generations) == (512, 8)
