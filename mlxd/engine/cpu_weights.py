"""Float32 weights laid out for matrix products on MLX's CPU backend: every Linear keeps its weight transposed.

`nn.Linear` stores its weight as (out, in) and computes `x @ weight.T`; MLX hands the BLAS the weight as a
transposed operand. With the OpenBLAS mlxd loads on Linux (0.3.15, Zen kernels), the same product on an
(in, out) copy is much faster at decode shapes: SmolLM2's tied output head at 8 rows 30 -> 20 ms, at one row
22 -> 11 ms, and a whole decode step ~9% faster (1, 4 and 8 rows), with bit-identical logits; a prompt's
prefill (hundreds of rows) takes the same time either way. Only with OpenBLAS, where that was measured: the
reference BLAS rounds the two ways differently. The copy replaces the original, so a Linear holds
as many bytes as before. A tied output head (`Embedding.as_linear`) needs the rows for lookups too: its
transposed copy is made on first use, so it costs the embedding's size once more, only in models that use
it. Quantized layers, other dtypes, Metal and CUDA are not touched.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.engine.blas import openblas_in_use


class TransposedLinear(nn.Module):
    """`nn.Linear`'s output, computed from an (in, out) weight; `weight` still reads as (out, in)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = mx.contiguous(linear.weight.T)
        if "bias" in linear:
            self.bias = linear.bias

    @property
    def weight(self) -> mx.array:
        return self.weight_t.T

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self:
            return mx.addmm(self.bias, x, self.weight_t)
        return x @ self.weight_t


class EmbeddingWithHead(nn.Embedding):
    """An embedding whose use as the output head (`as_linear`) multiplies by a transposed copy, made once."""

    def __init__(self, embedding: nn.Embedding) -> None:
        nn.Module.__init__(self)  # not nn.Embedding's: it would draw a random weight only to drop it
        self.weight = embedding.weight

    def as_linear(self, x: mx.array) -> mx.array:
        if "weight_t" not in self:
            self.weight_t = mx.contiguous(self.weight.T)
        return x @ self.weight_t


def install(model: nn.Module) -> int:
    """Swap the model's float32 Linear and Embedding layers for the ones above, on the CPU with OpenBLAS only;
    returns how many were swapped (0 elsewhere, and on a second call)."""
    if mx.default_device() != mx.cpu or not openblas_in_use():
        return 0
    swapped: dict[int, tuple[nn.Module, nn.Module]] = {}  # id -> (layer, its replacement)
    for parent in model.modules():
        for key, child in list(parent.items()):
            if isinstance(child, list):
                child[:] = [_swap(item, swapped) for item in child]
            else:
                parent[key] = _swap(child, swapped)
    mx.eval(model.parameters())
    return len(swapped)


def _swap(layer: Any, swapped: dict[int, tuple[nn.Module, nn.Module]]) -> Any:
    """The replacement of one layer (the same one for a layer shared by several parents), or the layer."""
    if id(layer) in swapped:
        return swapped[id(layer)][1]
    kind = {nn.Linear: TransposedLinear, nn.Embedding: EmbeddingWithHead}.get(type(layer))
    if kind is None or layer.weight.dtype != mx.float32:
        return layer
    swapped[id(layer)] = (layer, kind(layer))
    return swapped[id(layer)][1]
