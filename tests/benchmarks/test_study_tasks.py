"""benchmarks/study_tasks.py: the arithmetic word problems and The Devil's Dictionary splits.

The dictionary tests read the real Debian package (``apt-get install dict-devil``).
"""

from __future__ import annotations

import ast
import functools
import gzip
import re
import sys
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
NAMES = study_tasks._FEMALE + study_tasks._MALE


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


def test_templates_are_split_12_3_3_with_mixed_operations():
    assert set(BY_HAND) == {t.name for t in ARITHMETIC_TEMPLATES}
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
        " 143",
    )
    assert (got["val"][1].prompt, got["val"][1].completion) == (
        "Question: Tariq bought 9 packs with 8 apples in each pack. He shared 71 of them with "
        "Hugo. How many apples does Tariq still have?\nAnswer:",
        " 1",
    )
    assert (got["test"][1].prompt, got["test"][1].completion) == (
        "Question: Lucia collected 117 eggs on the farm. Of these, 46 broke and she sold 39 at "
        "the market. How many eggs does she have left?\nAnswer:",
        " 32",
    )


def test_every_answer_is_the_arithmetic_its_wording_describes(problems):
    for split, examples in problems.items():
        for i, example in enumerate(examples):
            template, numbers = _match(example.prompt)
            assert template.split == split
            assert example.source == f"arithmetic {split} #{i} ({template.name})"
            assert re.fullmatch(r" \d+", example.completion), example.completion
            answer = int(example.completion)
            assert answer == BY_HAND[template.name](*numbers), example.prompt
            assert 0 <= answer <= 999
            for variable, number in zip("abc", numbers, strict=True):
                lo, hi = template.ranges[variable]
                assert lo <= number <= hi


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
        assert splits[split]["example"]["completion"] == f" {BY_HAND[template.name](*numbers)}"
    assert len(description["templates"]) == 18
    assert "no third-party data" in description["source"]


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
