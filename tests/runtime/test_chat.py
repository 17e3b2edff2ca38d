"""Chat prompts at inference: ``QWTHNSession.chat`` and ``qwthn-run --chat`` lay a
conversation out as training did."""

from __future__ import annotations

import pytest

from qwthn_onnx.chat import Message, chat_prompt_ids
from qwthn_onnx.cli.run import main as run_main
from qwthn_onnx.runtime.session import QWTHNSession


@pytest.fixture(scope="module")
def session(export):
    return QWTHNSession(export)


def test_chat_generates_from_the_training_layout(session):
    turns = [Message("system", "add"), Message("user", "12+3=")]
    (reply,) = session.chat([turns], max_new_tokens=5)
    ids = chat_prompt_ids(turns, session.tokenizer)
    assert reply.prompt_tokens == len(ids)
    assert reply.token_ids == session.generate_ids([ids], _config(5))[0][: len(reply.token_ids)]
    # the plain layout: [bos]System: add\nUser: 12+3=\nAssistant:
    plain = session.tokenizer.encode("System: add\nUser: 12+3=\nAssistant: ", False)
    assert ids == [session.tokenizer.bos_token_id, *plain]


def test_a_chat_template_in_the_export_is_used(export, tmp_path):
    session = QWTHNSession(export)
    session.tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}="
    (reply,) = session.chat([[Message("user", "1+2")]], max_new_tokens=3)
    assert reply.prompt_tokens == len(session.tokenizer.encode("<1+2>=", add_special_tokens=False))


def test_qwthn_run_chat_prints_the_replies(export, session, capsys):
    assert run_main([str(export), "--chat", "--system", "add", "-p", "1+2=", "-n", "4", "-q"]) == 0
    (expected,) = session.chat([[Message("system", "add"), Message("user", "1+2=")]], 4)
    assert capsys.readouterr().out == expected.text + "\n"


def test_qwthn_run_refuses_system_without_chat(export, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main([str(export), "--system", "add", "-p", "x"])
    assert exit_.value.code == 2
    assert "--system needs --chat" in capsys.readouterr().err


def _config(n):
    from qwthn_onnx.runtime.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=n)
