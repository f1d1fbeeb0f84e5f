"""What every engine offers the server, whichever runs behind the WorkQueue.

The server starts and stops an engine, asks its status (for /healthz, /readyz and `get_status`), and tells
it when a session is gone; sessions only put jobs in the WorkQueue and never know which engine takes them.
"""

from __future__ import annotations

from typing import Protocol

from mlxd.scheduler import Job

LOADING, READY, FAILED, STOPPED, UNAVAILABLE = "loading", "ready", "failed", "stopped", "unavailable"


class Engine(Protocol):
    def start(self) -> None:
        """Begin taking work (the model loads, or the upstream is probed, in the background)."""

    def stop(self, timeout: float = 5.0) -> list[Job]:
        """Stop taking work, cancel what runs, and return the jobs that never started."""

    def status(self) -> dict[str, object]:
        """model, model_reason, state, modalities, error, load_seconds."""

    def forget(self, session_id: str) -> None:
        """The session is gone: drop what the engine keeps for it (callable from any thread)."""

    @property
    def busy(self) -> bool:
        """Still running after `stop` (it did not finish in time)."""
