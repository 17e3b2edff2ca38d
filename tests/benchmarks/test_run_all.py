"""benchmarks/run_all.py: runs the chosen benchmarks one by one and writes BENCHMARKS.md from
their reports; stand-in benchmark scripts keep this fast."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # scripts, no package
import run_all

FAKE = """
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--json"); p.add_argument("--quick", action="store_true")
p.add_argument("--plots")
a = p.parse_args()
print("| contender | samples/s |\\n|---|---|\\n| ours | 42 |" + (" (quick)" if a.quick else ""))
json.dump({"rate": 42}, open(a.json, "w"))
if a.plots:
    open(a.plots + "/fake_curve.png", "wb").write(b"png")
sys.exit(int("{exit}"))
"""


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Three stand-ins: one that works (with a plot), one that fails, one that needs wrk."""
    scripts = {}
    for name, code in (("fake", 0), ("broken", 3), ("loaded", 0)):
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(FAKE.replace("{exit}", str(code)))
    benchmarks = {
        "fake": run_all.Benchmark(
            "fake", str(scripts["fake"]), "Fake", "It works.", extra_args=("--plots", "{results}")
        ),
        "broken": run_all.Benchmark("broken", str(scripts["broken"]), "Broken", "It fails."),
        "loaded": run_all.Benchmark(
            "loaded", str(scripts["loaded"]), "Loaded", "It needs wrk.", needs=("wrk",)
        ),
    }
    monkeypatch.setattr(run_all, "BENCHMARKS", benchmarks)
    monkeypatch.setattr(run_all.shutil, "which", lambda name: None)  # no wrk here
    return tmp_path


def _run(tmp_path, *args):
    results, page = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    code = run_all.main(["--results", str(results), "--markdown", str(page), *args])
    return code, results, page


def test_runs_each_benchmark_and_writes_the_page(fakes):
    code, results, page = _run(fakes, "--quick")
    assert code == 1  # one failed, one could not run
    suite = json.loads((results / "suite.json").read_text())
    entries = suite["benchmarks"]
    assert entries["fake"]["status"] == "ok" and entries["fake"]["mode"] == "quick"
    assert entries["broken"]["status"] == "failed (exit 3)"
    assert entries["loaded"]["status"] == "not run" and "wrk" in entries["loaded"]["problem"]
    assert json.loads((results / "fake.json").read_text()) == {"rate": 42}
    assert suite["machine"]["cores"] >= 1 and suite["versions"]["torch"]
    text = page.read_text()
    assert "## Fake" in text and "| ours | 42 | (quick)" in text
    assert "![fake_curve](" in text  # the plot, linked relative to the page's repository
    assert "## Broken" in text and "failed (exit 3)" in text
    assert "Not run: wrk is not installed" in text and "setup_peers.sh" in text


def test_a_subset_keeps_the_others_last_results_and_markdown_only_rewrites(fakes):
    _run(fakes, "--quick")
    code, results, page = _run(fakes, "--only", "fake")
    assert code == 0
    entries = json.loads((results / "suite.json").read_text())["benchmarks"]
    assert entries["fake"]["mode"] == "full" and entries["broken"]["mode"] == "quick"
    page.unlink()
    assert _run(fakes, "--markdown-only")[0] == 0
    assert "| ours | 42 |\n" in page.read_text() + "\n"  # the full run's report, not quick's


def test_bad_choices_are_refused(fakes, capsys):
    with pytest.raises(SystemExit):
        _run(fakes, "--only", "fake,nope")
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.main(["--results", str(fakes / "empty"), "--markdown-only"])
    assert "does not exist: run the benchmarks first" in capsys.readouterr().err


def test_every_registered_benchmark_script_exists():
    for benchmark in run_all.BENCHMARKS.values():
        assert (run_all.HERE / benchmark.script).is_file(), benchmark
    assert run_all.BENCHMARKS["soak"].script == "serving_soak.py"
