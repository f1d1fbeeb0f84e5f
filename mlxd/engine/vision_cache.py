"""A vision-feature cache: the same image sent again (by its pixel content) skips the vision tower.

Screen sharing sends the same screen over and over, and a conversation shows its images again every turn;
the vision tower is the costly part of an image on a real model. mlx-vlm's models run their tower as
`self.vision_tower(pixels, ...)` inside `get_input_embeddings`, each with its own signature and output, so
the cache wraps that module: its output is kept, keyed by a digest of every array and option it was called
with, in an LRU of `size` calls. A model without a `vision_tower` runs as before.

An identical frame goes further: the same prompt with the same pixels has the same ids and input embeddings,
so `embedded` keeps the last few whole, and such a frame skips the image processor as well. Engine thread
only; `stats` may be read from any thread.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from PIL import Image

from mlxd.dialogue import Message

T = TypeVar("T")
EMBEDDED_PROMPTS_KEPT = 8


class VisionFeatureCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._outputs: OrderedDict[bytes, Any] = OrderedDict()
        self._embedded: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._outputs)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._outputs)}

    def install(self, model: nn.Module) -> bool:
        """Route the model's vision tower through this cache; False where there is none or it is off."""
        tower = model.get("vision_tower") if isinstance(model, dict) else None
        if self.size <= 0 or not isinstance(tower, nn.Module) or isinstance(tower, _CachedTower):
            return False
        model.vision_tower = _CachedTower(tower, self)
        return True

    def call(self, tower: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        def run() -> Any:
            output = tower(*args, **kwargs)
            mx.eval(output)
            return output

        return self._kept(self._outputs, _digest(args, kwargs), run, self.size)

    def embedded(self, messages: Sequence[Message], instructions: str | None, digests: Sequence[bytes],
                 embed: Callable[[], T]) -> T:
        """`embed()` (a prompt's ids and input embeddings), computed once for the same prompt and pixels (the
        images' `image_digest`s)."""
        if self.size <= 0 or not digests:
            return embed()
        key = (instructions, tuple((m.role, tuple((p.text, p.image is None) for p in m.parts)) for m in messages),
               tuple(digests))
        return self._kept(self._embedded, key, embed, min(self.size, EMBEDDED_PROMPTS_KEPT))

    def _kept(self, kept: OrderedDict[Any, Any], key: Hashable, compute: Callable[[], T], size: int) -> T:
        if key in kept:
            kept.move_to_end(key)
            self.hits += 1
            return kept[key]
        self.misses += 1
        kept[key] = value = compute()
        while len(kept) > size:
            kept.popitem(last=False)
        return value


class _CachedTower(nn.Module):
    """The model's own tower, called through the cache; its attributes read through to the tower."""

    def __init__(self, tower: nn.Module, cache: VisionFeatureCache) -> None:
        super().__init__()
        self.tower = tower
        self.cache = cache

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache.call(self["tower"], args, kwargs)

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        tower = self.get("tower")
        if tower is None:
            raise AttributeError(key)
        return getattr(tower, key)


def image_digest(image: Image.Image) -> bytes:
    digest = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.digest()


def _digest(args: tuple, kwargs: dict[str, Any]) -> bytes:
    """A digest of the call: arrays by shape, dtype and bytes, everything else by its repr."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in [*enumerate(args), *sorted(kwargs.items())]:
        digest.update(repr(name).encode())
        if isinstance(value, mx.array) and value.dtype == mx.bfloat16:
            value = value.view(mx.uint16)  # numpy has no bfloat16; the bits are what matter
        if isinstance(value, (mx.array, np.ndarray)):
            data = np.asarray(value)
            digest.update(f"{data.shape}{data.dtype}".encode())
            digest.update(np.ascontiguousarray(data).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.digest()
