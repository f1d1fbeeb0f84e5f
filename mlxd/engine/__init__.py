"""Behind the WorkQueue: what turns a job into tokens.

Two engines offer the same interface (base.py): `local`, the engine thread that owns an MLX model (local.py,
with its parts: model loading, batching, conversations' caches, the embedded default model, the BLAS), and
`openai`, a client of an OpenAI-compatible chat-completions server (upstream.py). Importing this package loads
no MLX; the local engine's modules are imported only when it is the one chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time these would import MLX, which must come after engine.blas has loaded the BLAS
    from mlxd.engine.base import Engine
    from mlxd.metrics import Metrics
    from mlxd.scheduler import WorkQueue
    from mlxd.settings import Settings


def create_engine(settings: Settings, metrics: Metrics, queue: WorkQueue, upstream_token: str | None = None) -> Engine:
    """The engine `--engine` names."""
    if settings.engine == "openai":
        from mlxd.engine.upstream import UpstreamEngine

        return UpstreamEngine(settings, metrics, queue, upstream_token)
    from mlxd.engine.local import Engine as LocalEngine
    from mlxd.engine.model_choice import choose_model

    return LocalEngine(choose_model(settings.model), settings, metrics, queue)
