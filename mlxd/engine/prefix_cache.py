"""A prefix cache shared by every session: KV caches keyed by the token ids they hold, LRU, bounded.

Requests that start alike (the chat template's preamble, the same system prompt or context, the same frame
prompt) prefill only what follows the longest prefix held here. An entry is never handed out: a request gets
a private copy trimmed to the prefix it shares, so that no two requests (and no request and the cache) write
one array. Dense KV layers are copied by slicing, which shares the stored buffer until the copy is written
(MLX copies on write), so a hit costs next to nothing; other layer kinds are deep-copied.

Keys are integer sequences: token ids, and for an image a value derived from its pixels at each of its
token positions (`image_key`), so that a repeated image matches and a different one does not. Held bytes
stay under `max_bytes` and entries under `max_entries`: the least recently used go first. Runs on the engine
thread; `stats` may be read from any thread.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Entry:
    key: np.ndarray
    cache: list[Any]
    nbytes: int
    trimmable: bool


class PrefixCache:
    def __init__(self, max_bytes: int, max_entries: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.tokens_saved = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "tokens_saved": self.tokens_saved,
                "bytes": self.nbytes, "entries": len(self._entries)}

    def fetch(self, key: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A private cache holding the longest held prefix of `key`, and that prefix's length (None and 0: prefill
        it all); at least one token is left to feed."""
        best, best_tokens = self._best(key)
        if best is None:
            self.misses += 1
            return None, 0
        self._entries.move_to_end(best)
        entry = self._entries[best]
        self.hits += 1
        self.tokens_saved += best_tokens
        return private_copy(entry.cache, len(entry.key), best_tokens), best_tokens

    def held(self, key: Sequence[int]) -> int:
        """How many of `key`'s tokens `fetch` would serve (one is always left to feed); counts nothing."""
        return self._best(key)[1]

    def _best(self, key: Sequence[int]) -> tuple[bytes | None, int]:
        """The entry serving the longest prefix of `key` (the shortest such entry: least to trim), and its length."""
        if not self.enabled:
            return None, 0
        wanted = np.asarray(key, dtype=np.int64)
        best, best_tokens = None, 0
        for name, entry in self._entries.items():
            usable = min(_common_prefix(entry.key, wanted), len(wanted) - 1)
            if usable < len(entry.key) and not entry.trimmable:
                continue
            if usable > best_tokens or (usable == best_tokens and best is not None
                                        and len(entry.key) < len(self._entries[best].key)):
                best, best_tokens = name, usable
        return (best, best_tokens) if best_tokens else (None, 0)

    def store(self, key: Sequence[int], cache: list[Any]) -> None:
        """Keep a compact copy of `cache`, which holds exactly the tokens of `key`. An entry that is a prefix
        of another trimmable one adds nothing: the longer one serves it."""
        if not self.enabled or not cache or not key:
            return
        wanted = np.asarray(key, dtype=np.int64)
        trimmable = all(layer.is_trimmable() for layer in cache)
        for name, entry in list(self._entries.items()):
            common = _common_prefix(entry.key, wanted)
            if common == len(wanted) and entry.trimmable:
                self._entries.move_to_end(name)
                return
            if common == len(entry.key) and trimmable:
                self._drop(name)
        kept = [_compact(layer) for layer in cache]
        nbytes = sum(layer.nbytes for layer in kept)
        if nbytes > self.max_bytes:
            return
        self._entries[wanted.tobytes()] = _Entry(wanted, kept, nbytes, trimmable)
        self.nbytes += nbytes
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, name: bytes) -> None:
        self.nbytes -= self._entries.pop(name).nbytes


def longest_shared_prefix(prompts: Sequence[Sequence[int]]) -> list[int] | None:
    """The longest prefix that two or more of `prompts` share, short of the whole of either (None: none)."""
    arrays = [np.asarray(prompt, dtype=np.int64) for prompt in prompts]
    best = 0, None
    for i, first in enumerate(arrays):
        for second in arrays[i + 1:]:
            shared = min(_common_prefix(first, second), len(first) - 1, len(second) - 1)
            if shared > best[0]:
                best = shared, first
    return None if best[1] is None else best[1][:best[0]].tolist()


def image_key(ids: Sequence[int], image_token: int | None, digests: Sequence[bytes]) -> list[int]:
    """`ids` with each image's token positions replaced by a negative value drawn from its pixel digest
    (token ids are never negative). Positions are shared evenly among the images, in order; where they do not
    divide evenly every image position takes the digest of all the images together."""
    positions = [i for i, token in enumerate(ids) if token == image_token]
    if not positions or not digests:
        return list(ids)
    per_image, uneven = divmod(len(positions), len(digests))
    values = ([_negative(d) for d in digests for _ in range(per_image)] if not uneven and per_image
              else [_negative(hashlib.blake2b(b"".join(digests), digest_size=8).digest())] * len(positions))
    keyed = list(ids)
    for position, value in zip(positions, values, strict=True):
        keyed[position] = value
    return keyed


def _negative(digest: bytes) -> int:
    return -1 - (int.from_bytes(digest[:8], "little") >> 2)


def _common_prefix(held: np.ndarray, wanted: np.ndarray) -> int:
    n = min(len(held), len(wanted))
    differ = np.flatnonzero(held[:n] != wanted[:n])
    return int(differ[0]) if differ.size else n


def _is_dense(layer: Any) -> bool:
    """A plain KV layer (mlx-lm's or mlx-vlm's own twin of it), which slicing copies exactly."""
    from mlx_lm.models.cache import KVCache
    from mlx_vlm.models.cache import KVCache as VisionKVCache

    return type(layer) in (KVCache, VisionKVCache) and layer.keys is not None


def _compact(layer: Any) -> Any:
    """A copy holding exactly its tokens in buffers of its own (not a view of a batch's larger buffer)."""
    import mlx.core as mx

    if not _is_dense(layer):
        return copy.deepcopy(layer)
    kept = type(layer)()
    kept.keys = mx.contiguous(layer.keys[..., :layer.offset, :])
    kept.values = mx.contiguous(layer.values[..., :layer.offset, :])
    kept.offset = layer.offset
    mx.eval(kept.keys, kept.values)
    return kept


def private_copy(cache: list[Any], held: int, tokens: int) -> list[Any]:
    """A copy of `cache` (holding `held` tokens) cut to its first `tokens`, sharing no array object with it:
    whatever the copy's owner writes never reaches the original."""
    copies = []
    for layer in cache:
        if _is_dense(layer):
            piece = type(layer)()
            piece.keys, piece.values = layer.keys[..., :tokens, :], layer.values[..., :tokens, :]
            piece.offset = tokens
        else:
            piece = copy.deepcopy(layer)
            if held > tokens:
                piece.trim(held - tokens)
        copies.append(piece)
    return copies
