"""benchmarks/study_tasks.py: the arithmetic word problems and The Devil's Dictionary splits.

The dictionary tests read the real Debian package (``apt-get install dict-devil``).
"""

from __future__ import annotations

import ast
import functools
import gzip
import operator
import random
import re
import sys
from itertools import product
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import study_tasks
from study_tasks import (
    ARITHMETIC_TEMPLATES,
    DEVIL_PATH,
    SPLITS,
    DataUnavailable,
    arithmetic_description,
    arithmetic_splits,
    devil_description,
    devil_entries,
    devil_splits,
)

# The arithmetic each template's wording describes, written by hand from reading its text
# (numbers in the order they appear), independently of the module's formula strings.
BY_HAND = {
    "buy_then_give": lambda a, b, c: a + b - c,
    "three_days": lambda a, b, c: a + b + c,
    "spend_twice": lambda a, b, c: a - b - c,
    "boxes_plus_loose": lambda a, b, c: a * b + c,
    "garden_rows_picked": lambda a, b, c: a * b - c,
    "pages_per_day": lambda a, b, c: (a + b) * c,
    "bakery_unsold": lambda a, b, c: (a - b) * c,
    "shelf_rows_boxes": lambda a, b, c: a * b * c,
    "notebook_change": lambda a, b, c: c - a * b,
    "father_age": lambda a, b, c: a * b + c,
    "bus_stop": lambda a, b, c: a - b + c,
    "weekly_savings": lambda a, b, c: a + b * c,
    "library_shelf": lambda a, b, c: a + b - c,
    "packs_shared": lambda a, b, c: a * b - c,
    "monthly_tickets": lambda a, b, c: (a + b) * c,
    "farm_eggs": lambda a, b, c: a - b - c,
    "carrot_rows": lambda a, b, c: a * b + c,
    "pens_bought": lambda a, b, c: a - b * c,
}
# How each template's arithmetic is worked, step by step, in the order it is done: (left, sign,
# right), where a letter is that number of the problem (a, b, c in the order the wording gives
# them) and an int is the result of that earlier step. Written by hand like BY_HAND.
STEPS = {
    "buy_then_give": (("a", "+", "b"), (0, "-", "c")),
    "three_days": (("a", "+", "b"), (0, "+", "c")),
    "spend_twice": (("a", "-", "b"), (0, "-", "c")),
    "boxes_plus_loose": (("a", "*", "b"), (0, "+", "c")),
    "garden_rows_picked": (("a", "*", "b"), (0, "-", "c")),
    "pages_per_day": (("a", "+", "b"), (0, "*", "c")),
    "bakery_unsold": (("a", "-", "b"), (0, "*", "c")),
    "shelf_rows_boxes": (("a", "*", "b"), (0, "*", "c")),
    "notebook_change": (("a", "*", "b"), ("c", "-", 0)),
    "father_age": (("a", "*", "b"), (0, "+", "c")),
    "bus_stop": (("a", "-", "b"), (0, "+", "c")),
    "weekly_savings": (("b", "*", "c"), ("a", "+", 0)),
    "library_shelf": (("a", "+", "b"), (0, "-", "c")),
    "packs_shared": (("a", "*", "b"), (0, "-", "c")),
    "monthly_tickets": (("a", "+", "b"), (0, "*", "c")),
    "farm_eggs": (("a", "-", "b"), (0, "-", "c")),
    "carrot_rows": (("a", "*", "b"), (0, "+", "c")),
    "pens_bought": (("b", "*", "c"), ("a", "-", 0)),
}
SIGNS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
SOLUTION = re.compile(r" (?P<steps>.+)\. The answer is (?P<answer>\d+)\.")
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
NAMES = study_tasks._FEMALE + study_tasks._MALE
CAP = 25  # the study's max_number


@pytest.fixture(scope="module")
def problems():
    return arithmetic_splits(3000, 600, 600, data_seed=0)


