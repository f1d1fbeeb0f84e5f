"""A session's conversation, kept on the engine thread: earlier turns, their images, and the KV cache.

With `history` on, each turn is prompted with the whole conversation, but only the tokens past the longest
prefix still in the cache are prefilled: the cache is trimmed back to that prefix (a chat template may
render an earlier answer differently from how it was generated) and the rest is fed. Where the cache
cannot be trimmed (a rotating window that has wrapped), the turn falls back to a full prefill. Past the
token budget the oldest turns are dropped, those with images first, and the prompt is rebuilt.

Text models keep the cache here (`cache`, `cache_tokens`); vision models keep mlx-vlm's PromptCacheState
(`vision_state`), which does the same prefix matching inside `mlx_vlm.stream_generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Conversation:
    budget: int
    turns: list[dict[str, Any]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    turn_images: list[int] = field(default_factory=list)
    turn_tokens: list[int] = field(default_factory=list)
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

    @property
    def tokens(self) -> int:
        """Tokens the conversation takes, as of its last turn."""
        return sum(self.turn_tokens)

    def record(self, user: dict[str, Any], answer: str, total_tokens: int, images: Sequence[Image.Image] = (),
               cache: list[Any] | None = None, tokens: Sequence[int] = ()) -> None:
        """Keep a finished turn that brought the conversation to `total_tokens`; keep a text model's cache
        only if it holds exactly `tokens`."""
        self.turns += [user, {"role": "assistant", "content": answer}]
        self.images += list(images)
        self.turn_images.append(len(images))
        self.turn_tokens.append(max(0, total_tokens - self.tokens))
        offset = getattr(cache[0], "offset", None) if cache else None
        self.cache = cache if offset == len(tokens) else None
        self.cache_tokens = list(tokens) if self.cache is not None else []
        while self.tokens > self.budget and self.drop_oldest_turn():
            pass

    def drop_oldest_turn(self) -> bool:
        """Forget the oldest turn with images, else the oldest turn; False when there is none left."""
        if not self.turn_images:
            return False
        index = next((i for i, count in enumerate(self.turn_images) if count), 0)
        first_image = sum(self.turn_images[:index])
        del self.images[first_image:first_image + self.turn_images[index]]
        del self.turn_images[index]
        del self.turn_tokens[index]
        del self.turns[2 * index:2 * index + 2]
        return True


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
