"""Vision prompts prefilled from the shared prefix cache, inside mlx-vlm's continuous batch.

mlx-vlm's BatchGenerator takes no per-request KV cache (its own prefix cache is built in, keyed its own way
and bounded apart from ours), so mlxd hands it the prompt batch itself: one request's prompt, a private
copy of the longest prefix the shared cache holds (`PrefixCache.fetch`, image positions keyed by pixels)
and only the rest of the input embeddings. The generator prefills it between decode steps as it does its
own, then decodes it with the batch. Before the last prompt token the prompt's cache is stored, so the
same prompt and image again prefill one token, and a new frame reuses everything up to its first image
token.

Gemma 3's sliding-window layers (a rotating cache) cannot be cut back once the prompt fills the window, so
an entry that long serves only requests that extend it whole. For such prompts the prefill also stops at
the first image token and stores that prefix apart: a new frame then still skips the text before its image.

This reaches into mlx-vlm's generator (`_prompt_batch`, `uid_count`, `_merge_prefill_prompt_kwargs`), as
pinned in pyproject.toml; the tests of vision reuse cover it. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlx_vlm.generate.ar import (
    BatchGenerator,
    PromptProcessingBatch,
    _is_sequence_aligned_prompt_kwarg,
    _merge_prefill_prompt_kwargs,
    _slice_sequence_aligned_prompt_kwarg,
)

from mlxd.engine.prefix_cache import PrefixCache

Store = Callable[[Sequence[int], list[Any]], None]


class _KeptPrefill(PromptProcessingBatch):
    """One prompt prefilled from a cached prefix, storing what it computed for the requests after it."""

    def __init__(self, key: Sequence[int], cached: int, first_image: int | None, store: Store,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key = list(key)
        self._cached = cached
        self._store = store
        windows = [layer.max_size for layer in self.prompt_cache if hasattr(layer, "max_size")]
        fills_window = bool(windows) and len(key) - 1 >= min(windows)
        # Suffix columns after which the prefix before the first image is stored apart (0: none).
        self._checkpoint = (first_image - cached if fills_window and first_image is not None and first_image > cached
                            else 0)

    def prompt_step(self) -> int:
        left = self._checkpoint - self._processed_prompt_columns
        if left <= 0 or self.prefill_step_size is None:
            return super().prompt_step()
        step, self.prefill_step_size = self.prefill_step_size, min(self.prefill_step_size, left)
        try:
            done = super().prompt_step()
        finally:
            self.prefill_step_size = step
        if self._processed_prompt_columns == self._checkpoint:
            self._keep()
        return done

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self._keep()
        return super().generate(*args, **kwargs)

    def _keep(self) -> None:
        held = self._cached + self._processed_prompt_columns
        if held > self._cached and self.prompt_cache:
            self._store(self._key[:held], self.prompt_cache)


@dataclass
class VisionPrompt:
    """A request waiting for the generator to take its prompt: its uid there and what its prefill needs."""

    uid: int
    ids: list[int]
    prompt_kwargs: dict[str, Any]
    key: list[int]  # `ids` with image positions keyed by pixels (`image_key`)
    max_tokens: int
    logits_processors: list[Any]
    first_image: int | None  # position of its first image token


def reserve_uid(generator: BatchGenerator) -> int:
    uid, generator.uid_count = generator.uid_count, generator.uid_count + 1
    return uid


def admit(generator: BatchGenerator, waiting: list[VisionPrompt], prefix_cache: PrefixCache) -> tuple[int, int] | None:
    """Hand the generator the next waiting prompt when it prefills none (it prefills it between decode steps,
    once its batch has room, as it does its own), from the longest prefix cached by then, so that a prompt
    queued behind one like it reuses what that one stored. Its uid and the tokens reused; None: none taken."""
    if not waiting or generator._prompt_batch is not None:
        return None
    prompt = waiting.pop(0)
    cache, cached = prefix_cache.fetch(prompt.key)
    generator._prompt_batch = _prompt_batch(generator, prompt, cache, cached, prefix_cache.store)
    return prompt.uid, cached


def withdraw(generator: BatchGenerator, waiting: list[VisionPrompt], uid: int) -> None:
    """Drop a request wherever it is: waiting here, being prefilled or decoding."""
    waiting[:] = [prompt for prompt in waiting if prompt.uid != uid]
    generator.remove(uid)


def _prompt_batch(generator: BatchGenerator, prompt: VisionPrompt, cache: list[Any] | None, cached: int,
                  store: Store) -> _KeptPrefill:
    """The prompt batch that prefills `prompt` from `cache` (holding its first `cached` tokens; None: the
    batch makes its own, as for a prompt of mlx-vlm's own)."""
    ids, language_model = prompt.ids, generator.model
    embeds, merged = _merge_prefill_prompt_kwargs([prompt.prompt_kwargs], [ids])
    if cached:
        merged = {k: _slice_sequence_aligned_prompt_kwarg(k, v, start=cached)
                  if _is_sequence_aligned_prompt_kwarg(k, v, len(ids)) else v for k, v in merged.items()}
        embeds = embeds[:, cached:]
    return _KeptPrefill(prompt.key, cached, prompt.first_image, store, model=language_model, uids=[prompt.uid],
                        input_ids=[ids[cached:]], max_tokens=[prompt.max_tokens], inputs_embeds=embeds,
                        prompt_kwargs=merged, logits_processors=[prompt.logits_processors],
                        prefill_step_size=generator.prefill_step_size, warm_cache=cache,
                        greedy_sampling=generator.greedy_sampling)
