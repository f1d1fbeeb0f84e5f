"""Attention of one query token on MLX's CPU backend: the same arithmetic as mx.fast's, in fewer products.

On the CPU, `mx.fast.scaled_dot_product_attention` falls back to plain ops. With grouped-query attention it
broadcasts each KV head over the query heads of its group, so a decode step multiplies one query row at a
time by the keys: batch x query heads products of one row. When the query is one token, the group's rows
can be stacked instead: batch x KV heads products of (query heads / KV heads) rows, over the same keys, then
the same mask, softmax and product with the values. With the reference BLAS the output is bit-identical;
with OpenBLAS 0.3.15 it is for groups of up to 3 heads, and larger groups differ in the last bits (~1e-6),
as measured in tests/test_cpu_attention.py. A decode step of SmolLM2 (9 query heads on 3 KV heads) at 8
requests takes ~8% less time on a 2-core x86 machine. Prompts (more than one token), attention sinks,
quantized caches and per-head masks keep mlx-lm's path.

Installed on the module of an mlx-lm model's class (where its attention layers look the function up), only
on the CPU: Metal and CUDA have fused kernels.
"""

from __future__ import annotations

import sys
from typing import Any


def install(model: Any) -> bool:
    """Route the model's single-token attention through `decode_attention`; True if it now is."""
    import mlx.core as mx
    from mlx_lm.models import base

    module = sys.modules[type(model).__module__]
    current = getattr(module, "scaled_dot_product_attention", None)
    if mx.default_device() != mx.cpu or current not in (base.scaled_dot_product_attention, attention):
        return False
    module.scaled_dot_product_attention = attention
    return True


def attention(queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any,
              sinks: Any = None) -> Any:
    """mlx-lm's `scaled_dot_product_attention`, with one query token done by `decode_attention`."""
    from mlx_lm.models import base

    if _decodes_here(queries, cache, mask, sinks):
        return decode_attention(queries, keys, values, scale, mask)
    return base.scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks)


def _decodes_here(queries: Any, cache: Any, mask: Any, sinks: Any) -> bool:
    """One query token, no sinks, a dense cache, and no mask or an array one that broadcasts over the heads."""
    if queries.shape[2] != 1 or sinks is not None or hasattr(cache, "bits") or isinstance(mask, str):
        return False
    return mask is None or mask.ndim < 3 or mask.shape[-3] == 1


def decode_attention(queries: Any, keys: Any, values: Any, scale: float, mask: Any) -> Any:
    """Queries (B, H, 1, D) over keys (B, Hkv, S, D) and values (B, Hkv, S, Dv); a boolean or additive mask
    that broadcasts over the heads, or None."""
    import mlx.core as mx

    batch, heads, _, dim = queries.shape
    kv_heads = keys.shape[1]
    grouped = (mx.array(scale, queries.dtype) * queries).reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = grouped @ keys.swapaxes(-1, -2)
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        else:
            scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ values).reshape(batch, heads, 1, values.shape[-1])
