"""Model loading and generation: the only module that calls mlx-lm and mlx-vlm.

Vision-language models (a `vision_config` in config.json) load with mlx_vlm, text-only ones with mlx_lm.
Both offer `generate`, one request alone, which yields `Chunk`s ending with exactly one whose
`finish_reason` is set; continuous batching across requests is built on them in batching.py. Prompts are
built with the model's chat template. Every call here must run on the engine's thread: MLX streams are
thread-local.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image

from mlxd.dialogue import Message, Part
from mlxd.engine.conversation import Conversation, common_prefix, trim_cache
from mlxd.engine.prompts import chat_messages, render
from mlxd.generation import GenerationConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Chunk:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class LoadedModel(Protocol):
    name: str
    modalities: tuple[str, ...]

    def count_tokens(self, messages: Sequence[Message], instructions: str | None,
                     images: list[Image.Image]) -> int: ...

    def image_tokens(self, images: list[Image.Image]) -> int: ...

    def generate(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
                 max_tokens: int, config: GenerationConfig) -> Iterator[Chunk]: ...


def sampling(config: GenerationConfig) -> dict[str, Any]:
    """The sampler and logits processors of a request. Requests that sample alike get the same sampler
    object: mlx-lm's batch then samples them in one call, not one slice and call per row each step."""
    from mlx_lm.sample_utils import make_logits_processors

    return {
        "sampler": _sampler(config.temperature, config.top_p, config.top_k),
        "logits_processors": make_logits_processors(presence_penalty=config.presence_penalty,
                                                    frequency_penalty=config.frequency_penalty),
    }


@functools.lru_cache(maxsize=256)
def _sampler(temperature: float, top_p: float, top_k: int) -> Any:
    from mlx_lm.sample_utils import make_sampler

    samplers: dict[int, Any] = {}

    def sampler(logprobs: Any) -> Any:
        # A top-k of the vocabulary or more keeps every token: that is top-k off. mlx-lm would raise inside
        # an mx.compile'd function instead, and every later generation then fails ("array without a
        # primitive"): one client's config broke the server for everyone (found by scripts/fuzz.py).
        kept = top_k if top_k < logprobs.shape[-1] else 0
        if kept not in samplers:
            samplers[kept] = make_sampler(temp=temperature, top_p=top_p, top_k=kept)
        return samplers[kept](logprobs)

    return sampler


def _completion_tokens(generated: int, finish_reason: str | None) -> int:
    """Both libraries count the end-of-turn token in their last result; the client never sees it."""
    return generated - 1 if finish_reason == "stop" else generated


class TextModel:
    modalities = ("text",)

    def __init__(self, name: str, path: Path) -> None:
        import mlx_lm

        from mlxd.engine import cpu_attention, cpu_weights

        self.name = name
        self.model, self.tokenizer = mlx_lm.load(str(path))
        cpu_attention.install(self.model)
        cpu_weights.install(self.model)

    def image_tokens(self, images: list[Image.Image]) -> int:
        return 0  # a text model is never given images: they are refused before

    def prompt_ids(self, messages: Sequence[Message], instructions: str | None) -> list[int]:
        if not self.tokenizer.has_chat_template:
            lines = [turn["content"] for turn in chat_messages(messages, instructions)]
            return self.tokenizer.encode("\n\n".join(lines))
        return render(lambda chat: self.tokenizer.apply_chat_template(chat, add_generation_prompt=True),
                      messages, instructions)

    def count_tokens(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image]) -> int:
        return len(self.prompt_ids(messages, instructions))

    def generate(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
                 max_tokens: int, config: GenerationConfig) -> Iterator[Chunk]:
        import mlx_lm

        ids = self.prompt_ids(messages, instructions)
        for response in mlx_lm.stream_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens,
                                               **sampling(config)):
            yield Chunk(response.text, response.finish_reason, response.prompt_tokens,
                        _completion_tokens(response.generation_tokens, response.finish_reason))


_PLAIN_INPUTS = ("input_ids", "pixel_values", "attention_mask")


@dataclass
class _Continuation:
    """A conversation turn that brings new images, prefilled from the cached prefix on."""

    ids: list[int]
    prefix: int
    suffix_ids: Any
    suffix_mask: Any
    new_pixels: Any
    cache: list[Any]


