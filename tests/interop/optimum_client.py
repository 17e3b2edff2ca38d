"""Hugging Face Optimum as a user runs it on an export directory; one JSON answer on stdout.

Runs in .venvs/optimum (transformers 4.57; tests/interop/optimum_env.sh creates it) and
imports nothing of ours: the export directory alone must be enough.

    python optimum_client.py generate DIR '["text", ...]' MAX_NEW_TOKENS
        -> {"encode": [[prompt ids], ...], "tokens": [[new ids], ...], "library": bool,
            "transformers": version}
    python optimum_client.py tokenize DIR '["text", ...]' '[{"role": ..., "content": ...}]'
        -> {"encode": [[ids], ...], "decode": ["text", ...], "chat": "rendered template",
            "keys": [the tokenizer's output names], "transformers": version}

``generate`` registers DIR/libqwthn_ops.so when the export has it (the fallback functions run
otherwise) and generates greedily from each text, passing the tokenizer's whole output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

LIBRARY = "libqwthn_ops.so"


def generate(directory: str, texts: list[str], max_new_tokens: int) -> dict:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    library = Path(directory) / LIBRARY
    if library.is_file():
        options.register_custom_ops_library(str(library))
    model = ORTModelForCausalLM.from_pretrained(
        directory, session_options=options, provider="CPUExecutionProvider"
    )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoded, tokens = [], []
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")  # all of it goes to generate, as users do
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        prompt = inputs["input_ids"][0].tolist()
        encoded.append(prompt)
        tokens.append(out[0, len(prompt) :].tolist())
    return {
        "encode": encoded,
        "tokens": tokens,
        "library": library.is_file(),
        "transformers": transformers.__version__,
    }


def tokenize(directory: str, texts: list[str], messages: list[dict]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    return {
        "encode": encoded,
        "decode": [tokenizer.decode(ids) for ids in encoded],
        "chat": tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        "keys": sorted(tokenizer(texts[0]).keys()),
        "class": type(tokenizer).__name__,
        "transformers": transformers.__version__,
    }


def main(argv: list[str]) -> None:
    command, directory, *rest = argv
    if command == "generate":
        out = generate(directory, json.loads(rest[0]), int(rest[1]))
    elif command == "tokenize":
        out = tokenize(directory, json.loads(rest[0]), json.loads(rest[1]))
    else:
        raise SystemExit(f"unknown command {command!r}: generate or tokenize")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
