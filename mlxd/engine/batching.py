"""Continuous batching: requests of different sessions decoded together, joining and leaving between steps.

Text models use mlx-lm's BatchGenerator: every request brings its own sampler and logits processors, and
the KV cache of the longest prefix already computed (its conversation's earlier turns, else what the shared
prefix cache holds), so only the rest is prefilled; a finished request leaves its cache to both. Requests
join at the next step, so that those arriving together and sharing a prefix nobody holds yet (a new system
prompt sent to many sessions at once) have it prefilled once, not once each. Vision models
use mlx-vlm's BatchGenerator with per-request input embeddings (the image features merged into the prompt);
its sampler is shared by the batch, so a request whose sampling differs from the running batch's, or that
continues a conversation, is served alone instead (`accepts` says which). Must run on the engine's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mlxd.dialogue import Message
from mlxd.engine.conversation import Conversation
from mlxd.engine.models import Chunk, TextModel, VisionModel, sampling
from mlxd.engine.prefix_cache import PrefixCache, longest_shared_prefix
from mlxd.engine.vision_cache import VisionFeatureCache
from mlxd.generation import GenerationConfig


@dataclass
class _Stream:
    """One request in a batch: its detokenizer and what it has generated so far."""

    detokenizer: Any
    prompt_tokens: int
    tokens: list[int]
    cached_tokens: int = 0
    conversation: Conversation | None = None
    generated: int = 0

    def advance(self, token: int, finish_reason: str | None) -> Chunk:
        self.tokens.append(token)
        if finish_reason != "stop":  # the end-of-turn token is not part of the answer
            self.detokenizer.add_token(token)
            self.generated += 1
        if finish_reason is not None:
            self.detokenizer.finalize()
        return Chunk(self.detokenizer.last_segment, finish_reason, self.prompt_tokens, self.generated,
                     self.cached_tokens)


class _Batch:
    """Requests are known by the key `add` returns; they wait in `_waiting` until `_join` hands them to the
    generator, which knows them by its own uid."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._generator: Any = None
        self._streams: dict[int, _Stream] = {}
        self._waiting: dict[int, Any] = {}
        self._next_key = 0
        self._key_of: dict[int, int] = {}  # the generator's uid -> the key `add` returned

    def __len__(self) -> int:
        return len(self._streams) + len(self._waiting)

    def _wait(self, request: Any) -> int:
        key, self._next_key = self._next_key, self._next_key + 1
        self._waiting[key] = request
        return key

    def _joined(self, uid: int, key: int, stream: _Stream) -> None:
        self._streams[uid] = stream
        self._key_of[uid] = key

    def remove(self, key: int) -> None:
        if self._waiting.pop(key, None) is not None:
            return
        uid = next((uid for uid, known in self._key_of.items() if known == key), None)
        if uid is None:
            return
        self._cancel(uid)
        self._streams.pop(uid, None)
        del self._key_of[uid]

    def step(self) -> list[tuple[int, Chunk]]:
        """One step: prefill what joined, decode one token of every request; (key, chunk) per token."""
        self._join()
        _, responses = self._generator.next()
        results = []
        for response in responses:
            stream = self._streams[response.uid]
            chunk = stream.advance(response.token, response.finish_reason)
            results.append((self._key_of[response.uid], chunk))
            if response.finish_reason is not None:
                del self._streams[response.uid], self._key_of[response.uid]
                self._finished(stream, response)
        return results

    def _join(self) -> None:
        """Hand waiting requests to the generator."""

    def _cancel(self, uid: int) -> None:
        """Take a request the generator holds out of it."""

    def _finished(self, stream: _Stream, response: Any) -> None:
        """A request has ended (not cancelled)."""


MIN_SHARED_PREFILL = 32  # tokens: below this a shared prefix is not worth its own prefill pass


@dataclass
class _Waiting:
    """A text request that joins the batch at the next step."""

    ids: list[int]
    max_tokens: int
    chosen: dict[str, Any]
    stream: _Stream
    cache: list[Any] | None = field(default=None, repr=False)


