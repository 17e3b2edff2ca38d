import json

import pytest
import torch

from qwthn_onnx.data import (
    DataError,
    Example,
    load_examples,
    split_examples,
    tokenize_examples,
)
from qwthn_onnx.demo import build_char_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_text_file_one_example_per_line(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("hello world\n\n  \nsecond line\n")
    assert load_examples(f) == [Example("", "hello world"), Example("", "second line")]


def test_jsonl_text_and_prompt_completion(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(
        json.dumps({"text": "abc"})
        + "\n"
        + json.dumps({"prompt": "1+1=", "completion": "2"})
        + "\n"
    )
    assert load_examples(f) == [Example("", "abc"), Example("1+1=", "2")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": broken}\n', r"d\.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n[1, 2]\n', r"d\.jsonl:2: expected a JSON object"),
        ('{"question": "x"}\n', r"d\.jsonl:1: needs a \"text\" key"),
        ('{"prompt": "a", "completion": 3}\n', r'd\.jsonl:1: "completion" must be a string'),
        ('\n\n{"text": ""}\n', r"d\.jsonl:3: empty completion"),
        ("\n  \n", r"the dataset is empty"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        load_examples(f)


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_examples(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(tmp_path / "bin.txt")
    with pytest.raises(DataError, match="is not a file"):
        load_examples(tmp_path)


def test_tokenize_masks_prompt_and_padding(tokenizer):
    data = tokenize_examples([Example("12+3=", "15"), Example("", "ab")], tokenizer)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids0 = data.input_ids[0].tolist()
    assert ids0[0] == bos and tokenizer.decode(ids0[1:6]) == "12+3=" and ids0[8] == eos
    # Loss only on the completion "15" + eos.
    assert data.labels[0].tolist() == [-100] * 6 + ids0[6:9]
    # Second row: bos, 'a', 'b', eos, then padding (masked, not attended).
    assert data.labels[1].tolist()[:4] == [-100, *data.input_ids[1, 1:4].tolist()]
    assert data.attention_mask[1].tolist() == [1, 1, 1, 1] + [0] * 5
    assert (data.input_ids[1, 4:] == pad).all() and (data.labels[1, 4:] == -100).all()


def test_batch_trims_to_longest_row(tokenizer):
    data = tokenize_examples([Example("", "a"), Example("", "abcdefgh")], tokenizer)
    assert data.batch(torch.tensor([0]))["input_ids"].shape == (1, 3)
    assert data.batch(torch.tensor([0, 1]))["input_ids"].shape == (2, 10)


def test_char_tokenizer_round_trips_text(tokenizer):
    text = "What is 23 plus 58? It's 81."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_json_array_file(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"text": "abc"}, {"prompt": "1+1=", "completion": "2"}], indent=2))
    assert load_examples(f) == [Example("", "abc"), Example("1+1=", "2")]
    f.write_text(json.dumps([{"text": "ok"}, {"prompt": "no completion"}]))
    with pytest.raises(DataError, match=r"d\.json: item 1: needs a \"text\" key"):
        load_examples(f)
    f.write_text('[{"text": "ok"},\n {"text": }]')
    with pytest.raises(DataError, match=r"d\.json:2: invalid JSON"):
        load_examples(f)
    f.write_text("[]")
    with pytest.raises(DataError, match="empty JSON array"):
        load_examples(f)


def test_split_examples_is_deterministic_and_disjoint():
    examples = [Example("", f"text {i}") for i in range(20)]
    train, val = split_examples(examples, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val, key=examples.index) == examples
    assert split_examples(examples, 0.25, seed=3) == (train, val)
    assert split_examples(examples, 0.25, seed=4)[1] != val


@pytest.mark.parametrize(
    ("fraction", "n", "message"),
    [
        (0.0, 10, r"must be in \(0, 1\)"),
        (1.0, 10, r"must be in \(0, 1\)"),
        (-0.5, 10, r"must be in \(0, 1\)"),
        ("0.1", 10, "must be a number"),
        (0.01, 10, "leaves the validation set empty"),
        (0.99, 10, "leaves the training set empty"),
    ],
)
def test_split_examples_rejects_bad_fractions(fraction, n, message):
    with pytest.raises(DataError, match=message):
        split_examples([Example("", "x")] * n, fraction, seed=0)
