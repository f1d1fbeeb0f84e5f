"""The model policy: --model, then MLXD_MODEL, then the backend's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxd.engine import embedded, model_choice
from mlxd.engine.model_choice import DEFAULT_GPU_MODEL, ModelChoice, choose_model, resolve


def cpu() -> None:
    return None


def metal() -> str:
    return "metal"


def unasked() -> str:
    raise AssertionError("the backend must not be probed when a model was named")


def test_model_flag_wins() -> None:
    choice = choose_model("org/some-model", {"MLXD_MODEL": "other"}, unasked)
    assert choice == ModelChoice("org/some-model", "--model")


def test_environment_variable_beats_the_default() -> None:
    assert choose_model(None, {"MLXD_MODEL": " smollm2-135m "}, unasked) == ModelChoice(
        "smollm2-135m", "MLXD_MODEL environment variable")


def test_blank_values_count_as_unset() -> None:
    assert choose_model("  ", {"MLXD_MODEL": ""}, metal).name == DEFAULT_GPU_MODEL


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_gpu_default(backend: str) -> None:
    assert choose_model(None, {}, lambda: backend) == ModelChoice(
        DEFAULT_GPU_MODEL, f"default on the GPU backend ({backend})")


def test_cpu_default_is_the_embedded_model() -> None:
    choice = choose_model(None, {}, cpu)
    assert choice.name == embedded.SHORT_NAME == "smollm2-135m"
    assert choice.reason == "default on the CPU backend: embedded model, no download needed"


def test_choice_is_frozen() -> None:
    with pytest.raises(AttributeError):
        choose_model(None, {}, cpu).name = "x"  # type: ignore[misc]


def test_gpu_backend_answers_on_this_machine() -> None:
    assert model_choice.gpu_backend() in {None, "metal", "cuda"}


def test_resolve_passes_other_names_through() -> None:
    assert resolve("mlx-community/gemma-3-4b-it-4bit") == "mlx-community/gemma-3-4b-it-4bit"
    assert resolve("/models/local") == "/models/local"


def test_resolve_converts_the_embedded_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded, "model_folder", lambda cache_root=None: tmp_path / "ready")
    assert resolve(embedded.SHORT_NAME) == str(tmp_path / "ready")