@functools.cache
def _pattern(template: study_tasks.Template) -> re.Pattern[str]:
    """A regex matching exactly the prompts ``template`` can render, numbers captured."""
    names = "|".join(NAMES)
    fill = {
        "a": r"(\d+)",
        "b": r"(\d+)",
        "c": r"(\d+)",
        "name": f"(?:{names})",
        "other": f"(?:{names})",
        "item": f"(?:{'|'.join(template.items)})",
        **{p: f"(?:{'|'.join(sorted({g[p] for g in study_tasks._PRONOUNS.values()}))})"
           for p in ("he", "He", "his", "His", "him")},
    }  # fmt: skip
    parts = re.split(r"\{(\w+)\}", template.text)
    body = "".join(re.escape(part) if i % 2 == 0 else fill[part] for i, part in enumerate(parts))
    return re.compile(f"Question: {body}\nAnswer:")


def _match(prompt: str) -> tuple[study_tasks.Template, tuple[int, ...]]:
    """The one template whose wording produced ``prompt``, and the numbers in it."""
    found = [(t, m) for t in ARITHMETIC_TEMPLATES if (m := _pattern(t).fullmatch(prompt))]
    assert len(found) == 1, prompt
    template, match = found[0]
    return template, tuple(int(g) for g in match.groups())


def _check_solution(
    template: study_tasks.Template, numbers: tuple[int, ...], completion: str
) -> int:
    """Read a worked completion step by step against STEPS; its answer, once all checks pass."""
    match = SOLUTION.fullmatch(completion)
    assert match, completion
    steps = [STEP.fullmatch(step) for step in match["steps"].split(", ")]
    plan = STEPS[template.name]
    assert all(steps) and len(steps) == len(plan), completion
    values = dict(zip("abc", numbers, strict=True))
    results: list[int] = []
    for step, (left, sign, right) in zip(steps, plan, strict=True):
        x, y, result = int(step[1]), int(step[3]), int(step[4])
        assert step[2] == sign, completion
        assert SIGNS[sign](x, y) == result, completion  # the step's own arithmetic
        # its operands: the problem's numbers, or the result of the step the formula says
        assert [x, y] == [results[s] if isinstance(s, int) else values[s] for s in (left, right)]
        results.append(result)
    answer = int(match["answer"])
    assert answer == results[-1] == template.answer(numbers), completion
    assert answer == BY_HAND[template.name](*numbers), completion
    return answer


def _sensible(name: str, numbers: tuple[int, ...]) -> bool:
    """Whether a story works with these numbers: no step goes negative, the answer <= 999."""
    values = dict(zip("abc", numbers, strict=True))
    results: list[int] = []
    for left, sign, right in STEPS[name]:
        operands = [results[s] if isinstance(s, int) else values[s] for s in (left, right)]
        results.append(SIGNS[sign](*operands))
    return min(results) >= 0 and results[-1] <= 999


def _capped_problems(split: str, cap: int) -> set[tuple[str, tuple[int, ...]]]:
    """Every (template, numbers) of ``split`` with no number above ``cap``, enumerated here."""
    return {
        (t.name, numbers)
        for t in ARITHMETIC_TEMPLATES
        if t.split == split
        for numbers in product(*(range(lo, min(hi, cap) + 1) for lo, hi in t.ranges.values()))
        if _sensible(t.name, numbers) and study_tasks._number_split(numbers) == split
    }


