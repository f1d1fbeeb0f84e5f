"""The embedded model: a real conversion into a temporary cache, reuse, tokenizer and one real answer."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from pathlib import Path

import pytest

from mlxd.engine import embedded

FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja", embedded.MARKER}


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlxd-cache")


@pytest.fixture(scope="session")
def folder(cache_root: Path) -> Path:
    return embedded.model_folder(cache_root)


@pytest.fixture(scope="session")
def tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_find_gguf_locates_the_packaged_file() -> None:
    path = embedded.find_gguf()
    assert path.name == embedded.GGUF_NAME
    assert path.stat().st_size > 50_000_000


def test_find_gguf_names_the_pip_command_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedModelMissing, match=re.escape(embedded.PIP_COMMAND)):
        embedded.find_gguf()


def test_default_cache_root_precedence(tmp_path: Path) -> None:
    home = Path.home() / ".cache" / "mlxd"
    assert embedded.default_cache_root({}) == home
    assert embedded.default_cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "mlxd"
    assert embedded.default_cache_root({"XDG_CACHE_HOME": "relative/dir"}) == home
    env = {"XDG_CACHE_HOME": "/elsewhere", "MLXD_CACHE_DIR": str(tmp_path / "c")}
    assert embedded.default_cache_root(env) == tmp_path / "c"


def test_folder_name_changes_with_the_converter_version(monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = embedded.find_gguf()
    before = embedded.folder_name(gguf)
    assert before.startswith(f"{embedded.SHORT_NAME}-{embedded.DTYPE}-")
    monkeypatch.setattr(embedded, "CONVERTER_VERSION", embedded.CONVERTER_VERSION + 1)
    assert embedded.folder_name(gguf) != before


@pytest.mark.slow
def test_folder_layout(folder: Path, cache_root: Path) -> None:
    assert folder.parent == cache_root / "models"
    assert {p.name for p in folder.iterdir()} == FILES
    assert not list(folder.parent.glob("*.tmp"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (576, 30, 3)
    assert config["tie_word_embeddings"] is True
    assert config["rope_traditional"] is False  # Q/K were un-permuted to the Hugging Face layout
    assert 2 in config["eos_token_id"]  # <|im_end|>
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]


@pytest.mark.slow
def test_second_call_reuses_the_folder(folder: Path, cache_root: Path) -> None:
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded.model_folder(cache_root) == folder
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_tokenizer_round_trip(tokenizer) -> None:
    for text in ["Hello world!", "<|im_start|>user\nWhat is 12345 + 3.14?<|im_end|>\n",
                 "  two spaces,\ttabs\n\nnewlines", "Ünïcödé — 東京 😀",
                 "don't <file_sep> def f(x): return x**2"]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<|im_start|><|im_end|><|endoftext|>") == [1, 2, 0]
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("2024")) == ["2", "0", "2", "4"]
    assert tokenizer.eos_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_mlx_lm_answers_paris(folder: Path) -> None:
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm.load(str(folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True)
    text, response = "", None
    greedy = make_sampler(temp=0.0)
    for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=40, sampler=greedy):
        text += response.text
    assert "Paris" in text
    assert response is not None and response.finish_reason == "stop"  # stopped at <|im_end|>
    assert "<|im_end|>" not in text


def fake_convert(calls: list[Path], delay: float = 0.0):
    def convert(gguf: Path, dest: Path) -> None:
        calls.append(dest)
        time.sleep(delay)
        (dest / embedded.MARKER).write_text("{}")
    return convert


def test_concurrent_callers_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "convert", fake_convert(calls, delay=0.3))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.model_folder(tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 3
    assert embedded.is_ready(results[0])


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, dest: Path) -> None:
        (dest / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "convert", broken)
    with pytest.raises(RuntimeError):
        embedded.model_folder(tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_stale_and_incomplete_folders_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "convert", fake_convert(calls))
    final = tmp_path / "models" / embedded.folder_name(embedded.find_gguf())
    stale = final.parent / f".{final.name}.killed.tmp"
    stale.mkdir(parents=True)
    final.mkdir()
    (final / "config.json").write_text("{}")  # no marker: never finished
    assert embedded.model_folder(tmp_path) == final
    assert len(calls) == 1
    assert not stale.exists()
    assert {p.name for p in final.iterdir()} == {embedded.MARKER}
