"""Single-token attention on the CPU (mlxd/engine/cpu_attention.py) gives mx.fast's output: bit for bit for
groups of up to 3 query heads per KV head; with OpenBLAS, larger groups differ in the last bits (~1e-6)."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.models import base
from mlx_lm.models.cache import BatchKVCache

from mlxd.engine import cpu_attention

pytestmark = pytest.mark.skipif(mx.default_device() != mx.cpu, reason="installed on the CPU only")


def fast(queries, keys, values, scale, mask):
    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)


@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (4, 4), (8, 1)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_the_output_is_bit_identical_to_mx_fast(heads, kv_heads, mask_kind):
    mx.random.seed(0)
    batch, length, dim = 3, 37, 16
    buffer = mx.random.normal((2, batch, kv_heads, 64, dim))
    keys, values = buffer[0, :, :, :length], buffer[1, :, :, :length]  # views into a longer cache, as in mlx-lm
    queries = mx.random.normal((batch, heads, 1, dim))
    mask = {None: None,
            "bool": mx.arange(length)[None, None, None] >= mx.array([0, 5, 11])[:, None, None, None],
            "additive": mx.random.normal((batch, 1, 1, length))}[mask_kind]
    ours = cpu_attention.decode_attention(queries, keys, values, 0.25, mask)
    assert ours.shape == queries.shape
    theirs = fast(queries, keys, values, 0.25, mask)
    if heads // kv_heads <= 3:
        assert mx.array_equal(ours, theirs).item()
    else:
        assert mx.allclose(ours, theirs, rtol=1e-5, atol=1e-5).item()


def test_values_may_be_wider_than_keys():
    queries, keys = mx.random.normal((2, 6, 1, 8)), mx.random.normal((2, 2, 9, 8))
    values = mx.random.normal((2, 2, 9, 12))
    assert mx.array_equal(cpu_attention.decode_attention(queries, keys, values, 0.3, None),
                          fast(queries, keys, values, 0.3, None)).item()


def test_prompts_and_per_head_masks_keep_mlx_lms_path():
    queries, keys = mx.random.normal((1, 4, 5, 8)), mx.random.normal((1, 2, 5, 8))
    assert mx.array_equal(cpu_attention.attention(queries, keys, keys, None, 0.5, "causal"),
                          base.scaled_dot_product_attention(queries, keys, keys, None, 0.5, "causal")).item()
    one, mask = queries[:, :, :1], mx.random.normal((1, 4, 1, 5))
    assert mx.array_equal(cpu_attention.attention(one, keys, keys, None, 0.5, mask),
                          fast(one, keys, keys, 0.5, mask)).item()


def test_a_batched_decode_of_a_real_model_is_unchanged(tiny_text_model, monkeypatch):
    model, _ = mlx_lm.load(str(tiny_text_model))
    module = type(model).__module__
    monkeypatch.setattr(f"{module}.scaled_dot_product_attention", base.scaled_dot_product_attention)
    prompts = mx.array([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])

    def decode() -> list[mx.array]:
        cache = [BatchKVCache([2, 0]) for _ in model.layers]
        model(prompts, cache=cache)
        steps = [model(mx.array([[9], [10]]), cache=cache) for _ in range(3)]
        mx.eval(steps)
        return steps

    before = decode()
    assert cpu_attention.install(model)
    assert cpu_attention.install(model)  # idempotent
    after = decode()
    assert all(mx.array_equal(a, b).item() for a, b in zip(before, after, strict=True))