def test_templates_are_split_12_3_3_with_mixed_operations():
    assert set(BY_HAND) == set(STEPS) == {t.name for t in ARITHMETIC_TEMPLATES}
    assert all(list(t.ranges) == ["a", "b", "c"] for t in ARITHMETIC_TEMPLATES)
    by_split = {s: [t for t in ARITHMETIC_TEMPLATES if t.split == s] for s in SPLITS}
    assert [len(by_split[s]) for s in SPLITS] == [12, 3, 3]
    # a held-out wording shares no text with any other template
    texts = [t.text for t in ARITHMETIC_TEMPLATES]
    assert len(set(texts)) == len(texts)
    for split in ("val", "test"):
        formulas = {t.formula for t in by_split[split]}
        assert len(formulas) == 3  # three different operation patterns
        assert formulas <= {t.formula for t in by_split["train"]} | {"a - b * c"}
    assert {t.formula for t in by_split["train"]} >= {
        "a + b - c", "a + b + c", "a - b - c", "a * b + c", "a * b - c",
        "(a + b) * c", "(a - b) * c", "a * b * c",
    }  # fmt: skip
    for t in ARITHMETIC_TEMPLATES:
        # the numbers appear in the order a, b, c, each once, and no other digit appears
        assert re.findall(r"\{([abc])\}", t.text) == ["a", "b", "c"], t.name
        assert not re.search(r"\d", t.text + "".join(t.items) + "".join(NAMES))
        # two operations, and every multiplied number is small
        tree = ast.parse(t.formula, mode="eval")
        assert sum(isinstance(n, ast.BinOp) for n in ast.walk(tree)) == 2, t.name
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Name):
                        lo, hi = t.ranges[side.id]
                        assert 2 <= lo <= hi <= 12, (t.name, side.id)


def test_hand_written_problems():
    templates = {t.name: t for t in ARITHMETIC_TEMPLATES}
    assert templates["buy_then_give"].answer((14, 9, 5)) == 18
    assert templates["notebook_change"].answer((3, 4, 20)) == 8
    assert templates["pages_per_day"].answer((10, 5, 7)) == 105
    assert templates["pens_bought"].answer((50, 4, 6)) == 26
    assert templates["shelf_rows_boxes"].answer((9, 9, 9)) == 729
    # worked in the order the arithmetic is done: a product before the sum or difference
    # written left of it (c - a * b, a + b * c, a - b * c)
    assert templates["notebook_change"].solution((3, 4, 20)) == (
        "3 * 4 = 12, 20 - 12 = 8. The answer is 8."
    )
    assert templates["weekly_savings"].solution((10, 3, 5)) == (
        "3 * 5 = 15, 10 + 15 = 25. The answer is 25."
    )
    assert templates["pens_bought"].solution((50, 4, 6)) == (
        "4 * 6 = 24, 50 - 24 = 26. The answer is 26."
    )
    assert templates["buy_then_give"].solution((14, 9, 5)) == (
        "14 + 9 = 23, 23 - 5 = 18. The answer is 18."
    )
    assert templates["pages_per_day"].solution((10, 5, 7)) == (
        "10 + 5 = 15, 15 * 7 = 105. The answer is 105."
    )
    # a story never goes below zero on the way, nor past 999
    assert not templates["bus_stop"].valid((10, 12, 30))  # 10 - 12 + 30 = 28, but 10 - 12 < 0
    assert templates["bus_stop"].valid((12, 12, 30))
    assert not templates["spend_twice"].valid((20, 15, 6))
    assert not templates["notebook_change"].valid((12, 12, 143))
    assert templates["pages_per_day"].valid((40, 40, 12))  # 960
    assert not templates["pages_per_day"].valid((41, 43, 12))  # 1008
    # generated problems, checked by reading them (data_seed 0)
    got = arithmetic_splits(5, 3, 3, data_seed=0)
    assert (got["train"][0].prompt, got["train"][0].completion) == (
        "Question: There are 12 boxes with 10 muffins in each box, and 23 more muffins on the "
        "table. How many muffins are there in all?\nAnswer:",
        " 12 * 10 = 120, 120 + 23 = 143. The answer is 143.",
    )
    assert (got["val"][1].prompt, got["val"][1].completion) == (
        "Question: Tariq bought 9 packs with 8 apples in each pack. He shared 71 of them with "
        "Hugo. How many apples does Tariq still have?\nAnswer:",
        " 9 * 8 = 72, 72 - 71 = 1. The answer is 1.",
    )
    assert (got["test"][1].prompt, got["test"][1].completion) == (
        "Question: Lucia collected 117 eggs on the farm. Of these, 46 broke and she sold 39 at "
        "the market. How many eggs does she have left?\nAnswer:",
        " 117 - 46 = 71, 71 - 39 = 32. The answer is 32.",
    )
    assert (got["test"][2].prompt, got["test"][2].completion) == (
        "Question: Yusuf has 167 dollars. He buys 6 pens that cost 9 dollars each. "
        "How many dollars does he have left?\nAnswer:",
        " 6 * 9 = 54, 167 - 54 = 113. The answer is 113.",
    )


