"""The queue-and-lock between sessions (event loop) and the engine (its own thread).

Each session has a lane: a bounded FIFO of text and image requests, which are never dropped, and one
slot for a frame, where a newer frame replaces the waiting one (latest frame wins). The engine takes
work from the lane served least recently (round-robin, with a newcomer first in line), so a session
streaming frames cannot starve another session's question. Within a lane, work runs in arrival order and
one job at a time: a lane is busy from `take` until `done`, so a conversation's turns never overlap while
different sessions share the engine's batch. A thread takes work with `take`; an event loop with `take_async`,
which is woken through the loop instead of blocking it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mlxd.dialogue import Dialogue, Message
from mlxd.events import ServerEvent
from mlxd.generation import GenerationConfig


@dataclass(eq=False)
class Job:
    """One accepted input, from acceptance to its single terminal event.

    It prompts with `instructions` (the system turn) and `turn`; with a `dialogue`, the turn is committed into
    that conversation when the job starts and the whole conversation is the prompt, and the answer is recorded
    into it as `answer_id` when the job ends. `cancel_reason` is the finish reason a cancel ends it with.
    """

    session_id: str
    request_id: str | None
    input_type: str
    is_frame: bool
    turn: tuple[Message, ...]
    instructions: str | None
    max_tokens: int
    config: GenerationConfig
    emit: Callable[[ServerEvent], None]
    dialogue: Dialogue | None = None
    answer_id: str | None = None
    reset_history: bool = False
    cancel_reason: str = "cancelled"
    received_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    started: bool = False
    finished: bool = False
    sequence: int = 0

    @property
    def prompt_instructions(self) -> str | None:
        """The system turn: the job's own instructions, else its conversation's."""
        if self.instructions is not None or self.dialogue is None:
            return self.instructions
        return self.dialogue.instructions

    def record_answer(self, text: str, finish_reason: str, generation: int | None) -> None:
        """A conversation keeps the answer of a job that started, or what was generated of it before a cut."""
        if self.dialogue is not None and generation is not None and (text or finish_reason in ("stop", "length")):
            self.dialogue.record_answer(text, self.answer_id, generation)


class QueueFull(Exception):
    pass


@dataclass
class _Lane:
    requests: deque[Job] = field(default_factory=deque)
    frame: Job | None = None
    last_served: int = -1
    busy: bool = False

    def pop_oldest(self) -> Job | None:
        if self.frame is not None and (not self.requests or self.frame.sequence < self.requests[0].sequence):
            job, self.frame = self.frame, None
            return job
        return self.requests.popleft() if self.requests else None

    def __bool__(self) -> bool:
        return bool(self.requests) or self.frame is not None

    @property
    def ready(self) -> bool:
        return bool(self) and not self.busy


class WorkQueue:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._ready = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._sequence = itertools.count()
        self._closed = False
        self._async_waiters: set[Callable[[], None]] = set()

    def _notify(self) -> None:
        """Work may be ready (or the queue closed): wake a waiting thread and every waiting event loop."""
        self._ready.notify()
        for wake in self._async_waiters:
            wake()

    def put_request(self, job: Job) -> None:
        """Queue a text or image request; raises QueueFull past the session's bound."""
        with self._ready:
            lane = self._lanes.setdefault(job.session_id, _Lane())
            if len(lane.requests) >= self.max_pending:
                raise QueueFull(f"{len(lane.requests)} requests are already waiting in this session")
            job.sequence = next(self._sequence)
            lane.requests.append(job)
            self._notify()

    def put_frame(self, job: Job) -> Job | None:
        """Make this the session's waiting frame; returns the frame it superseded, if any."""
        with self._ready:
            lane = self._lanes.setdefault(job.session_id, _Lane())
            superseded, lane.frame = lane.frame, job
            job.sequence = next(self._sequence)
            self._notify()
            return superseded

    def take(self, timeout: float | None = None) -> Job | None:
        """The next job, fairly across sessions; None once closed or after the timeout."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._closed or any(lane.ready for lane in self._lanes.values()),
                                        timeout):
                return None
            if self._closed:
                return None
            lane = min((lane for lane in self._lanes.values() if lane.ready), key=lambda lane: lane.last_served)
            lane.last_served = next(self._sequence)
            lane.busy = True
            job = lane.pop_oldest()
            assert job is not None
            job.started = True
            return job

    async def take_async(self) -> Job | None:
        """`take` for a consumer on an event loop: awaits the next job without blocking the loop."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        with self._ready:
            self._async_waiters.add(wake_up)
        try:
            while True:
                wake.clear()
                job = self.take(timeout=0)
                if job is not None or self._closed:
                    return job
                await wake.wait()
        finally:
            with self._ready:
                self._async_waiters.discard(wake_up)

    def done(self, job: Job) -> None:
        """The job has ended: its session may run the next one."""
        with self._ready:
            lane = self._lanes.get(job.session_id)
            if lane is not None:
                lane.busy = False
                self._notify()

    def remove(self, session_id: str, job: Job | None = None) -> list[Job]:
        """Take back a session's waiting work (one job, or all of it) before the engine starts it."""
        with self._ready:
            lane = self._lanes.get(session_id)
            if lane is None:
                return []
            waiting = list(lane.requests) + ([lane.frame] if lane.frame is not None else [])
            removed = [j for j in waiting if job is None or j is job]
            lane.requests = deque(j for j in lane.requests if j not in removed)
            if lane.frame in removed:
                lane.frame = None
            return removed

    def forget(self, session_id: str) -> list[Job]:
        """The session is gone: drop its lane, returning the work that was still waiting."""
        removed = self.remove(session_id)
        with self._ready:
            self._lanes.pop(session_id, None)
        return removed

    def depths(self) -> tuple[int, int]:
        """Waiting (requests, frames) across all sessions."""
        with self._ready:
            lanes = list(self._lanes.values())
            return sum(len(lane.requests) for lane in lanes), sum(lane.frame is not None for lane in lanes)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> list[Job]:
        """Stop handing out work; returns everything still waiting so it can be ended."""
        with self._ready:
            self._closed = True
            waiting = [j for lane in self._lanes.values() for j in
                       [*lane.requests, *([lane.frame] if lane.frame is not None else [])]]
            self._lanes.clear()
            self._ready.notify_all()
            self._notify()
            return waiting
