"""Real OpenAI-compatible upstream servers for `--engine openai`: mlx-lm's, mlx-vlm's, two ranks, vllm-router.

Each runs in a child process on an ephemeral loopback port with its own Hugging Face home (mlx_lm.server's
/v1/models lists nothing when the cache folder does not exist, so one is made unless a test wants the trap).
`cpu_seconds` reads the process's CPU time, which is how a test sees an upstream go idle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers import REPO, free_port, terminate

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class UpstreamProcess:
    def __init__(self, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.port, self.log_path, self.env = command, port, log_path, env or {}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env})

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL mlxd is given: OpenAI's `/v1`."""
        return f"{self.root}/v1"

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"upstream exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"upstream not healthy within {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chat_requests(self) -> int:
        """Chat-completion requests this upstream has received, from its own access log."""
        return len(re.findall(r"POST /v1/chat/completions HTTP/1\.1\"? 200", self.log_text()))

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def wait_idle(self, timeout: float = 10, window: float = 0.5, max_cpu: float = 0.02) -> float:
        """Seconds until the process spends at most `max_cpu` CPU seconds (2 clock ticks) in `window`; raises
        if it never does. A generating server spends far more even on a crowded machine (~0.1 s per 0.5 s)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = self.cpu_seconds()
            time.sleep(window)
            if self.cpu_seconds() - before <= max_cpu:
                return time.monotonic() - started
        raise TimeoutError(f"upstream still busy after {timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User plus system CPU seconds of a process, all its threads (or of one of them): steadier than wall
    time on a loaded machine."""
    path = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def serving(upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    """A fixture's body: the upstream once healthy, stopped afterwards."""
    try:
        upstream.wait_healthy()
        yield upstream
    finally:
        upstream.stop()


def hf_home(folder: Path, with_cache: bool = True) -> dict[str, str]:
    if with_cache:
        (folder / "hub").mkdir(parents=True, exist_ok=True)
    return {"HF_HOME": str(folder)}


def mlx_lm_server(model: Path, folder: Path, *args: str, port: int | None = None,
                  env: dict[str, str] | None = None) -> UpstreamProcess:
    port = port or free_port()
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), *args]
    return UpstreamProcess(command, port, folder / f"mlx_lm-{port}.log", {**hf_home(folder / "hf"), **(env or {})})


def mlx_vlm_server(model: Path, folder: Path, env: dict[str, str] | None = None) -> UpstreamProcess:
    port = free_port()
    command = [sys.executable, "-m", "mlx_vlm.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port)]
    return UpstreamProcess(command, port, folder / f"mlx_vlm-{port}.log", {**hf_home(folder / "hf"), **(env or {})})


def two_ranks(model: Path, folder: Path) -> list[UpstreamProcess]:
    """mlx_lm.server as two ranks of one tensor-parallel model (ring backend, no launcher); rank 0 serves."""
    hostfile = folder / "hostfile.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    port = free_port()
    return [mlx_lm_server(model, folder / f"rank{rank}", port=port,
                          env={"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}) for rank in (0, 1)]


def vllm_router(workers: list[UpstreamProcess], folder: Path) -> UpstreamProcess:
    """vllm-router over the workers, keeping each X-Session-Id on one of them (consistent hashing)."""
    router = shutil.which("vllm-router", path=os.path.dirname(sys.executable))
    assert router is not None, "vllm-router is not installed (pip install vllm-router)"
    port = free_port()
    command = [router, "--worker-urls", *(worker.root for worker in workers), "--policy", "consistent_hash",
               "--host", "127.0.0.1", "--port", str(port)]
    return UpstreamProcess(command, port, folder / f"router-{port}.log")
