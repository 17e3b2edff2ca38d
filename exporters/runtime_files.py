"""The files that let stock runtimes load an export directory as it is written.

- ``genai_config.json``: onnxruntime-genai's description of the model (``og.Model(dir)``);
- ``generation_config.json``: bos/eos/pad and our default decoding, for transformers-style
  loaders (Optimum's ``ORTModelForCausalLM``);
- ``libqwthn_ops.so`` (``library_file_name()``): a copy of the ``ai.qwthn`` op library, which
  genai only loads from inside the model folder;
- the tokenizer files, normalised so that transformers 4.x and 5.x, Optimum and genai's
  ``og.Tokenizer`` all read them (:func:`normalize_tokenizer_files`).

Pure JSON and file work: no torch or transformers, so it runs anywhere the exporter runs.
docs/stock-runtimes.md says what each runtime reads.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.export_dir import CHAT_TEMPLATE, TOKENIZER, TOKENIZER_CONFIG
from qwthn_onnx.runtime.generation import GenerationConfig
from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path
from qwthn_onnx.runtime.signature import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    past_names,
    present_names,
)

__all__ = [
    "CHAT_TEMPLATE",
    "GENAI_MODEL_TYPES",
    "TOKENIZER",
    "TOKENIZER_CONFIG",
    "OpLibraryWarning",
    "RuntimeConfigWarning",
    "TokenizerFilesWarning",
    "genai_config",
    "generation_config",
    "normalize_tokenizer_files",
    "write_runtime_files",
]


# Our supported architectures -> onnxruntime-genai model types (its src/models/model_type.h).
# GPT-2 is "decoder", genai's generic decoder-only type: genai's own "gpt2" type expects one
# combined past/present tensor per layer ("past_%d", [2, batch, heads, length, head_size]), and
# 0.18 fails on our separate key/value inputs with "Model input was not found: ".
GENAI_MODEL_TYPES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "decoder",
}

# tokenizer_config.json keys that describe how transformers 5 loaded the tokenizer (from a local
# folder, offline), not the tokenizer itself; other loaders would take them as init arguments.
_LOADING_STATE_KEYS = ("is_local", "local_files_only")


class OpLibraryWarning(UserWarning):
    """The export carries no copy of the op library; stock runtimes run the fallbacks."""


class TokenizerFilesWarning(UserWarning):
    """The tokenizer's files could not be normalised for stock runtimes."""


