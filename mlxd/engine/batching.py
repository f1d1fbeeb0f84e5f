"""Continuous batching: requests of different sessions decoded together, joining and leaving between steps.

Text models use mlx-lm's BatchGenerator: every request brings its own sampler and logits processors, and
the KV cache of the longest prefix already computed (its conversation's earlier turns, else what the shared
prefix cache holds), so only the rest is prefilled; a finished request leaves its cache to both. Requests
join at the next step, so that those arriving together and sharing a prefix nobody holds yet (a new system
prompt sent to many sessions at once) have it prefilled once, not once each. Vision models
use mlx-vlm's BatchGenerator with per-request input embeddings (the image features merged into the prompt),
each prompt prefilled from the longest prefix the shared cache holds, its images keyed by their pixels
(vision_prefill.py); its sampler is shared by the batch, so a request whose sampling differs from the
running batch's, or that continues a conversation, is served alone instead (`accepts` says which). Must
run on the engine's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mlxd.dialogue import Message
from mlxd.engine.conversation import Conversation
from mlxd.engine.models import Chunk, TextModel, VisionModel, sampling
from mlxd.engine.prefix_cache import PrefixCache, image_key, longest_shared_prefix
from mlxd.engine.vision_cache import VisionFeatureCache, image_digest
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
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._generator: Any = None
        self._streams: dict[int, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def step(self) -> list[tuple[int, Chunk]]:
        """One step: prefill what joined, decode one token of every request; (uid, chunk) per token."""
        _, responses = self._generator.next()
        results = []
        for response in responses:
            stream = self._streams[response.uid]
            chunk = stream.advance(response.token, response.finish_reason)
            if response.finish_reason is not None:
                del self._streams[response.uid]
                self._finished(stream, response)
            results.append((response.uid, chunk))
        return results

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
        self._waiting: dict[int, _Waiting] = {}
        self._next_key = 0
        self._key_of: dict[int, int] = {}  # the generator's uid -> the key `add` returned

    def __len__(self) -> int:
        return len(self._streams) + len(self._waiting)

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        return True

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        ids = self.model.prompt_ids(messages, instructions)
        cache, cached_tokens = conversation.reuse(ids) if conversation else (None, 0)
        stream = _Stream(self.model.tokenizer.detokenizer, len(ids), list(ids), cached_tokens, conversation)
        key, self._next_key = self._next_key, self._next_key + 1
        self._waiting[key] = _Waiting(ids, max_tokens, sampling(config), stream, cache)
        return key

    def remove(self, key: int) -> None:
        if self._waiting.pop(key, None) is not None:
            return
        uid = next((uid for uid, known in self._key_of.items() if known == key), None)
        if uid is None:
            return
        self._generator.remove([uid])
        self._streams.pop(uid, None)
        del self._key_of[uid]

    def step(self) -> list[tuple[int, Chunk]]:
        self._join()
        results = []
        for uid, chunk in super().step():
            results.append((self._key_of[uid], chunk))
            if chunk.finish_reason is not None:
                del self._key_of[uid]
        return results

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
            self._streams[uid] = stream
            self._key_of[uid] = key

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
    def __init__(self, model: VisionModel, capacity: int, prefix_cache: PrefixCache,
                 vision_cache: VisionFeatureCache) -> None:
        super().__init__(capacity)
        self.model = model
        self.prefix_cache = prefix_cache
        self.vision_cache = vision_cache
        self._sampling_key: tuple[float, float, int] | None = None
        self._image_token = getattr(model.model.config, "image_token_index", None)
        self._waiting: list[Any] = []  # vision_prefill.VisionPrompt: prompts the generator has not taken yet

    @staticmethod
    def _key(config: GenerationConfig) -> tuple[float, float, int]:
        return config.temperature, config.top_p, config.top_k

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        """Same sampling as the running batch (any, when it is empty), and no conversation to continue."""
        return conversation is None and (not self._streams or self._key(config) == self._sampling_key)

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        """Queue the prompt, prefilled from the longest prefix the shared cache holds (images keyed by pixels)."""
        from mlx_vlm.generate import BatchGenerator
        from mlx_vlm.tokenizer_utils import make_streaming_detokenizer

        from mlxd.engine import vision_prefill

        chosen = sampling(config)
        if not self._streams and self._key(config) != self._sampling_key:
            model = self.model.model
            self._generator = BatchGenerator(model.language_model, self.model.processor,
                                             stop_tokens=self.model.stop_tokens, sampler=chosen["sampler"],
                                             greedy_sampling=config.temperature == 0,
                                             completion_batch_size=self.capacity, prefill_batch_size=1)
            self._sampling_key = self._key(config)
        digests = [image_digest(image) for image in images]
        ids, prompt_kwargs = self.vision_cache.embedded(messages, instructions, digests,
                                                        lambda: self.model.embed(messages, instructions, images))
        uid = vision_prefill.reserve_uid(self._generator)
        first_image = ids.index(self._image_token) if self._image_token in ids else None
        self._waiting.append(vision_prefill.VisionPrompt(uid, ids, prompt_kwargs,
                                                         image_key(ids, self._image_token, digests), max_tokens,
                                                         chosen["logits_processors"], first_image))
        self._streams[uid] = _Stream(make_streaming_detokenizer(self.model.processor), len(ids), list(ids))
        return uid

    def step(self) -> list[tuple[int, Chunk]]:
        from mlxd.engine import vision_prefill

        admitted = vision_prefill.admit(self._generator, self._waiting, self.prefix_cache)
        if admitted is not None:
            uid, cached = admitted
            self._streams[uid].cached_tokens = cached
        return super().step()

    def remove(self, uid: int) -> None:
        from mlxd.engine import vision_prefill

        vision_prefill.withdraw(self._generator, self._waiting, uid)
        self._streams.pop(uid, None)


def batch_for(model: TextModel | VisionModel, capacity: int, prefix_cache: PrefixCache,
              vision_cache: VisionFeatureCache) -> TextBatch | VisionBatch:
    """The batch that serves this kind of model."""
    if isinstance(model, VisionModel):
        return VisionBatch(model, capacity, prefix_cache, vision_cache)
    return TextBatch(model, capacity, prefix_cache)
