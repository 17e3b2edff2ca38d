"""``python -m fuzz``: the long-run front end over both engines."""

from __future__ import annotations

import json

from fuzz import native, python_targets
from fuzz.__main__ import main, targets


def test_every_target_of_both_engines_is_listed(capsys):
    assert main(["--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == set(python_targets.PYTHON_TARGETS) | set(native.NATIVE_TARGETS)
    assert len(targets()) == len(listed), "a name shared by two engines would hide one"


def test_a_bounded_run_reports_executions_and_writes_json(tmp_path, capsys):
    report = tmp_path / "fuzz.json"
    code = main(["generate_request", "--seconds", "2", "--workdir", str(tmp_path / "w"),
                 "--json", str(report)])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    (result,) = json.loads(report.read_text())["results"]
    assert result["target"] == "generate_request" and result["engine"] == "atheris"
    assert result["executions"] > 0 and not result["crashed"]
    assert (tmp_path / "w" / "atheris" / "generate_request" / "corpus").is_dir()


def test_bad_arguments_are_named(capsys):
    assert main(["no_such_target"]) == 2
    assert "unknown targets ['no_such_target']" in capsys.readouterr().out
    assert main(["qasm", "--seconds", "0"]) == 2
    assert "--seconds must be positive" in capsys.readouterr().out
