"""Model loading and generation: the only module that calls mlx-lm and mlx-vlm.

Vision-language models (a `vision_config` in config.json) load with mlx_vlm, text-only ones with mlx_lm.
Both are driven through one small interface, `generate`, which yields `Chunk`s ending with exactly one
whose `finish_reason` is set. Every call here must run on the engine's thread: MLX streams are
thread-local.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from mlxd.generation import GenerationConfig


@dataclass(frozen=True)
class Chunk:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class LoadedModel(Protocol):
    name: str
    modalities: tuple[str, ...]

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig) -> Iterator[Chunk]: ...


def _messages(prompt: str, context: str | None, system_role: bool) -> list[dict[str, Any]]:
    if context is None:
        return [{"role": "user", "content": prompt}]
    if system_role:
        return [{"role": "system", "content": context}, {"role": "user", "content": prompt}]
    return [{"role": "user", "content": f"{context}\n\n{prompt}"}]


def _sampling(config: GenerationConfig) -> dict[str, Any]:
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    return {
        "sampler": make_sampler(temp=config.temperature, top_p=config.top_p, top_k=config.top_k),
        "logits_processors": make_logits_processors(presence_penalty=config.presence_penalty,
                                                    frequency_penalty=config.frequency_penalty),
    }


def _completion_tokens(generated: int, finish_reason: str | None) -> int:
    """Both libraries count the end-of-turn token in their last result; the client never sees it."""
    return generated - 1 if finish_reason == "stop" else generated


class TextModel:
    modalities = ("text",)

    def __init__(self, name: str, path: Path) -> None:
        import mlx_lm

        self.name = name
        self.model, self.tokenizer = mlx_lm.load(str(path))

    def prompt_ids(self, prompt: str, context: str | None) -> list[int]:
        if not self.tokenizer.has_chat_template:
            text = prompt if context is None else f"{context}\n\n{prompt}"
            return self.tokenizer.encode(text)
        try:
            return self.tokenizer.apply_chat_template(_messages(prompt, context, system_role=True),
                                                      add_generation_prompt=True)
        except Exception:  # templates that refuse a system turn take the context as a preamble
            return self.tokenizer.apply_chat_template(_messages(prompt, context, system_role=False),
                                                      add_generation_prompt=True)

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig) -> Iterator[Chunk]:
        import mlx_lm

        ids = self.prompt_ids(prompt, context)
        for response in mlx_lm.stream_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens,
                                               **_sampling(config)):
            yield Chunk(response.text, response.finish_reason, response.prompt_tokens,
                        _completion_tokens(response.generation_tokens, response.finish_reason))


class VisionModel:
    modalities = ("text", "image")

    def __init__(self, name: str, path: Path) -> None:
        import mlx_vlm

        self.name = name
        self.model, self.processor = mlx_vlm.load(str(path))

    def prompt_text(self, prompt: str, context: str | None, num_images: int) -> str:
        from mlx_vlm import apply_chat_template

        try:
            return apply_chat_template(self.processor, self.model.config,
                                       _messages(prompt, context, system_role=True), num_images=num_images)
        except Exception:  # templates that refuse a system turn take the context as a preamble
            return apply_chat_template(self.processor, self.model.config,
                                       _messages(prompt, context, system_role=False), num_images=num_images)

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig) -> Iterator[Chunk]:
        import mlx_vlm

        text = self.prompt_text(prompt, context, len(images))
        for response in mlx_vlm.stream_generate(self.model, self.processor, text, image=images or None,
                                                max_tokens=max_tokens, **_sampling(config)):
            yield Chunk(response.text, response.finish_reason, response.prompt_tokens,
                        _completion_tokens(response.generation_tokens, response.finish_reason))


def local_path(name: str) -> Path:
    """A local folder as is; a Hugging Face repo id through the hub cache (downloading if needed)."""
    from mlx_vlm.utils import get_model_path

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        raise FileNotFoundError(f"no model folder at {path}")
    return get_model_path(name)


def is_vision_model(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return "vision_config" in config


def load_model(name: str, path: Path) -> LoadedModel:
    return VisionModel(name, path) if is_vision_model(path) else TextModel(name, path)
