"""benchmarks/smollm2_study.py: the cut model is the whole model, the loss and exact match are what
they claim, the paired statistics and verdict rules, and ``--quick`` end to end on a tiny
stand-in base (so the script cannot rot)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from qwthn_onnx.data import TokenizedData

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # scripts, no package

import run_all
import smollm2_study as study
from quality import attach
from study_tasks import arithmetic_splits

# Skipped without Debian's dict-devil, except under CI (README command 2 installs it), where a
# missing install step must fail rather than hide.
needs_devil = pytest.mark.skipif(
    not study.DEVIL_PATH.exists() and not os.environ.get("CI"),
    reason="apt-get install dict-devil (README command 2 does)",
)


@pytest.fixture(scope="module")
def tiny():
    texts = [e.prompt + e.completion for e in arithmetic_splits(200, 1, 1)["train"]]
    model, tokenizer = study.build_tiny_base(texts)
    bottom, top = study.split_base(model, 2)
    return model, tokenizer, bottom, top


def _padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding, as tokenize_examples pads
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, :4] = -100  # a prompt: no loss there
    return ids, mask, labels


def test_the_cut_model_is_the_whole_model(tiny):
    model, _, bottom, top = tiny
    ids, mask, labels = _padded_batch(model.config.vocab_size)
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, labels=labels)
        hidden = bottom(input_ids=ids, attention_mask=mask).last_hidden_state
        cut = top(inputs_embeds=hidden, attention_mask=mask, labels=labels)
    assert top.config.num_hidden_layers == 2 and len(bottom.layers) == 2
    kept = mask.bool()
    assert torch.allclose(whole.logits[kept], cut.logits[kept], atol=1e-5)
    assert math.isclose(whole.loss.item(), cut.loss.item(), rel_tol=1e-5)
    # the top's head is still tied to its embedding, and nothing of the base trains
    assert top.lm_head.weight.data_ptr() == top.model.embed_tokens.weight.data_ptr()
    assert not any(p.requires_grad for p in (*top.parameters(), *bottom.parameters()))
    # CachedSplit holds exactly those hidden states
    split = study.CachedSplit(TokenizedData(ids, mask, labels), bottom, batch_size=2)
    assert torch.allclose(split.hidden, hidden, atol=1e-6)
    with pytest.raises(SystemExit, match=r"adapted-layers must be in 1\.\.3"):
        study.split_base(model, 4)


@pytest.mark.parametrize("kind,changes", [("lora", {"r": 4}), ("qwthn", {"rank": 4})])
def test_labelled_positions_loss_is_the_causal_lm_loss_with_adapters(tiny, kind, changes):
    model, _, bottom, top = tiny
    ids, mask, labels = _padded_batch(model.config.vocab_size)
    with torch.no_grad():
        hidden = bottom(input_ids=ids, attention_mask=mask).last_hidden_state
        base_loss = top(inputs_embeds=hidden, attention_mask=mask, labels=labels).loss
    torch.manual_seed(0)
    adapted = attach(kind, changes, copy.deepcopy(top))
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:  # LoRA's B and QWTHN's last core start at zero: move them
                p.add_(0.3 * torch.randn_like(p))
        expected = adapted(inputs_embeds=hidden, attention_mask=mask, labels=labels).loss
        wrapped = study.LabelledPositionsLM(adapted)
        got = wrapped(inputs_embeds=hidden, attention_mask=mask, labels=labels).loss
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)
    assert not math.isclose(got.item(), base_loss.item(), rel_tol=1e-3)  # the adapter acts
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and trainable == {
        "adapted." + n for n, p in adapted.named_parameters() if p.requires_grad
    }


def test_exact_match_is_greedy_decoding_and_counts_whole_rows(tiny):
    """Rows whose labelled tokens are the model's own greedy continuation score 1, and the
    same rows with one continuation token changed score 0."""
    model, tokenizer, bottom, top = tiny
    prompts = ["Question: Mia has 3 apples", "Question: Omar buys 12", "Answer: 7"]
    rows = []
    for text in prompts:
        ids = [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]
        prompt_len = len(ids)
        with torch.no_grad():
            for _ in range(3):  # greedy decoding, one token at a time, with the whole model
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        rows.append((ids, prompt_len))
    width = max(len(ids) for ids, _ in rows)
    n = len(rows)
    input_ids = torch.zeros((2 * n, width), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (ids, prompt_len) in enumerate(rows):
        for row, changed in ((i, ids), (n + i, [*ids[:-2], (ids[-2] + 1) % 500, ids[-1]])):
            input_ids[row, : len(changed)] = torch.tensor(changed)
            mask[row, : len(changed)] = 1
            labels[row, prompt_len : len(changed)] = torch.tensor(changed[prompt_len:])
    split = study.CachedSplit(TokenizedData(input_ids[:n], mask[:n], labels[:n]), bottom)
    changed = study.CachedSplit(TokenizedData(input_ids[n:], mask[n:], labels[n:]), bottom)
    scorer = study.LabelledPositionsLM(top)
    assert study.evaluate_split(scorer, split)["exact_match"] == 1.0
    assert study.evaluate_split(scorer, changed)["exact_match"] == 0.0
    both = study.CachedSplit(TokenizedData(input_ids, mask, labels), bottom, batch_size=4)
    result = study.evaluate_split(scorer, both, batch_size=4)  # rows across batches
    assert result["exact_match"] == 0.5
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def _runs(method_values: dict[str, list[float]], key: str) -> list[dict]:
    return [
        {"method": m, "seed": seed, key: v}
        for m, values in method_values.items()
        for seed, v in enumerate(values)
    ]


def test_paired_differences_mean_t_interval_and_seeds_won():
    runs = _runs({"lora-r8": [2.0, 2.0, 2.0], "qwthn-76": [2.2, 2.3, 2.4]}, "test_loss")
    c = study.paired(runs, "qwthn-76", study.TEST_LOSS)
    assert c["differences"] == pytest.approx([0.1, 0.15, 0.2])  # relative to LoRA r=8's mean
    assert c["mean"] == pytest.approx(0.15)
    half = 4.302653 * 0.05 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert c["ci95"] == pytest.approx([0.15 - half, 0.15 + half], abs=1e-6)
    assert c["better"] == 0  # higher loss on every seed
    assert study.direction(c, study.TEST_LOSS) == "worse"
    # exact match: points, not relative; higher is better
    em = _runs({"lora-r8": [0.5, 0.6, 0.4], "qwthn-76": [0.6, 0.6, 0.5]}, "test_exact_match")
    c = study.paired(em, "qwthn-76", study.EXACT_MATCH)
    assert c["mean"] == pytest.approx(0.2 / 3) and c["better"] == 2
    assert study.direction(c, study.EXACT_MATCH) == "unclear"  # one tie: the interval holds 0
    # only seeds both ran are paired; one seed has no interval
    one = _runs({"lora-r8": [1.0, 1.0], "qwthn-paper": [0.5]}, "test_loss")
    c = study.paired(one, "qwthn-paper", study.TEST_LOSS)
    assert c["seeds"] == [0] and c["ci95"] is None
    assert study.direction(c, study.TEST_LOSS) == "unclear"


def test_noninferiority_margin():
    c = {"ci95": [0.002, 0.008]}  # test loss 0.2%..0.8% above LoRA r=8
    assert study.direction(c, study.TEST_LOSS) == "worse"
    assert study.direction(c, study.TEST_LOSS, margin=0.01) == "better"  # "as good as"
    assert study.direction({"ci95": [0.012, 0.03]}, study.TEST_LOSS, margin=0.01) == "worse"
    assert study.direction({"ci95": [0.005, 0.03]}, study.TEST_LOSS, margin=0.01) == "unclear"


def _task(losses: dict[str, list[float]], em: dict[str, list[float]] | None = None) -> dict:
    runs = []
    for method, values in losses.items():
        for seed, v in enumerate(values):
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "final_train_loss": v,
                    "test_loss": v,
                    "test_exact_match": (em or {}).get(method, [0.0] * len(values))[seed],
                }
            )
    return {"runs": runs}


def test_verdicts_per_claim():
    better = {"lora-r8": [2.0, 2.1, 1.9, 2.0, 2.05], "qwthn-76": [1.7, 1.8, 1.6, 1.7, 1.72]}
    worse = {"lora-r8": [2.0, 2.1, 1.9, 2.0, 2.05], "qwthn-76": [2.4, 2.5, 2.3, 2.4, 2.45]}
    em_up = {"lora-r8": [0.3, 0.4, 0.35, 0.3, 0.32], "qwthn-76": [0.5, 0.6, 0.55, 0.5, 0.52]}
    got = study.verdicts(
        {"arithmetic": _task(better, em_up), "devil": _task(better)}, trainable_ratio=0.24
    )
    assert [v["verdict"] for v in got] == ["supported", "supported", "supported"]
    assert "arithmetic" in got[2]["why"] and "devil" in got[2]["why"]
    got = study.verdicts({"arithmetic": _task(better, em_up), "devil": _task(worse)}, 0.24)
    assert [v["verdict"] for v in got] == ["not supported"] * 3  # one task against is enough
    # too many parameters: the parameter claim fails whatever the losses
    got = study.verdicts({"arithmetic": _task(better, em_up), "devil": _task(better)}, 0.5)
    assert got[0]["verdict"] == "not supported"
    noisy = {"lora-r8": [2.0, 1.5, 2.5, 2.0, 1.0], "qwthn-76": [1.9, 1.9, 2.2, 1.8, 1.6]}
    got = study.verdicts({"devil": _task(noisy)}, 0.24)
    assert [v["verdict"] for v in got] == ["inconclusive"] * 3


def test_bad_arguments_and_missing_text_are_refused(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--tasks", "poetry"])
    assert "unknown task(s) ['poetry']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.parse_args(["--lr-grid", "0.01", "0.01"])
    assert "distinct learning rates" in capsys.readouterr().err
    args = study.parse_args(["--methods", "qwthn-76", "--quick"])
    assert args.methods == ["qwthn-76", "lora-r8"]  # the reference always runs
    assert args.seeds == study.QUICK_SEEDS and args.lr_grid == list(study.QUICK_LR_GRID)
    monkeypatch.setattr(study, "DEVIL_PATH", Path("/nonexistent/devil.dict.dz"))
    with pytest.raises(SystemExit, match="apt-get install dict-devil"):
        study.main(["--base", "tiny", "--tasks", "devil"])
    monkeypatch.setattr(run_all, "DEVIL_PATH", "/nonexistent/devil.dict.dz")
    assert "apt-get install dict-devil" in run_all.missing_setup(run_all.BENCHMARKS["study"])


def test_quick_run_on_a_tiny_base(tmp_path, capsys):
    out, plots = tmp_path / "study.json", tmp_path / "plots"
    argv = ["--quick", "--base", "tiny", "--threads", "1", "--lr-grid", "0.003", "0.01"]
    # Both tasks where the text is installed (always under CI); the arithmetic alone elsewhere.
    with_devil = study.DEVIL_PATH.exists() or bool(os.environ.get("CI"))
    argv += [] if with_devil else ["--tasks", "arithmetic"]
    with_plots = importlib.util.find_spec("matplotlib") is not None
    study.main([*argv, "--json", str(out)] + (["--plots", str(plots)] if with_plots else []))
    report = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["pairing_problems"] == []
    assert set(result["tasks"]) == ({"arithmetic", "devil"} if with_devil else {"arithmetic"})
    for name, task in result["tasks"].items():
        runs = task["runs"]
        spec = study.QUICK_TASKS[name]
        expected = {m for m in spec.methods if m != "qwthn-paper" or spec.paper_seeds}
        assert {r["method"] for r in runs} == expected
        for method in expected:
            seeds = sorted(r["seed"] for r in runs if r["method"] == method)
            assert seeds == ([0] if method == "qwthn-paper" else [0, 1])
        # paired: every run of a seed saw the same batches in the same order, seeds differ
        orders = {seed: {r["data_order"] for r in runs if r["seed"] == seed} for seed in (0, 1)}
        assert all(len(o) == 1 for o in orders.values()) and orders[0] != orders[1]
        # the rate: the sweep's best by validation loss, on the sweep's own seed (no reported
        # run is a sweep run); ablations and the paper circuit take their reference's rate
        for method, losses in task["lr_sweep"].items():
            best = min(losses, key=losses.get)
            assert task["learning_rates"][method] == pytest.approx(float(best), rel=1e-2)
            swept = [r for r in task["sweep_runs"] if r["method"] == method]
            assert {r["seed"] for r in swept} == {study.SWEEP_SEED}
            assert sorted(r["val_loss"] for r in swept) == sorted(losses.values())
            assert all(
                r["learning_rate"] == task["learning_rates"][method]
                for r in runs
                if r["method"] == method
            )
        for method in set(study.LR_FROM) & expected:  # ablations, the paper circuit
            assert method not in task["lr_sweep"]
            assert task["learning_rates"][method] == task["learning_rates"][study.LR_FROM[method]]
        counts = {r["method"]: r["trainable"] for r in runs}
        assert counts["qwthn-76"] / counts["lora-r8"] == pytest.approx(0.24, abs=0.01)
        assert counts["qwthn-matched"] / counts["lora-r8"] == pytest.approx(1.0, abs=0.01)
        for r in runs:
            assert len(r["losses"]) == spec.steps and all(math.isfinite(v) for v in r["losses"])
            assert r["final_train_loss"] == pytest.approx(statistics.fmean(r["losses"][-10:]))
        # fine-tuning moved the loss from the base's
        assert min(r["val_loss"] for r in runs) < task["before"]["val"]["loss"]
    assert all(not t["diverged"] for t in result["tasks"].values())
    # one comparison recomputed from the runs
    c = next(
        c
        for c in result["comparisons"]
        if c["task"] == "arithmetic" and c["metric"] == "test_loss" and c["method"] == "qwthn-76"
    )
    runs = result["tasks"]["arithmetic"]["runs"]
    mine = {r["seed"]: r["test_loss"] for r in runs if r["method"] == c["method"]}
    ref = {r["seed"]: r["test_loss"] for r in runs if r["method"] == "lora-r8"}
    scale = statistics.fmean(ref.values())
    assert c["mean"] == pytest.approx(statistics.fmean((mine[s] - ref[s]) / scale for s in ref))
    verdicts = {v["verdict"] for v in result["verdicts"]}
    assert len(result["verdicts"]) == 3 and verdicts <= {
        "supported",
        "not supported",
        "inconclusive",
    }
    assert "a check of the pipeline, not a result" in report
    assert "## Verdicts on the paper's claims" in report and "## Paired differences" in report
    for v in result["verdicts"]:
        assert f"**{v['claim']}: {v['verdict']}.**" in report
    assert f"| arithmetic | qwthn-76 | test loss | {study._fmt_diff(c)} |" in report
    if with_devil:
        assert "blocks of 48 tokens" in report  # the block length the devil task ran with
    if with_plots:
        for name in ("study_loss_curves.png", "study_paired.png", "study_params.png"):
            assert (plots / name).read_bytes()[:4] == b"\x89PNG"


def test_the_sweep_extends_past_an_edge_and_stops_inside():
    calls = []

    def valley(at: float):
        def val_loss(lr: float) -> float:
            calls.append(lr)
            return (math.log(lr) - math.log(at)) ** 2

        return val_loss

    grid = (3e-3, 1e-2, 3e-2)
    assert study.sweep_learning_rate(valley(1e-2), grid) == 1e-2 and len(calls) == 3
    calls.clear()  # best at the top edge: one step up (x3) finds the valley, then it stops
    assert study.sweep_learning_rate(valley(0.1), grid) == pytest.approx(0.09)
    assert calls[3:] == [pytest.approx(0.09), pytest.approx(0.27)]
    calls.clear()  # at the bottom edge: steps down, at most MAX_EXTENSIONS of them
    assert study.sweep_learning_rate(valley(1e-6), grid) == pytest.approx(3e-3 * 0.3 * 0.3)
    assert len(calls) == 3 + study.MAX_EXTENSIONS
    calls.clear()  # never a rate of 1 or more
    assert study.sweep_learning_rate(valley(5.0), (0.1, 0.3)) == pytest.approx(0.9)
    assert calls[2:] == [pytest.approx(0.9)]
    assert study.sweep_learning_rate(valley(5.0), (0.2,)) == 0.2  # one rate: nothing to extend


def test_a_run_does_not_depend_on_the_runs_before_it(tiny):
    """The pairing rests on it: same method, seed and rate give the same run, whatever ran
    in between (adapter init and batch order are re-seeded per run)."""
    _, tokenizer, bottom, top = tiny
    spec = study.TaskSpec("arithmetic", "exact_match", 3, 4, 4, 4, 128, ("lora-r8",), 0, 0)
    examples = arithmetic_splits(12, 4, 4)
    from qwthn_onnx import tokenize_examples

    splits = {
        name: study.CachedSplit(tokenize_examples(rows, tokenizer), bottom)
        for name, rows in examples.items()
    }
    changes = {"lora-r8": {"r": 8}, "qwthn-76": {"rank": 2, "mpo_bond_dim": 2}}
    runs = study.Study(top, changes, spec, splits)
    first = study.run_one(runs, "qwthn-76", 3, 0.01)
    study.run_one(runs, "lora-r8", 4, 0.03)
    again = study.run_one(runs, "qwthn-76", 3, 0.01)
    assert first["losses"] == again["losses"] and first["val_loss"] == again["val_loss"]
    assert first["data_order"] == again["data_order"]


def test_a_diverging_rate_loses_the_sweep_instead_of_ending_the_study(tiny, monkeypatch):
    def val_loss(lr: float) -> float:
        return math.inf if lr > 0.02 else 1.0 / lr  # higher is better until it diverges

    assert study.sweep_learning_rate(val_loss, (3e-3, 1e-2, 3e-2)) == 1e-2
    _, tokenizer, bottom, top = tiny
    spec = study.TaskSpec("arithmetic", "exact_match", 3, 4, 4, 4, 128, ("lora-r8",), 0, 0)
    from qwthn_onnx import tokenize_examples
    from qwthn_onnx.training import TrainingError

    splits = {
        name: study.CachedSplit(tokenize_examples(rows, tokenizer), bottom)
        for name, rows in arithmetic_splits(12, 4, 4).items()
    }

    def diverges(*args, **kwargs):  # what train() raises on a non-finite loss
        raise TrainingError("loss became nan at step 2; lower the learning rate")

    monkeypatch.setattr(study, "train", diverges)
    run = study.run_one(study.Study(top, {"lora-r8": {"r": 8}}, spec, splits), "lora-r8", 0, 3.0)
    assert run["diverged"].startswith("loss became nan") and run["val_loss"] == math.inf
    assert "diverged (loss became nan" in study._run_line(run)


def test_verdicts_without_the_primary_method_say_not_measured():
    only_lora = _task({"lora-r8": [1.0, 1.1]})
    got = study.verdicts({"devil": only_lora}, trainable_ratio=None)
    assert [v["verdict"] for v in got] == ["not measured"] * 3
