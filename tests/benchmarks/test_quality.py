"""benchmarks/quality.py: the parameter matching, held-out loss, verdict rule and a tiny run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qwthn_onnx import ConfigError, Example, QWTHNConfig, tokenize_examples

# benchmarks/ is a folder of scripts, not a package (they import each other as top-level
# modules, e.g. ``from system_info import machine_info``), so put it on the path as running
# ``python benchmarks/quality.py`` does.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality


@pytest.fixture(scope="module")
def base():
    from qwthn_onnx.demo import build_char_tokenizer, build_tiny_model

    return build_tiny_model(build_char_tokenizer(), "llama", seed=0)


def test_match_parameters_hits_lora_r8_and_minus_76_percent(base):
    lora_r8 = quality.trainable_parameters(quality.attach("lora", {"r": 8}, _copy(base)))
    assert lora_r8 == 3584  # 2 layers x (q: 8 x (64 + 64) + v: 8 x (64 + 32))
    for fraction in (1.0, quality.PARAMS_76):
        found = quality.match_parameters(base, fraction * lora_r8)
        assert abs(found.relative_error) < 0.01, found
        # the reported count is the real one, and the search is deterministic
        model = quality.attach("qwthn", found.changes, _copy(base))
        assert quality.trainable_parameters(model) == found.trainable
        assert quality.match_parameters(base, fraction * lora_r8) == found
        assert found.changes.keys() == {"rank", "mpo_bond_dim"}


def test_match_parameters_is_the_grid_argmin(base):
    ranks, bonds, target = (4, 8), (2, 4), 1000
    counts = {
        (r, d): quality.trainable_parameters(
            quality.attach("qwthn", {"rank": r, "mpo_bond_dim": d}, _copy(base))
        )
        for r in ranks
        for d in bonds
    }
    best = min(counts, key=lambda k: abs(counts[k] - target))
    found = quality.match_parameters(base, target, ranks=ranks, bond_dims=bonds)
    assert (found.changes["rank"], found.changes["mpo_bond_dim"]) == best
    assert found.trainable == counts[best]
    with pytest.raises(ValueError):
        quality.match_parameters(base, target, ranks=())


class _UniformLM(nn.Module):
    """Zero logits: every token has probability 1/V, so the loss is exactly ln V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


EXAMPLES = [Example("12&3=", "15"), Example("7&40=", "47"), Example("99&99=", "198")]


def test_heldout_loss_by_hand(tokenizer):
    vocab = len(tokenizer)
    assert quality.heldout_loss(_UniformLM(vocab), tokenizer, EXAMPLES) == pytest.approx(
        math.log(vocab)
    )


def test_heldout_loss_is_the_training_loss_per_completion_token(tokenizer, base):
    data = tokenize_examples(EXAMPLES, tokenizer)  # what training sees
    with torch.no_grad():
        expected = base(**data.batch(torch.arange(len(data)))).loss.item()
    assert quality.heldout_loss(base, tokenizer, EXAMPLES) == pytest.approx(expected, rel=1e-5)
    # averaged over tokens, not batches: the batch size does not change it
    assert quality.heldout_loss(base, tokenizer, EXAMPLES, batch_size=1) == pytest.approx(
        expected, rel=1e-5
    )


def test_final_train_loss_is_the_mean_of_the_last_20_steps():
    assert quality.final_train_loss([100.0] * 5 + [1.0] * 10 + [3.0] * 10) == 2.0
    assert quality.final_train_loss([4.0, 2.0]) == 3.0


@pytest.mark.parametrize(
    ("a", "b", "higher", "expected"),
    [
        ([0.7, 0.75, 0.8], [0.4, 0.6, 0.72], True, "wins"),  # medians outside both ranges
        ([0.4, 0.6, 0.72], [0.7, 0.75, 0.8], True, "loses"),
        ([0.4, 0.6, 0.8], [0.55, 0.58, 0.62], True, "ties"),  # overlapping spreads
        ([0.3, 0.75, 0.8], [0.4, 0.6, 0.72], True, "ties"),  # a's median beats b, not vice versa
        ([0.2, 0.25, 0.3], [0.5, 0.6, 0.7], False, "wins"),  # losses: lower is better
        ([0.5], [0.5], True, "ties"),
        ([0.51], [0.5], True, "wins"),  # one seed: any difference decides
    ],
)
def test_verdict(a, b, higher, expected):
    assert quality.verdict(a, b, higher_is_better=higher) == expected
    mirror = {"wins": "loses", "loses": "wins", "ties": "ties"}[expected]
    assert quality.verdict(b, a, higher_is_better=higher) == mirror


