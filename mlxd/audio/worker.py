"""The audio thread: one thread loads every audio model and makes every call on it.

MLX streams are thread-local (an array made on one thread cannot be evaluated on another), so the models live
on this thread for good. Callers on the event loop submit plain functions through a bounded queue and await a
future that the thread resolves with loop.call_soon_threadsafe; only numpy arrays and bytes cross over.

Urgent calls (voice activity, a few milliseconds each, which turn detection and barge-in wait on) go first,
and also run between the steps of a long call: a function may return a generator, which the thread steps
through (a transcription yields after each encoder block and each token), serving urgent calls in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("mlxd.audio")

T = TypeVar("T")
Job = tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]]
WAKE: Job = (lambda: None, lambda result, error: None)  # only wakes the thread for an urgent call
MAX_JOBS = 64  # audio calls waiting at most; beyond it the caller is told the audio thread is busy


class AudioBusy(RuntimeError):
    """The audio thread's queue is full."""


class WrongThread(RuntimeError):
    """An audio model was called off the audio thread (MLX would fail there, or worse, race)."""


class ThreadGuard:
    """Pins a model wrapper to the thread that built it: every call checks first."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()

    def check(self) -> None:
        if threading.get_ident() != self.owner:
            raise WrongThread(f"audio models run on their own thread only, not on "
                              f"{threading.current_thread().name!r}")


class AudioWorker:
    """A daemon thread serving submitted calls in order from a bounded queue."""

    def __init__(self, max_jobs: int = MAX_JOBS, name: str = "mlxd-audio") -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue(max_jobs)
        self._urgent: queue.Queue[Job] = queue.Queue(max_jobs)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._closed = False

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def call_soon(self, fn: Callable[[], T], done: Callable[[T | None, BaseException | None], None],
                  urgent: bool = False) -> None:
        """Queue `fn`; `done(result, error)` then runs on the audio thread. Raises AudioBusy when full."""
        if self._closed:
            raise AudioBusy("the audio thread has stopped")
        jobs = self._urgent if urgent else self._jobs
        try:
            jobs.put_nowait((fn, done))
        except queue.Full:
            raise AudioBusy(f"the audio thread has {jobs.maxsize} calls waiting already") from None
        if urgent:  # wake the thread if it waits for work; when the queue is full it is busy and will see it
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(WAKE)

    def submit(self, fn: Callable[[], T], urgent: bool = False) -> asyncio.Future[T]:
        """Run `fn` on the audio thread; the returned future (of the running loop) gets its result.

        Cancelling the future before the call starts skips it (a barge-in drops the sentences queued for
        speech); a call already running finishes, and its result is dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> T | None:
            # cancel() sets the state at once (its callbacks wait for the loop's next turn); a read of it
            # from this thread is one attribute, atomic under the GIL.
            return None if future.cancelled() else fn()

        self.call_soon(run, lambda result, error: _resolve(loop, future, result, error), urgent)
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the queued calls; waits at most `timeout` for the thread."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            return
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            log.warning("audio_thread_stuck", waiting=self._jobs.qsize())
            return
        self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            self._serve_urgent()
            if job is None:
                return
            if job is not WAKE:
                self._run(job)

    def _serve_urgent(self) -> None:
        while True:
            try:
                job = self._urgent.get_nowait()
            except queue.Empty:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        fn, done = job
        try:
            result = fn()
            if inspect.isgenerator(result):
                result = self._step_through(result)
        except BaseException as exc:  # reported to the caller; the thread carries on
            done(None, exc)
        else:
            done(result, None)

    def _step_through(self, steps: Generator[None, None, T]) -> T:
        while True:
            try:
                next(steps)
            except StopIteration as finished:
                return finished.value
            self._serve_urgent()


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
             error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # the caller gave up waiting (cancelled)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
