"""Transposed float32 weights on the CPU (mlxd/engine/cpu_weights.py): the same outputs as mlx-lm's and
mlx-vlm's layers, bit for bit, from the same number of bytes."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import mlx_vlm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import BatchKVCache
from mlx_lm.sample_utils import make_sampler
from PIL import Image

from mlxd.engine import cpu_weights
from mlxd.engine.blas import openblas_in_use

pytestmark = pytest.mark.skipif(mx.default_device() != mx.cpu or not openblas_in_use(),
                                reason="installed on the CPU with OpenBLAS only")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 8, 300])
def test_a_transposed_linear_gives_the_linears_output(bias, rows):
    mx.random.seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    ours = cpu_weights.TransposedLinear(linear)
    x = mx.random.normal((2, rows, 96))
    assert mx.array_equal(ours(x), linear(x)).item()
    assert ours.weight.shape == linear.weight.shape and mx.array_equal(ours.weight, linear.weight).item()


def test_quantized_and_half_precision_layers_are_left_alone():
    half = nn.Linear(64, 64)
    half.set_dtype(mx.float16)
    model = nn.Sequential(nn.QuantizedLinear(64, 64), half, nn.Linear(64, 64))
    assert cpu_weights.install(model) == 1
    assert [type(layer) for layer in model.layers] == [nn.QuantizedLinear, nn.Linear, cpu_weights.TransposedLinear]


def test_a_layer_shared_by_two_parents_stays_shared():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, shared)
    assert cpu_weights.install(model) == 1
    assert model.layers[0] is model.layers[1]


def test_a_batched_decode_of_a_real_model_is_unchanged(tiny_text_model):
    model, _ = mlx_lm.load(str(tiny_text_model))
    bytes_before = sum(value.nbytes for _, value in tree_flatten(model.parameters()))
    prompts = mx.array([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])

    def decode() -> list[mx.array]:
        cache = [BatchKVCache([2, 0]) for _ in model.layers]
        steps = [model(prompts, cache=cache)] + [model(mx.array([[9], [10]]), cache=cache) for _ in range(3)]
        mx.eval(steps)
        return steps

    before = decode()
    swapped = cpu_weights.install(model)
    assert swapped == 1 + 7 * len(model.layers), "the embedding and every projection"
    assert cpu_weights.install(model) == 0
    assert sum(value.nbytes for _, value in tree_flatten(model.parameters())) == bytes_before
    after = decode()
    assert all(mx.array_equal(a, b).item() for a, b in zip(before, after, strict=True))
    head = model.model.embed_tokens
    assert head.weight_t.shape == head.weight.shape[::-1], "the tied head multiplies by its transposed copy"


def test_a_vision_models_greedy_answer_is_unchanged(tiny_vision_model):
    model, processor = mlx_vlm.load(str(tiny_vision_model))
    prompt = mlx_vlm.apply_chat_template(processor, model.config, "What is this?", num_images=1)
    image = Image.new("RGB", (64, 48), (200, 40, 40))

    def answer() -> list[int]:
        return [result.token for result in mlx_vlm.stream_generate(
            model, processor, prompt, image=[image], max_tokens=12, sampler=make_sampler(0.0))]

    before = answer()
    assert cpu_weights.install(model) > 0
    assert answer() == before
