"""onnxruntime-genai as a user runs it on an export directory; one JSON answer on stdout.

Run in its own process by the tests (genai crashed the process once in ~5 loads), and it
imports nothing of ours: the export directory alone must be enough.

    python genai_client.py generate DIR '[[1, 5, 6], ...]' MAX_NEW_TOKENS [REPEAT]
        -> {"tokens": [[new ids], ...], "seconds": [per run, all prompts]}
    python genai_client.py tokenize DIR '["text", ...]' '[{"role": ..., "content": ...}]'
        -> {"encode": [[ids], ...], "decode": ["text", ...], "chat": "rendered template",
            "bos": id, "eos": [ids], "pad": id}
"""

from __future__ import annotations

import json
import sys
import time

import onnxruntime_genai as og


def generate(directory: str, prompts: list[list[int]], max_new_tokens: int, repeat: int) -> dict:
    model = og.Model(directory)
    seconds, tokens = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = []
        for prompt in prompts:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + max_new_tokens, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(prompt)
            new: list[int] = []
            while not generator.is_done():
                generator.generate_next_token()
                new.append(int(generator.get_next_tokens()[0]))
            tokens.append(new)
        seconds.append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds": seconds}


def tokenize(directory: str, texts: list[str], messages: list[dict]) -> dict:
    tokenizer = og.Tokenizer(og.Config(directory))
    encoded = [[int(i) for i in tokenizer.encode(text)] for text in texts]
    return {
        "encode": encoded,
        "decode": [tokenizer.decode(ids) for ids in encoded],
        "chat": tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True),
        "bos": int(tokenizer.bos_token_id),
        "eos": [int(i) for i in tokenizer.eos_token_ids],
        "pad": int(tokenizer.pad_token_id),
    }


def main(argv: list[str]) -> None:
    command, directory, *rest = argv
    if command == "generate":
        repeat = int(rest[2]) if len(rest) > 2 else 1
        out = generate(directory, json.loads(rest[0]), int(rest[1]), repeat)
    elif command == "tokenize":
        out = tokenize(directory, json.loads(rest[0]), json.loads(rest[1]))
    else:
        raise SystemExit(f"unknown command {command!r}: generate or tokenize")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
