"""Fixtures: tiny real models and real `mlxd serve` processes, shared where that is safe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlxd.engine.blas import use_fast_blas

use_fast_blas()  # before MLX is imported: in-process reference runs must do the server's arithmetic

from tests.helpers import ServerProcess  # noqa: E402
from tests.tiny_models import build_text_model, build_vision_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vision_model(tmp_path_factory.mktemp("models") / "tiny-gemma3")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Start a server with extra options; every server started is stopped at the end of the test."""
    servers: list[ServerProcess] = []

    def start(model: Path | str | None, *args: str, wait: str | None = "ready", env: dict[str, str] | None = None,
              **options):
        server = ServerProcess(model, *args, log_path=tmp_path / f"server{len(servers)}.log", env=env, **options)
        servers.append(server)
        if wait:
            server.wait_state(wait)
        return server

    yield start
    for server in servers:
        server.stop()


def _module_server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(model, log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        server.wait_state("ready")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def text_server(tiny_text_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _module_server(tiny_text_model, tmp_path_factory)


@pytest.fixture(scope="module")
def vision_server(tiny_vision_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _module_server(tiny_vision_model, tmp_path_factory)