def test_every_answer_is_the_arithmetic_its_wording_describes(problems):
    for split, examples in problems.items():
        for i, example in enumerate(examples):
            template, numbers = _match(example.prompt)
            assert template.split == split
            assert example.source == f"arithmetic {split} #{i} ({template.name})"
            answer = _check_solution(template, numbers, example.completion)
            assert 0 <= answer <= 999
            for variable, number in zip("abc", numbers, strict=True):
                lo, hi = template.ranges[variable]
                assert lo <= number <= hi


@pytest.mark.parametrize("template", ARITHMETIC_TEMPLATES, ids=lambda t: t.name)
def test_worked_solution_of_every_template(template):
    rng = random.Random(template.name)
    tuples = {tuple(lo for lo, _ in template.ranges.values())}
    while len(tuples) < 6:
        numbers = tuple(rng.randint(lo, hi) for lo, hi in template.ranges.values())
        if template.valid(numbers):
            tuples.add(numbers)
    for numbers in sorted(tuples):
        assert template.valid(numbers) == _sensible(template.name, numbers)
        if not template.valid(numbers):
            continue
        # the steps' operands are the numbers of the rendered problem, as the wording gives them
        prompt = template.render(numbers, rng)
        in_prompt = tuple(int(n) for n in re.findall(r"\d+", prompt))
        assert in_prompt == numbers, prompt
        _check_solution(template, in_prompt, f" {template.solution(numbers)}")


def test_pronouns_agree_with_the_name(problems):
    female = set(study_tasks._FEMALE)
    for example in problems["train"][:500]:
        name = example.prompt.removeprefix("Question: ").split()[0]
        if name not in female | set(study_tasks._MALE):
            continue
        words = set(re.findall(r"[A-Za-z]+", example.prompt.lower()))
        if name in female:
            assert not words & {"he", "his", "him"}, example.prompt
        else:
            assert not words & {"she", "her"}, example.prompt


def test_numbers_of_val_and_test_never_occur_in_train(problems):
    tuples = {s: {_match(e.prompt)[1] for e in problems[s]} for s in SPLITS}
    assert not tuples["val"] & tuples["train"]
    assert not tuples["test"] & tuples["train"]
    assert not tuples["val"] & tuples["test"]
    # the partition is of the numbers themselves, so it holds whatever the sizes and seed
    other = arithmetic_splits(4000, 50, 50, data_seed=7)
    assert not {_match(e.prompt)[1] for e in other["train"]} & (tuples["val"] | tuples["test"])


def test_sizes_layout_and_no_repeats(problems):
    assert {s: len(v) for s, v in problems.items()} == {"train": 3000, "val": 600, "test": 600}
    for examples in problems.values():
        prompts = [e.prompt for e in examples]
        assert len(set(prompts)) == len(prompts)
        assert all(re.fullmatch(r"Question: [^\n]+\nAnswer:", p) for p in prompts)
    # problems spread evenly over a split's templates
    per_template: dict[str, int] = {}
    for e in problems["test"]:
        name = _match(e.prompt)[0].name
        per_template[name] = per_template.get(name, 0) + 1
    assert sorted(per_template.values()) == [200, 200, 200]


def test_deterministic_and_test_set_independent_of_train_size(problems):
    def pairs(examples):
        return [(e.prompt, e.completion) for e in examples]

    again = arithmetic_splits(3000, 600, 600, data_seed=0)
    assert all(pairs(again[s]) == pairs(problems[s]) for s in SPLITS)
    smaller = arithmetic_splits(100, 600, 600, data_seed=0)
    assert pairs(smaller["test"]) == pairs(problems["test"])
    assert pairs(smaller["val"]) == pairs(problems["val"])
    reseeded = arithmetic_splits(3000, 600, 600, data_seed=1)
    assert pairs(reseeded["test"]) != pairs(problems["test"])


