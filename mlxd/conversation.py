"""A session's conversation, kept on the engine thread: earlier turns and the KV cache that holds them.

With `history` on, each turn is prompted with the whole conversation, but only the tokens past the longest
prefix still in the cache are prefilled: the cache is trimmed back to that prefix (a chat template may
render an earlier answer differently from how it was generated) and the rest is fed. Where the cache
cannot be trimmed (a rotating window that has wrapped), the turn falls back to a full prefill. Past the
token budget the oldest turns are dropped, and the prompt is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Conversation:
    turns: list[dict[str, Any]] = field(default_factory=list)
    cache: list[Any] | None = None
    cache_tokens: list[int] = field(default_factory=list)

    def reuse(self, ids: list[int]) -> tuple[list[Any] | None, int]:
        """The cache trimmed to the prefix it shares with `ids`, and that prefix's length (0: start afresh)."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        cache, self.cache = self.cache, None
        if cache is None:
            return None, 0
        prefix = 0
        for cached, new in zip(self.cache_tokens, ids, strict=False):
            if cached != new:
                break
            prefix += 1
        prefix = min(prefix, len(ids) - 1)  # at least one token must be fed to get the next one
        surplus = len(self.cache_tokens) - prefix
        if prefix == 0 or (surplus and not can_trim_prompt_cache(cache)):
            return None, 0
        if surplus:
            trim_prompt_cache(cache, surplus)
        return cache, prefix

    def record(self, user: dict[str, Any], answer: str, tokens: list[int], cache: list[Any] | None) -> None:
        """Keep the finished turn; keep its cache only if it holds exactly these tokens."""
        self.turns += [user, {"role": "assistant", "content": answer}]
        offset = getattr(cache[0], "offset", None) if cache else None
        self.cache = cache if offset == len(tokens) else None
        self.cache_tokens = tokens if self.cache is not None else []

    def drop_oldest_turn(self) -> bool:
        """Forget the oldest question and its answer; False when there is nothing left to drop."""
        if len(self.turns) < 2:
            return False
        del self.turns[:2]
        return True
