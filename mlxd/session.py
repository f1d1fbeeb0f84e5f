"""A session: one client's configuration, its work in flight, and the events on their way back to it.

The session turns parsed client messages into jobs for the engine and keeps the promise of the protocol:
every accepted input ends with exactly one terminal event (a completion, an error, or for frames a
drop). Events reach the client through an Outbox that any thread may fill without blocking; the
connection's writer drains it on the event loop. Accounting (metrics, one log line per request) happens
here, on the event loop, as the events go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import (
    TERMINAL_EVENTS,
    ConfigUpdated,
    ConversationReset,
    ErrorReport,
    FrameDropped,
    ResponseCompleted,
    ServerEvent,
    StatusReport,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.media import check_encoded_size
from mlxd.metrics import Metrics
from mlxd.protocols.mlxws import Cancel, ClientMessage, ConfigUpdate, GetStatus, ImageInput, Reset, TextInput
from mlxd.scheduler import Job, QueueFull, WorkQueue
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.session")
_session_numbers = itertools.count(1)


class Outbox:
    """Events for one client: `put` from any thread never blocks, `take` awaits a batch on the loop.

    The loop is woken once per batch, not once per token: while the writer is busy sending, tokens of a
    response pile up here merged into one (the text the client assembles is unchanged) and go out together.
    Past `limit` waiting events the client is not reading: the outbox marks itself overflowed and discards
    from then on (the connection is ended), so memory stays bounded.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int | None = None) -> None:
        self._loop = loop
        self._limit = limit
        self._items: deque[ServerEvent] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self.overflowed = False

    def put(self, event: ServerEvent) -> None:
        with self._lock:
            if self.overflowed:
                return
            last = self._items[-1] if self._items else None
            if isinstance(event, TokenText) and isinstance(last, TokenText) and last.request_id == event.request_id:
                self._items[-1] = TokenText(event.request_id, last.text + event.text)
                return
            if self._limit is not None and len(self._items) >= self._limit:
                self.overflowed = True
                return
            self._items.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to send to
            self._loop.call_soon_threadsafe(self._ready.set)

    def empty(self) -> bool:
        with self._lock:
            return not self._items

    async def take(self) -> list[ServerEvent]:
        await self._ready.wait()
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._wake_pending = False
            self._ready.clear()
        return items


