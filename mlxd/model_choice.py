"""Which model to serve, and why (placeholder until the embedded-model policy lands)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MODEL = "mlx-community/gemma-3-4b-it-4bit"


@dataclass(frozen=True)
class ModelChoice:
    name: str
    reason: str


def choose_model(requested: str | None, environ: Mapping[str, str] = os.environ) -> ModelChoice:
    if requested:
        return ModelChoice(requested, "--model")
    if environ.get("MLXD_MODEL"):
        return ModelChoice(environ["MLXD_MODEL"], "MLXD_MODEL environment variable")
    return ModelChoice(DEFAULT_MODEL, "default")


def resolve(name: str) -> str:
    return name