class RuntimeConfigWarning(UserWarning):
    """genai_config.json / generation_config.json could not be written for this model."""


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` that ``config`` has (GPT-2 spells hidden_size ``n_embd``, ...)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise ValueError(f"config.json has none of {', '.join(keys)}")


def _special_ids(config: Mapping[str, Any]) -> tuple[int | None, int | list[int], int]:
    """``(bos, eos, pad)`` from the base config; pad falls back to the (first) eos token, as
    our runtime does, since genai and transformers want one for batches."""
    eos = config.get("eos_token_id")
    if eos is None or eos == []:
        raise ValueError(
            "config.json has no eos_token_id: stock runtimes would never stop generating; set "
            "it on the base model's config before training"
        )
    first_eos = eos[0] if isinstance(eos, list) else eos
    pad = config.get("pad_token_id")
    return config.get("bos_token_id"), eos, first_eos if pad is None else pad


def _name_template(names: tuple[str, str], index: int) -> str:
    """genai's ``%d`` name template from layer 0's name (``past_key_values.0.key`` ->
    ``past_key_values.%d.key``), so the names stay defined in one place (signature.py)."""
    name = names[index]
    if name.count(".0.") != 1:
        raise ValueError(f"cache name {name!r} has no single '.0.' to template")
    return name.replace(".0.", ".%d.")


def genai_config(
    config: Mapping[str, Any],
    architecture: str,
    cache: Mapping[str, int],
    library: str | None,
) -> dict[str, Any]:
    """onnxruntime-genai's ``genai_config.json`` for an export of ``architecture``.

    ``config`` is the base model's config.json, ``cache`` the export's ``{num_layers,
    num_kv_heads, head_dim}`` and ``library`` the op library's file name inside the export
    (None: no copy, genai inlines the fallback functions).
    """
    if architecture not in GENAI_MODEL_TYPES:
        raise ValueError(
            f"no onnxruntime-genai model type for {architecture}; known: "
            f"{', '.join(GENAI_MODEL_TYPES)}"
        )
    bos, eos, pad = _special_ids(config)
    context = _first(config, "max_position_embeddings", "n_positions")
    session_options: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if library is not None:
        session_options["custom_ops_library"] = library
    model: dict[str, Any] = {
        "type": GENAI_MODEL_TYPES[architecture],
        "vocab_size": _first(config, "vocab_size"),
        "context_length": context,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "decoder": {
            "filename": export_dir.MODEL,
            "session_options": session_options,
            "head_size": cache["head_dim"],
            "hidden_size": _first(config, "hidden_size", "n_embd"),
            "num_attention_heads": _first(config, "num_attention_heads", "n_head"),
            "num_hidden_layers": cache["num_layers"],
            "num_key_value_heads": cache["num_kv_heads"],
            "inputs": {
                "input_ids": INPUT_IDS,
                "attention_mask": ATTENTION_MASK,
                "position_ids": POSITION_IDS,
                "past_key_names": _name_template(past_names(0), 0),
                "past_value_names": _name_template(past_names(0), 1),
            },
            "outputs": {
                "logits": LOGITS,
                "present_key_names": _name_template(present_names(0), 0),
                "present_value_names": _name_template(present_names(0), 1),
            },
        },
    }
    if bos is not None:
        model["bos_token_id"] = bos
    defaults = GenerationConfig()
    return {
        "model": model,
        "search": {
            # genai's max_length counts the prompt: the model's whole context, as genai's own
            # model builder writes it; callers set their own with set_search_options.
            "max_length": context,
            "min_length": 0,
            "do_sample": defaults.do_sample,
            "num_beams": 1,
            "num_return_sequences": 1,
            "temperature": defaults.temperature,
            # our top_k 0 means no filter; genai's equivalent is the whole vocabulary
            "top_k": defaults.top_k or _first(config, "vocab_size"),
            "top_p": defaults.top_p,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
            "early_stopping": True,
            # true makes genai write the new keys/values into a preallocated cache, which our
            # graph (it concatenates past and new) does not do
            "past_present_share_buffer": False,
        },
    }


def generation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``generation_config.json``: the special tokens and our runtime's default decoding
    (greedy, :class:`GenerationConfig`'s ``max_new_tokens``)."""
    bos, eos, pad = _special_ids(config)
    defaults = GenerationConfig()
    out: dict[str, Any] = {"bos_token_id": bos} if bos is not None else {}
    return {
        **out,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "do_sample": defaults.do_sample,
        "max_new_tokens": defaults.max_new_tokens,
    }


def normalize_tokenizer_files(files: Mapping[str, str | bytes]) -> dict[str, str | bytes]:
    """Tokenizer files that every loader we target reads the same way.

    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"``, a class transformers 4.x
    (so Optimum) and genai's ``og.Tokenizer`` do not know: it becomes
    ``PreTrainedTokenizerFast`` (the same tokenizer.json-backed tokenizer in both). Only
    ``input_ids`` and ``attention_mask`` are model inputs (a ``token_type_ids`` makes
    ``generate`` fail). A chat template saved as ``chat_template.jinja`` is also put into
    tokenizer_config.json, for older readers (genai 0.18 and
    transformers 4.57 read the .jinja file themselves).
    """
    out = dict(files)
    if TOKENIZER not in files or TOKENIZER_CONFIG not in files:
        warnings.warn(
            f"the tokenizer was saved without {TOKENIZER} or {TOKENIZER_CONFIG} (files: "
            f"{', '.join(sorted(files))}): its files are exported as they are, which "
            "onnxruntime-genai and transformers 4.x may not read; use a fast (tokenizers) "
            "tokenizer for stock runtimes",
            TokenizerFilesWarning,
            stacklevel=2,
        )
        return out
    try:
        config = json.loads(files[TOKENIZER_CONFIG])
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:  # UnicodeDecodeError included
        warnings.warn(
            f"the tokenizer's {TOKENIZER_CONFIG} is not readable ({e}): its files are exported "
            "as they are, which stock runtimes may not read",
            TokenizerFilesWarning,
            stacklevel=2,
        )
        return out
    for key in _LOADING_STATE_KEYS:
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = [INPUT_IDS, ATTENTION_MASK]
    template = files.get(CHAT_TEMPLATE)
    if template is not None and "chat_template" not in config:
        config["chat_template"] = template if isinstance(template, str) else template.decode()
    out[TOKENIZER_CONFIG] = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return out


def _copy_op_library(directory: Path) -> str | None:
    """Copy the op library into ``directory``; its name there, or None (with a warning)."""
    try:
        source = get_library_path()
    except LibraryNotFoundError as e:
        warnings.warn(
            f"the export carries no op library: {e} onnxruntime-genai and Optimum will run "
            "the fallback functions.",
            OpLibraryWarning,
            stacklevel=4,
        )
        return None
    name = export_dir.library_file_name()
    shutil.copyfile(source, directory / name)
    return name


def write_runtime_files(
    directory: Path,
    config: Mapping[str, Any],
    architecture: str,
    cache: Mapping[str, int],
    op_library: bool = True,
) -> list[str]:
    """Write genai_config.json, generation_config.json and (``op_library``, when built) the
    op library copy into ``directory``; returns the names written."""
    library = _copy_op_library(directory) if op_library else None
    written = [] if library is None else [library]
    try:
        contents = {
            export_dir.GENAI_CONFIG: genai_config(config, architecture, cache, library),
            export_dir.GENERATION_CONFIG: generation_config(config),
        }
    except ValueError as e:  # a config stock runtimes cannot be told how to run
        warnings.warn(
            f"no {export_dir.GENAI_CONFIG} or {export_dir.GENERATION_CONFIG} in the export: {e}. "
            "qwthn-run and qwthn-serve run it; onnxruntime-genai and Optimum need them",
            RuntimeConfigWarning,
            stacklevel=3,
        )
        return written
    for name, content in contents.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
        written.append(name)
    return written
