"""Model loading and generation: the only module that calls mlx-lm and mlx-vlm.

Vision-language models (a `vision_config` in config.json) load with mlx_vlm, text-only ones with mlx_lm.
Both offer `generate`, one request alone, which yields `Chunk`s ending with exactly one whose
`finish_reason` is set; continuous batching across requests is built on them in batching.py. Prompts are
built with the model's chat template. Every call here must run on the engine's thread: MLX streams are
thread-local.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image

from mlxd.engine.conversation import Conversation, common_prefix, trim_cache
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

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig) -> Iterator[Chunk]: ...


def _messages(question: str | dict[str, Any], context: str | None, system_role: bool,
              turns: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Earlier turns, then the question; the context as a system turn, or as a preamble to the question."""
    user = question if isinstance(question, dict) else {"role": "user", "content": question}
    if context is None:
        return [*turns, user]
    if system_role:
        return [{"role": "system", "content": context}, *turns, user]
    return [*turns, _with_preamble(user, context)]


def _with_preamble(user: dict[str, Any], context: str) -> dict[str, Any]:
    content = user["content"]
    if isinstance(content, str):
        return {**user, "content": f"{context}\n\n{content}"}
    return {**user, "content": [{"type": "text", "text": context}, *content]}


def _render(apply_template: Callable[[list[dict[str, Any]]], T], question: str | dict[str, Any],
            context: str | None, turns: Sequence[dict[str, Any]]) -> T:
    """The chat template applied with the context as a system turn, or as a preamble where the template
    refuses a system turn."""
    try:
        return apply_template(_messages(question, context, True, turns))
    except Exception:
        if context is None:
            raise
        return apply_template(_messages(question, context, False, turns))


def sampling(config: GenerationConfig) -> dict[str, Any]:
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    samplers: dict[int, Any] = {}

    def sampler(logprobs: Any) -> Any:
        # A top-k of the vocabulary or more keeps every token: that is top-k off. mlx-lm would raise inside
        # an mx.compile'd function instead, and every later generation then fails ("array without a
        # primitive"): one client's config broke the server for everyone (found by scripts/fuzz.py).
        top_k = config.top_k if config.top_k < logprobs.shape[-1] else 0
        if top_k not in samplers:
            samplers[top_k] = make_sampler(temp=config.temperature, top_p=config.top_p, top_k=top_k)
        return samplers[top_k](logprobs)

    return {
        "sampler": sampler,
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

    def prompt_ids(self, prompt: str, context: str | None, turns: Sequence[dict[str, Any]] = ()) -> list[int]:
        if not self.tokenizer.has_chat_template:
            lines = [context] if context is not None else []
            lines += [turn["content"] for turn in turns] + [prompt]
            return self.tokenizer.encode("\n\n".join(lines))
        return _render(lambda messages: self.tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                       prompt, context, turns)

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig) -> Iterator[Chunk]:
        import mlx_lm

        ids = self.prompt_ids(prompt, context)
        for response in mlx_lm.stream_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens,
                                               **sampling(config)):
            yield Chunk(response.text, response.finish_reason, response.prompt_tokens,
                        _completion_tokens(response.generation_tokens, response.finish_reason))


def user_turn(prompt: str, num_images: int) -> dict[str, Any]:
    """A question, with a marker per image so that a conversation's images stay in their own turns."""
    if not num_images:
        return {"role": "user", "content": prompt}
    return {"role": "user", "content": [*({"type": "image"} for _ in range(num_images)),
                                        {"type": "text", "text": prompt}]}


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

        self.name = name
        self.model, self.processor = mlx_vlm.load(str(path))
        eos = self.model.config.eos_token_id
        self.stop_tokens = set(eos if isinstance(eos, list) else [eos])

    def prompt_text(self, messages: list[dict[str, Any]], num_images: int) -> str:
        from mlx_vlm import apply_chat_template

        return apply_chat_template(self.processor, self.model.config, messages, num_images=num_images)

    def _prompt(self, prompt: str, context: str | None, images: list[Image.Image],
                conversation: Conversation | None) -> tuple[str, list[Image.Image]]:
        """The templated prompt of the whole conversation, and all its images in order."""
        turns, earlier_images = (conversation.turns, conversation.images) if conversation else ([], [])
        all_images = [*earlier_images, *images]
        question = user_turn(prompt, len(images))
        return _render(lambda messages: self.prompt_text(messages, len(all_images)), question, context,
                       turns), all_images

    def _inputs(self, text: str, images: list[Image.Image]) -> dict[str, Any]:
        """Token ids, attention mask and pixel values (the processor's work, not yet the vision tower's)."""
        from mlx_vlm.generate.dispatch import should_add_special_tokens
        from mlx_vlm.utils import prepare_inputs

        config = self.model.config
        return prepare_inputs(self.processor, images=images or None, prompts=text,
                              image_token_index=getattr(config, "image_token_index", None),
                              add_special_tokens=should_add_special_tokens(config.model_type, self.processor))

    def embed(self, prompt: str, context: str | None, images: list[Image.Image]) -> tuple[list[int], dict[str, Any]]:
        """Prompt ids and input embeddings (image features merged in), as mlx-vlm's BatchGenerator takes them."""
        text, _ = self._prompt(prompt, context, images, None)
        inputs = self._inputs(text, images)
        extra = {k: v for k, v in inputs.items() if k not in _PLAIN_INPUTS}
        embeddings = self.model.get_input_embeddings(inputs["input_ids"], inputs.get("pixel_values"),
                                                     mask=inputs.get("attention_mask"), **extra)
        kwargs = {**extra, **{k: v for k, v in embeddings.to_dict().items() if v is not None}}
        return inputs["input_ids"].squeeze(0).tolist(), kwargs

    def generate(self, prompt: str, context: str | None, images: list[Image.Image], max_tokens: int,
                 config: GenerationConfig, conversation: Conversation | None = None) -> Iterator[Chunk]:
        """Generate alone; with a conversation, earlier turns and images come first, its cache is reused, and
        the finished turn is recorded (a turn stopped early leaves the cache state stale: it is dropped)."""
        from mlx_vlm.generate import PromptCacheState

        text, all_images = self._prompt(prompt, context, images, conversation)
        state = None
        if conversation is not None:
            state = conversation.vision_state = conversation.vision_state or PromptCacheState()
        continuation = self._continuation(text, all_images, len(images), state) if images and state else None
        if continuation is not None:
            chunks = self._continue(continuation, max_tokens, config, state)
        else:
            chunks = self._stream(text, all_images, max_tokens, config, state)
        parts: list[str] = []
        finished = None
        try:
            for chunk in chunks:
                parts.append(chunk.text)
                finished = chunk if chunk.finish_reason else None
                yield chunk
        finally:
            chunks.close()
            if conversation is not None:
                if finished is None:
                    conversation.vision_state = None
                else:
                    conversation.record(user_turn(prompt, len(images)), "".join(parts),
                                        finished.prompt_tokens + finished.completion_tokens, images)

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

    def _continuation(self, text: str, images: list[Image.Image], num_new: int, state: Any) -> _Continuation | None:
        """The plan to prefill only the new ids and the new images' pixels, where the cache allows it: one
        pixel row per image, a cached prefix that ends before the new images and not inside an earlier one,
        and a cache that can be trimmed back to it. None: prefill the whole conversation instead."""
        if state.cache is None or len(images) == num_new:
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
        earlier = len(images) - num_new
        prefix = min(common_prefix(state.token_ids, ids), positions[per_image * earlier])
        if prefix <= positions[per_image * earlier - 1] or not trim_cache(state.cache, len(state.token_ids), prefix):
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