class TextBatch(_Batch):
    def __init__(self, model: TextModel, capacity: int, prefix_cache: PrefixCache) -> None:
        from mlx_lm.generate import BatchGenerator

        super().__init__(capacity)
        self.model = model
        self.prefix_cache = prefix_cache
        self._generator = BatchGenerator(model.model, stop_tokens=[[t] for t in model.tokenizer.eos_token_ids],
                                         completion_batch_size=capacity, prefill_batch_size=capacity)

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        return True

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        ids = self.model.prompt_ids(messages, instructions)
        cache, cached_tokens = conversation.reuse(ids) if conversation else (None, 0)
        stream = _Stream(self.model.tokenizer.detokenizer, len(ids), list(ids), cached_tokens, conversation)
        return self._wait(_Waiting(ids, max_tokens, sampling(config), stream, cache))

    def _cancel(self, uid: int) -> None:
        self._generator.remove([uid])

    def _join(self) -> None:
        """Insert what waits, each from the longest prefix computed, a prefix they share prefilled once."""
        waiting, self._waiting = self._waiting, {}
        self._prefill_shared([w.ids for w in waiting.values() if w.cache is None])
        for key, request in waiting.items():
            stream = request.stream
            if request.cache is None:
                request.cache, stream.cached_tokens = self.prefix_cache.fetch(request.ids)
            cached = stream.cached_tokens
            [uid] = self._generator.insert([request.ids[cached:]], max_tokens=[request.max_tokens],
                                           caches=None if request.cache is None else [request.cache],
                                           all_tokens=[request.ids[:cached]], samplers=[request.chosen["sampler"]],
                                           logits_processors=[request.chosen["logits_processors"]])
            self._joined(uid, key, stream)

    def _prefill_shared(self, prompts: list[list[int]]) -> None:
        """Two or more prompts that share a long prefix the cache does not hold: compute it once, for them all."""
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        shared = longest_shared_prefix(prompts)
        if shared is None or len(shared) < MIN_SHARED_PREFILL or self.prefix_cache.held(shared) >= len(shared) - 1:
            return
        cache = make_prompt_cache(self.model.model)
        step = self._generator.prefill_step_size
        with mx.stream(self._generator.stream):
            for start in range(0, len(shared), step):
                self.model.model(mx.array([shared[start:start + step]]), cache=cache)
                mx.eval([layer.state for layer in cache])
        self.prefix_cache.store(shared, cache)

    def _finished(self, stream: _Stream, response: Any) -> None:
        self.prefix_cache.store(stream.tokens, response.prompt_cache)
        if stream.conversation is not None:
            stream.conversation.remember(response.prompt_cache, stream.tokens)


class VisionBatch(_Batch):
    def __init__(self, model: VisionModel, capacity: int, vision_cache: VisionFeatureCache) -> None:
        super().__init__(capacity)
        self.model = model
        self.vision_cache = vision_cache
        self._sampling_key: tuple[float, float, int] | None = None

    @staticmethod
    def _key(config: GenerationConfig) -> tuple[float, float, int]:
        return config.temperature, config.top_p, config.top_k

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        """Same sampling as the running batch (any, when it is empty), and no conversation to continue."""
        return conversation is None and (not len(self) or self._key(config) == self._sampling_key)

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        from mlx_vlm.generate import BatchGenerator
        from mlx_vlm.tokenizer_utils import make_streaming_detokenizer

        chosen = sampling(config)
        if not len(self) and self._key(config) != self._sampling_key:
            model = self.model.model
            self._generator = BatchGenerator(model.language_model, self.model.processor,
                                             stop_tokens=self.model.stop_tokens, sampler=chosen["sampler"],
                                             greedy_sampling=config.temperature == 0,
                                             completion_batch_size=self.capacity, prefill_batch_size=1)
            self._sampling_key = self._key(config)
        ids, prompt_kwargs = self.vision_cache.embedded(messages, instructions, images,
                                                        lambda: self.model.embed(messages, instructions, images))
        stream = _Stream(make_streaming_detokenizer(self.model.processor), len(ids), list(ids))
        return self._wait((ids, max_tokens, prompt_kwargs, chosen["logits_processors"], stream))

    def _join(self) -> None:
        """One request at a time, in arrival order, once the generator has none waiting: it admits the
        shortest prompt it holds first, so under a steady flow of short prompts a long one (an image with
        a long prompt) would wait for as long as shorter ones keep coming (a frame waited 67 s so)."""
        if not self._waiting or self._generator.unprocessed_prompts:
            return
        key = next(iter(self._waiting))
        ids, max_tokens, prompt_kwargs, logits_processors, stream = self._waiting.pop(key)
        [uid] = self._generator.insert([ids], max_tokens=max_tokens, prompt_kwargs=[prompt_kwargs],
                                       logits_processors=[logits_processors])
        self._joined(uid, key, stream)

    def _cancel(self, uid: int) -> None:
        self._generator.remove(uid)


def batch_for(model: TextModel | VisionModel, capacity: int, prefix_cache: PrefixCache,
              vision_cache: VisionFeatureCache) -> TextBatch | VisionBatch:
    """The batch that serves this kind of model."""
    if isinstance(model, VisionModel):
        return VisionBatch(model, capacity, vision_cache)
    return TextBatch(model, capacity, prefix_cache)