def test_verdict_ignores_differences_below_the_reported_precision():
    assert quality.verdict([0.5004], [0.5001], higher_is_better=True) == "wins"
    assert quality.verdict([0.5004], [0.5001], higher_is_better=True, decimals=3) == "ties"
    assert quality.verdict([0.5014], [0.5001], higher_is_better=True, decimals=3) == "wins"


def test_arguments():
    args = quality.parse_args(["--quick", "--steps", "7"])
    assert (args.seeds, args.steps, args.pretrain_steps) == ([0], 7, 1500)
    args = quality.parse_args(["--methods", "qwthn,lora-r4"])
    assert (args.seeds, args.steps, args.pretrain_steps) == ([0, 1, 2], 600, 1500)
    assert args.methods == ["qwthn", "lora-r4"]
    with pytest.raises(SystemExit):
        quality.parse_args(["--methods", "qwthn,lora-r5"])


def test_plots_without_matplotlib_fail_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        quality.main(["--plots", str(tmp_path), "--methods", "qwthn"])
    assert not list(tmp_path.iterdir())


def test_ablations_without_the_qnn_or_mpo_path(base):
    try:
        QWTHNConfig(fusion="mpo")
        QWTHNConfig(fusion="qnn")
    except ConfigError as e:
        pytest.skip(f"this QWTHNConfig has no fusion='mpo'/'qnn' yet: {e}")
    counts = {
        name: quality.trainable_parameters(
            quality.attach("qwthn", quality.METHODS_BY_NAME[name].changes, _copy(base))
        )
        for name in ("qwthn", "qwthn-mpo-only", "qwthn-qnn-only")
    }
    assert counts["qwthn-mpo-only"] < counts["qwthn"]
    assert counts["qwthn-qnn-only"] == counts["qwthn"]  # same modules, P(q) replaces a * P(q)


def test_tiny_end_to_end_run(tmp_path, capsys):
    out, plots = tmp_path / "quality.json", tmp_path / "plots"
    argv = ["--quick", "--steps", "3", "--pretrain-steps", "2"]  # quick's seed 0, tiny steps
    argv += ["--methods", "qwthn-linear,lora-r4,qwthn", "--json", str(out)]
    # matplotlib is an optional extra: without it the run is still checked, the PNGs are not
    with_plots = importlib.util.find_spec("matplotlib") is not None
    quality.main(argv + (["--plots", str(plots)] if with_plots else []))

    report = capsys.readouterr().out
    assert report.startswith("# Does QWTHN pay off?")
    assert "--quick: a smoke check, not a result" in report
    for heading in ("## Main comparison", "## Ablations", "## Verdicts", "FIXED A PRIORI"):
        assert heading in report
    assert "qwthn (1,936 trainable, -46% vs LoRA r=8), on held-out exact match:" in report

    result = json.loads(out.read_text())
    assert set(result) >= {"machine", "versions", "settings", "runs", "summary", "verdicts"}
    assert set(result["versions"]) >= {"torch", "transformers", "peft", "qwthn_onnx"}
    assert result["settings"]["methods"] == ["lora-r4", "qwthn", "qwthn-linear"]  # canonical
    assert result["settings"]["hyperparameters_fixed_a_priori"] is True
    assert (result["settings"]["seeds"], result["settings"]["steps"]) == ([0], 3)
    assert [(r["seed"], r["method"]) for r in result["runs"]] == [
        (0, "lora-r4"),
        (0, "qwthn"),
        (0, "qwthn-linear"),
    ]
    for run in result["runs"]:
        assert len(run["losses"]) == 3
        assert run["final_train_loss"] == pytest.approx(sum(run["losses"]) / 3)
        for key in ("heldout_loss", "exact_match", "exact_match_before", "ms_per_step"):
            assert isinstance(run[key], float)
        assert run["config"]["target_modules"] == ["q_proj", "v_proj"]
    assert result["summary"]["qwthn"]["trainable"] == 1936
    assert result["summary"]["lora-r4"]["vs_lora_r8"] == pytest.approx(-0.5)
    assert result["summary"]["qwthn-linear"]["group"] == "ablation"
    pairs = {(v["method"], v["versus"], v["metric"]) for v in result["verdicts"]}
    assert pairs == {
        ("qwthn", "lora-r4", "exact_match"),
        ("qwthn", "lora-r4", "heldout_loss"),
        ("qwthn-linear", "qwthn", "exact_match"),
        ("qwthn-linear", "qwthn", "heldout_loss"),
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries
    if with_plots:
        names = ("loss_curves", "params_vs_accuracy", "ablations")
        assert sorted(p.name for p in plots.iterdir()) == sorted(f"quality_{n}.png" for n in names)
        for name in names:
            assert (plots / f"quality_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
