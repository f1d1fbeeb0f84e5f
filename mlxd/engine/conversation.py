"""A session's KV cache across the turns of its conversation, kept on the engine thread.

Each turn is prompted with the whole conversation, but only the tokens past the longest prefix still in the
cache are prefilled: the cache is trimmed back to that prefix (a chat template may render an earlier answer
differently from how it was generated, and a conversation may have been edited) and the rest is fed. Where
the cache cannot be trimmed (a rotating window that has wrapped), the turn falls back to a full prefill.

Text models keep the cache here (`cache`, `cache_tokens`); vision models keep mlx-vlm's PromptCacheState
(`vision_state`), which does the same prefix matching inside `mlx_vlm.stream_generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Conversation:
    cache: list[Any] | None = None
    cache_tokens: list[int] = field(default_factory=list)
    vision_state: Any = None

    def reuse(self, ids: list[int]) -> tuple[list[Any] | None, int]:
        """The cache trimmed to the prefix it shares with `ids`, and that prefix's length (0: start afresh)."""
        cache, self.cache = self.cache, None
        if cache is None:
            return None, 0
        prefix = min(common_prefix(self.cache_tokens, ids), len(ids) - 1)  # one token must be fed at least
        if prefix == 0 or not trim_cache(cache, len(self.cache_tokens), prefix):
            return None, 0
        return cache, prefix

    def remember(self, cache: list[Any] | None, tokens: Sequence[int]) -> None:
        """Keep a text model's cache after a finished turn, only if it holds exactly `tokens`."""
        offset = getattr(cache[0], "offset", None) if cache else None
        self.cache = cache if offset == len(tokens) else None
        self.cache_tokens = list(tokens) if self.cache is not None else []


def common_prefix(cached: Sequence[int], ids: Sequence[int]) -> int:
    prefix = 0
    for old, new in zip(cached, ids, strict=False):
        if old != new:
            break
        prefix += 1
    return prefix


def trim_cache(cache: list[Any], cached: int, prefix: int) -> bool:
    """Trim a cache holding `cached` tokens back to its first `prefix`; False where it cannot be trimmed
    (a rotating window that has wrapped): the caller must prefill from scratch."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    surplus = cached - prefix
    if surplus and not can_trim_prompt_cache(cache):
        return False
    if surplus:
        trim_prompt_cache(cache, surplus)
    return True
