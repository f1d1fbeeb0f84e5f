"""Continuous batching: requests of different sessions decoded together, joining and leaving between steps.

Text models use mlx-lm's BatchGenerator: every request brings its own sampler and logits processors, and
with a conversation the KV cache of its earlier turns, so only the new tokens are prefilled. Vision models
use mlx-vlm's BatchGenerator with per-request input embeddings (the image features merged into the prompt);
its sampler is shared by the batch, so a request whose sampling differs from the running batch's, or that
continues a conversation, is served alone instead (`accepts` says which). Must run on the engine's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mlxd.dialogue import Message
from mlxd.engine.conversation import Conversation
from mlxd.engine.models import Chunk, TextModel, VisionModel, sampling
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


class TextBatch(_Batch):
    def __init__(self, model: TextModel, capacity: int) -> None:
        from mlx_lm.generate import BatchGenerator

        super().__init__(capacity)
        self.model = model
        self._generator = BatchGenerator(model.model, stop_tokens=[[t] for t in model.tokenizer.eos_token_ids],
                                         completion_batch_size=capacity, prefill_batch_size=capacity)

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        return True

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        ids = self.model.prompt_ids(messages, instructions)
        cache, cached_tokens = conversation.reuse(ids) if conversation else (None, 0)
        chosen = sampling(config)
        [uid] = self._generator.insert([ids[cached_tokens:]], max_tokens=[max_tokens],
                                       caches=None if cache is None else [cache], samplers=[chosen["sampler"]],
                                       logits_processors=[chosen["logits_processors"]])
        self._streams[uid] = _Stream(self.model.tokenizer.detokenizer, len(ids), list(ids), cached_tokens,
                                     conversation)
        return uid

    def remove(self, uid: int) -> None:
        self._generator.remove([uid])
        self._streams.pop(uid, None)

    def _finished(self, stream: _Stream, response: Any) -> None:
        if stream.conversation is not None:
            stream.conversation.remember(response.prompt_cache, stream.tokens)


class VisionBatch(_Batch):
    def __init__(self, model: VisionModel, capacity: int) -> None:
        super().__init__(capacity)
        self.model = model
        self._sampling_key: tuple[float, float, int] | None = None

    @staticmethod
    def _key(config: GenerationConfig) -> tuple[float, float, int]:
        return config.temperature, config.top_p, config.top_k

    def accepts(self, config: GenerationConfig, conversation: Conversation | None) -> bool:
        """Same sampling as the running batch (any, when it is empty), and no conversation to continue."""
        return conversation is None and (not self._streams or self._key(config) == self._sampling_key)

    def add(self, messages: Sequence[Message], instructions: str | None, images: list[Image.Image],
            max_tokens: int, config: GenerationConfig, conversation: Conversation | None) -> int:
        from mlx_vlm.generate import BatchGenerator
        from mlx_vlm.tokenizer_utils import make_streaming_detokenizer

        chosen = sampling(config)
        if not self._streams and self._key(config) != self._sampling_key:
            model = self.model.model
            self._generator = BatchGenerator(model.language_model, self.model.processor,
                                             stop_tokens=self.model.stop_tokens, sampler=chosen["sampler"],
                                             greedy_sampling=config.temperature == 0,
                                             completion_batch_size=self.capacity, prefill_batch_size=1)
            self._sampling_key = self._key(config)
        ids, prompt_kwargs = self.model.embed(messages, instructions, images)
        [uid] = self._generator.insert([ids], max_tokens=max_tokens, prompt_kwargs=[prompt_kwargs],
                                       logits_processors=[chosen["logits_processors"]])
        self._streams[uid] = _Stream(make_streaming_detokenizer(self.model.processor), len(ids), list(ids))
        return uid

    def remove(self, uid: int) -> None:
        self._generator.remove(uid)
        self._streams.pop(uid, None)


def batch_for(model: TextModel | VisionModel, capacity: int) -> TextBatch | VisionBatch:
    """The batch that serves this kind of model."""
    return VisionBatch(model, capacity) if isinstance(model, VisionModel) else TextBatch(model, capacity)
