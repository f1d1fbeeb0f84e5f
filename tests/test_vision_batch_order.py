"""The vision batch admits requests in the order they came: mlx-vlm's generator admits the shortest prompt it
holds first, and under a steady flow of short prompts a long one waited as long as they kept coming (found by
scripts/fuzz.py under load: a frame with a 159-token prompt got its first token after 67 s while short
questions were answered in seconds). mlxd hands the generator one prompt batch at a time, oldest first
(mlxd/engine/vision_prefill.py)."""

from __future__ import annotations

from pathlib import Path

from mlxd.dialogue import user_message
from mlxd.engine.batching import VisionBatch
from mlxd.engine.models import load_model
from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.vision_cache import VisionFeatureCache
from mlxd.generation import GenerationConfig

CONFIG = GenerationConfig(temperature=0.0)


def first_tokens(batch: VisionBatch, expected: int, steps: int = 200) -> list[int]:
    """The requests' keys in the order their first tokens came."""
    order: list[int] = []
    for _ in range(steps):
        order += [key for key, _ in batch.step() if key not in order]
        if len(order) == expected:
            break
    return order


def test_a_long_prompt_is_not_overtaken_by_shorter_ones_that_came_after_it(tiny_vision_model: Path) -> None:
    model = load_model("tiny-gemma3", tiny_vision_model)
    cache = VisionFeatureCache(4)
    cache.install(model.model)
    batch = VisionBatch(model, capacity=8, prefix_cache=PrefixCache(0), vision_cache=cache)
    long = batch.add([user_message("describe it all " * 40)], None, [], 2, CONFIG, None)
    shorter = [batch.add([user_message("hi")], None, [], 2, CONFIG, None) for _ in range(3)]
    assert first_tokens(batch, 4) == [long, *shorter]


def test_a_request_cancelled_while_it_waits_never_reaches_the_generator(tiny_vision_model: Path) -> None:
    model = load_model("tiny-gemma3", tiny_vision_model)
    cache = VisionFeatureCache(4)
    cache.install(model.model)
    batch = VisionBatch(model, capacity=8, prefix_cache=PrefixCache(0), vision_cache=cache)
    first, cancelled, last = (batch.add([user_message(text)], None, [], 2, CONFIG, None) for text in "abc")
    batch.remove(cancelled)
    assert len(batch) == 2
    assert first_tokens(batch, 2) == [first, last]