def test_impossible_sizes_are_refused():
    description = arithmetic_description()
    capacity = description["splits"]["val"]["distinct_problems"]
    everything = arithmetic_splits(1, capacity, 1)["val"]
    assert len({e.prompt for e in everything}) == capacity
    with pytest.raises(ValueError, match=f"n_val={capacity + 1} is more than the {capacity}"):
        arithmetic_splits(1, capacity + 1, 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_test must be a positive integer"):
            arithmetic_splits(10, 10, bad)


def test_arithmetic_description():
    description = arithmetic_description()
    splits = description["splits"]
    assert [splits[s]["templates"] for s in SPLITS] == [12, 3, 3]
    assert all(splits[s]["distinct_problems"] > 1000 for s in SPLITS)
    for split in SPLITS:
        template, numbers = _match(splits[split]["example"]["prompt"])
        assert template.split == split
        _check_solution(template, numbers, splits[split]["example"]["completion"])
    assert len(description["templates"]) == 18
    assert "no third-party data" in description["source"]
    assert description["max_number"] is None


@pytest.fixture(scope="module")
def capped():
    return arithmetic_splits(200, 100, 250, data_seed=0, max_number=CAP)


def test_max_number_caps_every_number(capped, problems):
    assert {s: len(v) for s, v in capped.items()} == {"train": 200, "val": 100, "test": 250}
    for split, examples in capped.items():
        names = set()
        for example in examples:
            assert max(map(int, re.findall(r"\d+", example.prompt))) <= CAP, example.prompt
            template, numbers = _match(example.prompt)
            assert template.split == split
            for number, (lo, hi) in zip(numbers, template.ranges.values(), strict=True):
                assert lo <= number <= min(hi, CAP)
            _check_solution(template, numbers, example.completion)
            names.add(template.name)
        # the cap leaves every template of the split something to ask
        assert names == {t.name for t in ARITHMETIC_TEMPLATES if t.split == split}
        assert len({e.prompt for e in examples}) == len(examples)
    # capped or not, val and test numbers never occur in train
    train = {_match(e.prompt)[1] for e in problems["train"]}
    assert not {_match(e.prompt)[1] for s in ("val", "test") for e in capped[s]} & train


def test_max_number_capacity_and_description():
    full, description = arithmetic_description(), arithmetic_description(CAP)
    assert description["max_number"] == CAP
    for split in SPLITS:
        distinct = description["splits"][split]["distinct_problems"]
        assert distinct == len(_capped_problems(split, CAP))
        assert distinct < full["splits"][split]["distinct_problems"]
        example = description["splits"][split]["example"]
        assert max(map(int, re.findall(r"\d+", example["prompt"]))) <= CAP
        _check_solution(*_match(example["prompt"]), example["completion"])
    # the study's sizes (800 / 100 / 250) fit under its cap
    assert all(
        description["splits"][s]["distinct_problems"] >= n
        for s, n in zip(SPLITS, (800, 100, 250), strict=True)
    )


def test_max_number_refuses_more_than_the_capped_capacity():
    capacity = len(_capped_problems("test", CAP))
    everything = arithmetic_splits(1, 1, capacity, max_number=CAP)["test"]
    drawn = {(t.name, numbers) for t, numbers in (_match(e.prompt) for e in everything)}
    assert drawn == _capped_problems("test", CAP)
    with pytest.raises(ValueError, match=rf"n_test={capacity + 1} is more than the {capacity} "):
        arithmetic_splits(1, 1, capacity + 1, max_number=CAP)
    assert len(arithmetic_splits(1, 1, capacity + 1)["test"]) == capacity + 1  # the cap's doing


def test_max_number_is_deterministic(capped):
    def pairs(examples):
        return [(e.prompt, e.completion) for e in examples]

    again = arithmetic_splits(200, 100, 250, data_seed=0, max_number=CAP)
    assert all(pairs(again[s]) == pairs(capped[s]) for s in SPLITS)
    smaller = arithmetic_splits(50, 100, 250, data_seed=0, max_number=CAP)
    assert pairs(smaller["test"]) == pairs(capped["test"])
    assert pairs(smaller["val"]) == pairs(capped["val"])
    reseeded = arithmetic_splits(200, 100, 250, data_seed=1, max_number=CAP)
    assert pairs(reseeded["test"]) != pairs(capped["test"])
    uncapped = arithmetic_splits(200, 100, 250, data_seed=0)
    assert pairs(uncapped["test"]) != pairs(capped["test"])


# --- The Devil's Dictionary --------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(value: int) -> str:
    digits = ""
    while True:
        value, digit = divmod(value, 64)
        digits = B64[digit] + digits
        if not value:
            return digits


def _index_spans(index: Path) -> list[tuple[str, int, int]]:
    """The test's own reading of a dictd index: (headword, offset, length)."""
    rows = []
    for line in index.read_text().splitlines():
        word, offset, length = line.split("\t")
        rows.append((word, sum(B64.index(ch) * 64**i for i, ch in enumerate(offset[::-1])),
                     sum(B64.index(ch) * 64**i for i, ch in enumerate(length[::-1]))))  # fmt: skip
    return rows


def _write_dictd(folder: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A dictd pair (devil.dict.dz, devil.index) holding ``entries`` in the given order."""
    text, index = b"", []
    for word, body in entries:
        index.append(f"{word}\t{_b64(len(text))}\t{_b64(len(body))}")
        text += body
    (folder / "devil.index").write_text("\n".join(index) + "\n")
    (folder / "devil.dict.dz").write_bytes(gzip.compress(text))
    return folder / "devil.dict.dz"


@pytest.fixture(scope="module")
def entries():
    return devil_entries()


def test_entry_count_matches_the_index(entries):
    spans = _index_spans(DEVIL_PATH.with_name("devil.index"))
    real = {(o, n) for w, o, n in spans if not w.startswith("00database")}
    assert 990 <= len(real) <= 1010
    # every indexed entry, less the ones the file repeats word for word (PRECEDENT, PRECIPITATE)
    assert len(real) - 5 <= len(entries) <= len(real)
    texts = [t for _, t in entries]
    assert len(set(texts)) == len(texts)
    assert entries[0][0] == "ABASEMENT"
    assert entries[-1][0] == "ZOOLOGY"


def test_known_entries_and_whitespace(entries):
    by_word: dict[str, list[str]] = {}
    for word, text in entries:
        by_word.setdefault(word, []).append(text)
    assert by_word["ABASEMENT"] == [
        "ABASEMENT, n. A decent and customary mental attitude in the presence of wealth of "
        "power. Peculiarly appropriate in an employee when addressing an employer."
    ]
    abdication = by_word["ABDICATION"][0].split("\n")
    assert abdication[0].startswith("ABDICATION, n. An act whereby a sovereign attests his")
    assert abdication[1:3] == [
        "Poor Isabella's Dead, whose abdication",
        "Set all tongues wagging in the Spanish nation.",
    ]
    assert abdication[-1] == "G.J."
    assert by_word["REASON"] == [
        "REASON, v.i. To weight probabilities in the scales of desire.",
        "REASON, n. Propensitate of prejudice.",
    ]
    assert by_word["BABE"][0].startswith("BABE or BABY, n. A misshapen creature")
    assert len(by_word["PRECEDENT"]) == 1
    for _, text in entries:
        assert "  " not in text and "\n\n" not in text and text == text.strip()


def test_no_header_or_preface(entries):
    for word, text in entries:
        assert not word.startswith("00")
        for header in ("00-database", "wiretap", "PREFACE", "Cynic's Word Book", "Aloysius",
                       "abcdefghijklmnopqrstuvwxyz", "Public Domain Text"):  # fmt: skip
            assert header not in text, (word, header)


def test_splits_are_disjoint_and_stable(entries):
    splits = devil_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": 776, "val": 99, "test": 122}
    texts = {t for _, t in entries}
    assert sorted(t for v in splits.values() for t in v) == sorted(texts)
    word_of = {t: w for w, t in entries}
    first = {word_of[t]: s for s, v in splits.items() for t in v}
    # fixed by SHA-256 of the headword: these change only if the hashing does
    assert [first[w] for w in ("ABASEMENT", "ABDOMEN", "ABRACADABRA", "ADORE", "ZEAL")] == [
        "train", "val", "test", "val", "train",
    ]  # fmt: skip
    # both REASON entries land together
    reasons = [s for s, v in splits.items() for t in v if t.startswith("REASON,")]
    assert reasons == [reasons[0]] * 2
    wider = devil_splits(val_fraction=0.2, test_fraction=0.3)
    assert len(wider["test"]) > len(splits["test"]) and len(wider["val"]) > len(splits["val"])
    assert set(splits["test"]) <= set(wider["test"])  # a bigger test fraction only adds to it


def test_split_ignores_file_order(tmp_path):
    raw = gzip.decompress(DEVIL_PATH.read_bytes())
    spans = _index_spans(DEVIL_PATH.with_name("devil.index"))
    # every entry once, by its first index headword, written in reverse order
    seen: dict[tuple[int, int], str] = {}
    for word, offset, length in spans:
        seen.setdefault((offset, length), word)
    reordered = [(w, raw[o : o + n]) for (o, n), w in sorted(seen.items(), reverse=True)]
    path = _write_dictd(tmp_path, reordered)
    original, flipped = devil_splits(), devil_splits(path)
    assert {s: sorted(v) for s, v in flipped.items()} == {s: sorted(v) for s, v in original.items()}
    assert flipped["train"] == original["train"][::-1]


def test_missing_or_damaged_files(tmp_path):
    missing = tmp_path / "nowhere" / "devil.dict.dz"
    with pytest.raises(DataUnavailable, match="apt-get install dict-devil") as error:
        devil_entries(missing)
    assert str(missing) in str(error.value)
    # a truncated download
    (tmp_path / "cut").mkdir()
    cut = tmp_path / "cut" / "devil.dict.dz"
    cut.write_bytes(DEVIL_PATH.read_bytes()[:50_000])
    (tmp_path / "cut" / "devil.index").write_bytes(DEVIL_PATH.with_name("devil.index").read_bytes())
    with pytest.raises(
        DataUnavailable, match=r"missing or unreadable .*apt-get install dict-devil"
    ):
        devil_entries(cut)
    # not gzip at all
    cut.write_bytes(b"ABASEMENT, n. not compressed\n")
    with pytest.raises(DataUnavailable, match="apt-get install dict-devil"):
        devil_splits(cut)
    # an index that does not match the text
    index = DEVIL_PATH.with_name("devil.index").read_text().splitlines()
    (tmp_path / "cut" / "devil.index").write_text("\n".join(index[:50] + index[51:]) + "\n")
    cut.write_bytes(DEVIL_PATH.read_bytes())
    with pytest.raises(DataUnavailable, match=r"does not match .*not covered"):
        devil_entries(cut)
    (tmp_path / "cut" / "devil.index").write_text("abasement\tu!\tCf\n")
    with pytest.raises(DataUnavailable, match="not a dictd index line"):
        devil_entries(cut)
    # a well-formed dictionary far too small to be this one
    small = tmp_path / "small"
    small.mkdir()
    path = _write_dictd(small, [("cat", b"CAT, n.  A soft automaton.\n"), ("dog", b"DOG.\n")])
    with pytest.raises(DataUnavailable, match="holds 2 entries"):
        devil_entries(path)


def test_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        devil_splits(val_fraction=0)
    with pytest.raises(ValueError, match="keep their sum below 1"):
        devil_splits(val_fraction=0.5, test_fraction=0.5)


def test_devil_description():
    description = devil_description()
    assert description["entries"] == {"train": 776, "val": 99, "test": 122}
    assert sum(description["characters"].values()) == sum(len(t) for _, t in devil_entries())
    assert description["characters"]["train"] > 200_000
    assert "public domain" in description["source"]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "25"])
def test_max_number_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_number must be None or a positive integer"):
        arithmetic_splits(5, 5, 5, max_number=bad)
