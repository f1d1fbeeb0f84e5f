"""The vision-feature cache as a unit, on the tiny Gemma 3: the same pixels skip the tower, others do not."""

from __future__ import annotations

import mlx.core as mx
import mlx_vlm
import pytest
from PIL import Image

from mlxd.engine.vision_cache import VisionFeatureCache


@pytest.fixture(scope="module")
def tiny(tiny_vision_model):
    return mlx_vlm.load(str(tiny_vision_model))


def embeddings(model, processor, image: Image.Image) -> mx.array:
    from mlx_vlm.utils import prepare_inputs

    prompt = mlx_vlm.apply_chat_template(processor, model.config, "What is this?", num_images=1)
    inputs = prepare_inputs(processor, images=[image], prompts=prompt, image_token_index=model.config.image_token_index)
    features = model.get_input_embeddings(inputs["input_ids"], inputs["pixel_values"], mask=inputs["attention_mask"])
    mx.eval(features.inputs_embeds)
    return features.inputs_embeds


def test_the_same_image_reuses_its_features_and_a_different_one_does_not(tiny):
    model, processor = tiny
    red, blue = Image.new("RGB", (64, 48), (200, 40, 40)), Image.new("RGB", (64, 48), (40, 40, 200))
    cold_red, cold_blue = embeddings(model, processor, red), embeddings(model, processor, blue)
    cache = VisionFeatureCache(size=1)
    assert cache.install(model) and not cache.install(model)
    try:
        assert mx.array_equal(embeddings(model, processor, red), cold_red).item()
        assert mx.array_equal(embeddings(model, processor, red.copy()), cold_red).item()
        assert cache.stats() == {"hits": 1, "misses": 1, "entries": 1}
        assert mx.array_equal(embeddings(model, processor, blue), cold_blue).item()
        assert mx.array_equal(embeddings(model, processor, red), cold_red).item()
        assert cache.stats() == {"hits": 1, "misses": 3, "entries": 1}, "a cache of one keeps only the newest"
        assert model.vision_tower.model_type == model.vision_tower.tower.model_type, "attributes read through"
    finally:
        model.vision_tower = model.vision_tower.tower


def test_a_cache_of_size_zero_or_a_model_without_a_tower_changes_nothing(tiny):
    model, _ = tiny
    assert not VisionFeatureCache(size=0).install(model)
    assert not VisionFeatureCache(size=4).install(model.language_model)