class Session:
    def __init__(self, settings: Settings, queue: WorkQueue, metrics: Metrics,
                 engine_status: Callable[[], dict[str, Any]], forget: Callable[[str], None], outbox: Outbox) -> None:
        self.id = f"s{next(_session_numbers)}"
        self.settings = settings
        self.config = GenerationConfig.from_settings(settings)
        self.queue = queue
        self.metrics = metrics
        self.engine_status = engine_status
        self.forget = forget
        self.outbox = outbox
        self.opened = time.monotonic()
        self.messages = self.frames_received = self.frames_dropped = 0
        self._jobs: list[Job] = []
        self._reset_pending = False

    def handle(self, message: ClientMessage) -> None:
        """Act on one parsed client message; refusals go back to the client as error events."""
        try:
            if isinstance(message, (TextInput, ImageInput)):
                self._accept(message)
            elif isinstance(message, ConfigUpdate):
                self.config = replace(self.config, **message.changes)
                self.outbox.put(ConfigUpdated(message.changes, self.config, message.request_id))
            elif isinstance(message, Cancel):
                self._cancel(message.request_id)
            elif isinstance(message, GetStatus):
                self.outbox.put(StatusReport(self.status(), message.request_id))
            elif isinstance(message, Reset):
                self._reset_pending = True
                self.outbox.put(ConversationReset(message.request_id))
        except ClientError as exc:
            self.refuse(exc)

    def refuse(self, exc: ClientError, input_type: str | None = None) -> None:
        self.outbox.put(ErrorReport(exc.code, exc.message, exc.request_id, input_type))

    def throttle(self, message: ClientMessage) -> None:
        """Refuse a message over the connection's rate: a frame is dropped, anything else gets an error."""
        if isinstance(message, ImageInput) and message.is_frame:
            self._frame_received()
            self.outbox.put(FrameDropped(message.request_id, "rate_limited"))
            return
        input_type = {TextInput: "text", ImageInput: "image"}.get(type(message))
        self.refuse(ClientError(errors.RATE_LIMITED, f"over {self.settings.max_messages_per_second:g} messages a "
                                "second; slow down", message.request_id), input_type)

    def _frame_received(self) -> None:
        self.frames_received += 1
        self.metrics.frames_received.inc()

    def status(self) -> dict[str, Any]:
        requests, frames = self.queue.depths()
        engine = self.engine_status()
        return {
            **engine,
            "queue": {"requests": requests, "frames": frames},
            "session": {"id": self.id, "pending": sum(not job.finished for job in self._jobs)},
        }

    def _accept(self, message: TextInput | ImageInput) -> None:
        status = self.engine_status()
        if status["state"] == "failed":
            raise errors.model_unavailable(status["error"], message.request_id)
        if isinstance(message, TextInput):
            job = self._job(message.request_id, "text", False, message.content, message.context, None,
                            self.config.max_tokens)
            self._queue_request(job)
            return
        if message.is_frame:
            self._frame_received()
        if status["state"] == "ready" and "image" not in status["modalities"]:
            raise errors.model_text_only(status["model"], message.request_id)
        check_encoded_size(message.data, self.settings.max_image_bytes, message.request_id)
        job = self._job(message.request_id, "image", message.is_frame, message.prompt, None, message.data,
                        self.config.max_tokens_image)
        if not message.is_frame:
            self._queue_request(job)
            return
        self._track(job)
        superseded = self.queue.put_frame(job)
        if superseded is not None:
            self._drop_frame(superseded, "superseded")
        self._update_depths()

    def _job(self, request_id: str | None, input_type: str, is_frame: bool, prompt: str, context: str | None,
             image_data: str | bytes | None, max_tokens: int) -> Job:
        if self.settings.log_content:
            log.info("request_content", session=self.id, request=request_id, prompt=prompt, context=context)
        return Job(self.id, request_id, input_type, is_frame, prompt, context, image_data, max_tokens,
                   self.config, self.outbox.put, reset_history=self._reset_pending)

    def _queue_request(self, job: Job) -> None:
        try:
            self.queue.put_request(job)
        except QueueFull as exc:
            raise ClientError(errors.QUEUE_FULL, f"{exc}; the limit is {self.queue.max_pending}",
                              job.request_id) from None
        self._track(job)
        self._update_depths()

    def _track(self, job: Job) -> None:
        """An accepted job: it carries any pending reset of the conversation to the engine."""
        self._reset_pending = False
        self._jobs = [tracked for tracked in self._jobs if not tracked.finished]
        self._jobs.append(job)

    def _drop_frame(self, job: Job, reason: str) -> None:
        job.finished = True
        self.outbox.put(FrameDropped(job.request_id, reason))

    def _cancel(self, request_id: str | None) -> None:
        in_flight = [job for job in self._jobs if not job.finished]
        if request_id is None:
            targets = [job for job in in_flight if job.started]
        else:
            targets = [job for job in in_flight if job.request_id == request_id]
        if not targets:
            what = "nothing is running" if request_id is None else f"no request {request_id!r} is in flight"
            raise ClientError(errors.NOT_FOUND, f"cancel: {what}", request_id)
        self._cancel_jobs(targets)

    def cancel_all(self) -> None:
        """End everything in flight with `cancelled` (the server is shutting down)."""
        self._cancel_jobs([job for job in self._jobs if not job.finished])

    def idle(self) -> bool:
        return all(job.finished for job in self._jobs)

    def _cancel_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            if self.queue.remove(self.id, job):
                self._end_unstarted(job)
            else:
                job.cancelled = True
        self._update_depths()

    def _end_unstarted(self, job: Job) -> None:
        if job.is_frame:
            self._drop_frame(job, "cancelled")
        else:
            job.finished = True
            self.outbox.put(ResponseCompleted(job.request_id, job.input_type, "", "cancelled", 0, 0, 0.0, None))

    def close(self) -> None:
        """The client is gone: take back waiting work and stop the running job within one token."""
        waiting = self.queue.forget(self.id)
        for job in waiting:
            job.finished = True
        running = [job for job in self._jobs if not job.finished]
        for job in running:
            job.cancelled = True
        for job in [*waiting, *running]:  # their ends go to an outbox nobody drains any more
            self.metrics.requests.labels(input_type=job.input_type, outcome="cancelled").inc()
        self.forget(self.id)
        self._update_depths()
        log.info("connection_closed", session=self.id, duration=round(time.monotonic() - self.opened, 3),
                 messages=self.messages, frames_received=self.frames_received,
                 frames_dropped=self.frames_dropped)

    def _update_depths(self) -> None:
        self.metrics.set_queue_depths(*self.queue.depths())

    def account(self, event: ServerEvent) -> None:
        """Metrics and the per-request log line, as an event goes out to the client."""
        metrics = self.metrics
        if isinstance(event, TERMINAL_EVENTS):
            self._update_depths()
        if isinstance(event, ResponseCompleted):
            metrics.requests.labels(input_type=event.input_type, outcome=event.finish_reason).inc()
            metrics.prompt_tokens.inc(event.prompt_tokens)
            metrics.generated_tokens.inc(event.completion_tokens)
            metrics.inference.observe(event.inference_time)
            tokens_per_second = None
            if event.time_to_first_token is not None:
                metrics.time_to_first_token.observe(event.time_to_first_token)
                decode_seconds = event.inference_time - event.time_to_first_token
                if event.completion_tokens > 1 and decode_seconds > 0:
                    tokens_per_second = round((event.completion_tokens - 1) / decode_seconds, 2)
                    metrics.tokens_per_second.set(tokens_per_second)
                    metrics.decode_rate.observe(tokens_per_second)
            content = {"text": event.full_text} if self.settings.log_content else {}
            log.info("request_finished", session=self.id, request=event.request_id, input_type=event.input_type,
                     prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                     time_to_first_token=event.time_to_first_token, inference_time=round(event.inference_time, 4),
                     tokens_per_second=tokens_per_second, finish_reason=event.finish_reason,
                     text_chars=len(event.full_text), **content)
        elif isinstance(event, FrameDropped):
            self.frames_dropped += 1
            metrics.frames_dropped.labels(reason=event.reason).inc()
        elif isinstance(event, ErrorReport):
            metrics.errors.labels(code=event.code).inc()
            if event.input_type is not None:
                metrics.requests.labels(input_type=event.input_type, outcome="error").inc()
            log.info("request_error", session=self.id, request=event.request_id, code=event.code,
                     error=event.message)