class VisionModel:
    modalities = ("text", "image")

    def __init__(self, name: str, path: Path) -> None:
        import mlx_vlm

        from mlxd.engine import cpu_weights

        self.name = name
        self.model, self.processor = mlx_vlm.load(str(path))
        cpu_weights.install(self.model)
        eos = self.model.config.eos_token_id
        self.stop_tokens = set(eos if isinstance(eos, list) else [eos])
        self._image_tokens_by_size: dict[tuple[int, int], int] = {}

    def image_tokens(self, images: list[Image.Image]) -> int:
        """The prompt tokens these images take, counted once per image size (the processor's work is the
        same for every image of a size), so a stream of frames pays for it once."""
        image_token = getattr(self.model.config, "image_token_index", None)
        total = 0
        for image in images:
            if image.size not in self._image_tokens_by_size:
                text = self.prompt_text([Message("user", (Part(image=b""),))], None, 1)
                ids = self._inputs(text, [image])["input_ids"].reshape(-1).tolist()
                self._image_tokens_by_size[image.size] = ids.count(image_token) if image_token is not None else 0
            total += self._image_tokens_by_size[image.size]
        return total

    def prompt_text(self, messages: Sequence[Message], instructions: str | None, num_images: int) -> str:
        """The templated prompt, with one marker per image where the message had it."""
        from mlx_vlm import apply_chat_template

        return render(lambda chat: apply_chat_template(self.processor, self.model.config, chat,
                                                       num_images=num_images),
                      messages, instructions, with_images=True)

    def _inputs(self, text: str, images: list[Image.Image]) -> dict[str, Any]:
        """Token ids, attention mask and pixel values (the processor's work, not yet the vision tower's)."""
        from mlx_vlm.generate.dispatch import should_add_special_tokens
        from mlx_vlm.utils import prepare_inputs

        config = self.model.config
        return prepare_inputs(self.processor, images=images or None, prompts=text,
                              image_token_index=getattr(config, "image_token_index", None),
                              add_special_tokens=should_add_special_tokens(config.model_type, self.processor))

    def count_tokens(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image]) -> int:
        """The prompt's length with every image's tokens expanded, as the processor makes it."""
        text = self.prompt_text(messages, instructions, len(images))
        return int(self._inputs(text, images)["input_ids"].shape[-1])

    def embed(self, messages: Sequence[Message], instructions: str | None,
              images: list[Image.Image]) -> tuple[list[int], dict[str, Any]]:
        """Prompt ids and input embeddings (image features merged in), as mlx-vlm's BatchGenerator takes them."""
        text = self.prompt_text(messages, instructions, len(images))
        inputs = self._inputs(text, images)
        extra = {k: v for k, v in inputs.items() if k not in _PLAIN_INPUTS}
        embeddings = self.model.get_input_embeddings(inputs["input_ids"], inputs.get("pixel_values"),
                                                     mask=inputs.get("attention_mask"), **extra)
        kwargs = {**extra, **{k: v for k, v in embeddings.to_dict().items() if v is not None}}
        return inputs["input_ids"].squeeze(0).tolist(), kwargs

    def generate(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
                 max_tokens: int, config: GenerationConfig, conversation: Conversation | None = None
                 ) -> Iterator[Chunk]:
        """Generate alone; with a conversation's cache, the prefix it shares with this prompt is reused (a turn
        stopped early leaves the cache state stale: it is dropped)."""
        from mlx_vlm.generate import PromptCacheState

        text = self.prompt_text(messages, instructions, len(images))
        state = None
        if conversation is not None:
            state = conversation.vision_state = conversation.vision_state or PromptCacheState()
        continuation = self._continuation(text, images, state) if images and state else None
        if continuation is not None:
            chunks = self._continue(continuation, max_tokens, config, state)
        else:
            chunks = self._stream(text, images, max_tokens, config, state)
        finished = False
        try:
            for chunk in chunks:
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            chunks.close()
            if conversation is not None and not finished:
                conversation.vision_state = None

    def _stream(self, text: str, images: list[Image.Image], max_tokens: int, config: GenerationConfig,
                state: Any) -> Iterator[Chunk]:
        """mlx-vlm's own generation: it reuses the cached prefix when only text follows it."""
        import mlx_vlm

        for response in mlx_vlm.stream_generate(self.model, self.processor, text, image=images or None,
                                                max_tokens=max_tokens, prompt_cache_state=state,
                                                **sampling(config)):
            yield Chunk(response.text, response.finish_reason, response.prompt_tokens,
                        _completion_tokens(response.generation_tokens, response.finish_reason),
                        response.cached_tokens)

    def _continuation(self, text: str, images: list[Image.Image], state: Any) -> _Continuation | None:
        """The plan to prefill only the new ids and the new images' pixels, where the cache allows it: one
        pixel row per image, a cached prefix that holds the earlier images whole and ends before the new
        ones, and a cache that can be trimmed back to it. None: mlx-vlm's own path (it reuses the prefix when
        only text follows it), or the whole conversation."""
        if state.cache is None:
            return None
        inputs = self._inputs(text, images)
        pixels = inputs.get("pixel_values")
        if pixels is None or pixels.shape[0] != len(images) or set(inputs) - set(_PLAIN_INPUTS):
            return None
        ids = inputs["input_ids"].squeeze(0).tolist()
        image_token = getattr(self.model.config, "image_token_index", None)
        positions = [i for i, token in enumerate(ids) if token == image_token]
        per_image, uneven = divmod(len(positions), len(images))
        if uneven or not per_image:
            return None
        shared = common_prefix(state.token_ids, ids)
        earlier = sum(positions[per_image * (k + 1) - 1] < shared for k in range(len(images)))
        if earlier in (0, len(images)):
            return None
        prefix = min(shared, positions[per_image * earlier])
        if not trim_cache(state.cache, len(state.token_ids), prefix):
            return None
        return _Continuation(ids, prefix, inputs["input_ids"][:, prefix:], inputs["attention_mask"][:, prefix:],
                             pixels[earlier:], state.cache)

    def _continue(self, plan: _Continuation, max_tokens: int, config: GenerationConfig,
                  state: Any) -> Iterator[Chunk]:
        from mlx_vlm.generate import generate_step
        from mlx_vlm.tokenizer_utils import make_streaming_detokenizer

        detokenizer = make_streaming_detokenizer(self.processor)
        generated: list[int] = []
        finish_reason = "length"
        steps = generate_step(plan.suffix_ids, self.model, plan.new_pixels, plan.suffix_mask,
                              max_tokens=max_tokens, prompt_cache=plan.cache, **sampling(config))
        for token, _ in steps:
            generated.append(int(token))
            if generated[-1] in self.stop_tokens:
                finish_reason = "stop"
                break
            detokenizer.add_token(generated[-1])
            yield Chunk(detokenizer.last_segment, None, len(plan.ids), len(generated), plan.prefix)
        detokenizer.finalize()
        completion = _completion_tokens(len(generated), finish_reason)
        yield Chunk(detokenizer.last_segment, finish_reason, len(plan.ids), completion, plan.prefix)
        state.update(plan.ids + generated, plan.cache)


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
