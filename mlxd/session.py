"""A session: one client's configuration, its conversation, its work in flight and its events on the way back.

The session turns a client's intents (mlxd/intents.py, whatever the wire format) into jobs for the engine and
keeps the promise of every protocol: each accepted input ends with exactly one terminal event (a completion,
an error, or for a frame that asked, a drop). It is where protocols' different meanings meet:
- a `TextInput` or `ImageInput` asks for its own answer (a frame among them: latest wins in the queue);
  with `history` on, it is a turn of the session's conversation;
- `AddMessages` builds the conversation, `OfferFrame` leaves the newest frame for the next answer, and
  `Respond` asks; it can cut a running answer (barge-in), wait for it, or be refused while one runs;
- audio goes to the voice layer (mlxd/voice/), whose spoken turns come back here to be answered as text turns
  are, and which speaks answers when asked to.
Events reach the client through the Outbox, which any thread may fill without blocking. Everything here runs
on the event loop.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from mlxd import errors
from mlxd.accounting import account
from mlxd.dialogue import Dialogue, Message, user_message
from mlxd.errors import ClientError
from mlxd.events import (
    ConfigUpdated,
    ConversationReset,
    ErrorReport,
    FrameDropped,
    MessageAdded,
    MessageDeleted,
    MessageRetrieved,
    ResponseCompleted,
    ServerEvent,
    StatusReport,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import (
    AddMessages,
    Cancel,
    ConfigUpdate,
    DeleteMessage,
    GetStatus,
    ImageInput,
    Intent,
    Interrupt,
    OfferFrame,
    Reset,
    Respond,
    RetrieveMessage,
    SetInstructions,
    TextInput,
)
from mlxd.media import check_encoded_size
from mlxd.metrics import Metrics
from mlxd.outbox import Outbox
from mlxd.scheduler import Job, QueueFull, WorkQueue
from mlxd.settings import Settings
from mlxd.voice import Voice, VoiceHooks, VoiceIntent
from mlxd.voice.listening import new_item_id

if TYPE_CHECKING:
    from mlxd.audio import AudioModels

log = structlog.get_logger("mlxd.session")
_session_numbers = itertools.count(1)
INTERRUPTED = "interrupted"


class Session:
    def __init__(self, settings: Settings, queue: WorkQueue, metrics: Metrics,
                 engine_status: Callable[[], dict[str, Any]], forget: Callable[[str], None], outbox: Outbox,
                 audio: AudioModels | None = None) -> None:
        self.id = f"s{next(_session_numbers)}"
        self.settings = settings
        self.config = GenerationConfig.from_settings(settings)
        self.queue = queue
        self.metrics = metrics
        self.engine_status = engine_status
        self.forget = forget
        self.outbox = outbox
        self.audio = audio  # the server's audio models, for voice turns
        self.dialogue = Dialogue()
        self.opened = time.monotonic()
        self.messages = self.frames_received = self.frames_dropped = 0
        self._jobs: list[Job] = []
        self._reset_pending = False
        self._pending_turn: list[Message] = []
        self._frame: str | bytes | None = None
        self.voice = Voice(audio, outbox.put, VoiceHooks(self._answer_spoken_turn, self._barge_in,
                                                         self.dialogue.replace_text))

    def handle(self, intent: Intent) -> None:
        """Act on one parsed client intent; refusals go back to the client as error events."""
        try:
            self._dispatch(intent)
        except ClientError as exc:
            self.refuse(exc)

    def _dispatch(self, intent: Intent) -> None:
        if isinstance(intent, (TextInput, ImageInput)):
            self._accept(intent)
        elif isinstance(intent, Respond):
            if intent.out_of_band or not self.voice.after_turns(lambda: self._respond(intent)):
                self._respond(intent)
        elif isinstance(intent, OfferFrame):
            self._offer_frame(intent.data)
        elif isinstance(intent, AddMessages):
            self._add_messages(intent)
        elif isinstance(intent, Interrupt):
            self.voice.interrupt()
            self._cancel_jobs(self._conversation_jobs(), INTERRUPTED)
        elif isinstance(intent, VoiceIntent):
            self.voice.handle(intent)
        elif isinstance(intent, SetInstructions):
            self.dialogue.instructions = intent.text
        elif isinstance(intent, (DeleteMessage, RetrieveMessage)):
            self._message(intent)
        elif isinstance(intent, ConfigUpdate):
            self.config = replace(self.config, **intent.changes)
            self.outbox.put(ConfigUpdated(intent.changes, self.config, intent.request_id))
        elif isinstance(intent, Cancel):
            self._cancel(intent.request_id)
        elif isinstance(intent, GetStatus):
            self.outbox.put(StatusReport(self.status(), intent.request_id))
        elif isinstance(intent, Reset):
            self._reset_pending = True
            self.dialogue.clear()
            self._pending_turn.clear()
            self.outbox.put(ConversationReset(intent.request_id))

    def refuse(self, exc: ClientError, input_type: str | None = None) -> None:
        self.outbox.put(ErrorReport(exc.code, exc.message, exc.request_id, input_type, exc.field))

    def throttle(self, intent: Intent) -> None:
        """Refuse an intent over the connection's rate: a frame is dropped, anything else gets an error."""
        if isinstance(intent, OfferFrame):
            self._frame_received()
            self._count_drop("rate_limited")
            return
        if isinstance(intent, ImageInput) and intent.is_frame:
            self._frame_received()
            self.outbox.put(FrameDropped(intent.request_id, "rate_limited"))
            return
        input_type = {TextInput: "text", ImageInput: "image"}.get(type(intent))
        request_id = getattr(intent, "request_id", None)
        self.refuse(ClientError(errors.RATE_LIMITED, f"over {self.settings.max_messages_per_second:g} messages a "
                                "second; slow down", request_id), input_type)

    def account(self, event: ServerEvent) -> None:
        """Metrics and the per-request log line, as an event goes out to the client."""
        account(self, event)

    def status(self) -> dict[str, Any]:
        requests, frames = self.queue.depths()
        engine = self.engine_status()
        return {
            **engine,
            "queue": {"requests": requests, "frames": frames},
            "session": {"id": self.id, "pending": sum(not job.finished for job in self._jobs)},
        }

    def _engine_ready_for(self, request_id: str | None, images: bool) -> None:
        status = self.engine_status()
        if status["state"] == "failed":
            raise errors.model_unavailable(status["error"], request_id)
        if images and status["state"] == "ready" and "image" not in status["modalities"]:
            raise errors.model_text_only(status["model"], request_id)

    def _check_images(self, messages: tuple[Message, ...] | list[Message], request_id: str | None) -> None:
        images = [image for message in messages for image in message.images]
        self._engine_ready_for(request_id, bool(images))
        for image in images:
            check_encoded_size(image, self.settings.max_image_bytes, request_id)

    # The original protocol: every input asks for its own answer.

    def _accept(self, intent: TextInput | ImageInput) -> None:
        if isinstance(intent, TextInput):
            self._engine_ready_for(intent.request_id, False)
            job = self._job(intent.request_id, "text", False, (user_message(intent.content),), intent.context,
                            self.config.max_tokens, dialogue=self._history())
            self._queue_request(job)
            return
        if intent.is_frame:
            self._frame_received()
        self._engine_ready_for(intent.request_id, True)
        check_encoded_size(intent.data, self.settings.max_image_bytes, intent.request_id)
        job = self._job(intent.request_id, "image", intent.is_frame, (user_message(intent.prompt, [intent.data]),),
                        None, self.config.max_tokens_image, dialogue=self._history())
        if not intent.is_frame:
            self._queue_request(job)
            return
        self._track(job)
        superseded = self.queue.put_frame(job)
        if superseded is not None:
            self._drop_frame(superseded, "superseded")
        self.update_depths()

    def _history(self) -> Dialogue | None:
        return self.dialogue if self.config.history else None

    def _job(self, request_id: str | None, input_type: str, is_frame: bool, turn: tuple[Message, ...],
             instructions: str | None, max_tokens: int, config: GenerationConfig | None = None,
             dialogue: Dialogue | None = None, answer_id: str | None = None) -> Job:
        if self.settings.log_content:
            log.info("request_content", session=self.id, request=request_id,
                     prompt=" ".join(message.text for message in turn), context=instructions)
        job = Job(self.id, request_id, input_type, is_frame, turn, instructions, max_tokens,
                  config or self.config, self.outbox.put, dialogue, answer_id, reset_history=self._reset_pending)
        if not is_frame:
            self.voice.speak_answer(job)
        return job

    # Spoken turns: the voice layer heard one, or heard the user start speaking over an answer.

    def _answer_spoken_turn(self, message: Message, request_id: str | None, respond: bool) -> None:
        """A transcribed turn: in the original protocol it asks as a text_input does; else it is the turn of
        the conversation (with any pending turn and the newest frame), answered as a Respond would be."""
        try:
            if self.voice.settings.standalone_turns:
                self._engine_ready_for(request_id, False)
                self._queue_request(self._job(request_id, "audio", False, (message,), None, self.config.max_tokens,
                                              dialogue=self._history()))
            elif not respond:
                self.dialogue.add([message])
                self.outbox.put(MessageAdded(message, request_id))
            else:
                self._pending_turn.append(message)
                detection = self.voice.settings.turn_detection
                cuts = detection is None or detection.interrupt_response
                self._respond(Respond(request_id or f"resp_{secrets.token_hex(8)}", answer_id=new_item_id(),
                                      when_busy="interrupt" if cuts else "wait"))
        except ClientError as exc:
            self.refuse(exc, "audio")

    def _barge_in(self) -> None:
        """The user started speaking: every answer in flight is cut (its text so far stays)."""
        self._cancel_jobs([job for job in self._jobs if not job.finished and not job.is_frame], INTERRUPTED)

    # The conversation protocols: messages build a conversation, frames are context, a Respond asks.

    def _add_messages(self, intent: AddMessages) -> None:
        self._check_images(intent.messages, intent.request_id)
        if intent.pending:
            self._pending_turn.extend(intent.messages)
            return
        try:
            self.dialogue.add(intent.messages, intent.after)
        except KeyError:
            raise self._not_found(intent.after, intent.request_id) from None
        for message in intent.messages:
            self.outbox.put(MessageAdded(message, intent.request_id))

    def _message(self, intent: DeleteMessage | RetrieveMessage) -> None:
        if isinstance(intent, RetrieveMessage):
            self.outbox.put(MessageRetrieved(self._find(intent.message_id, intent.request_id), intent.request_id))
            return
        try:
            self.dialogue.delete(intent.message_id)
        except KeyError:
            raise self._not_found(intent.message_id, intent.request_id) from None
        self.outbox.put(MessageDeleted(intent.message_id, intent.request_id))

    def _find(self, message: Message | str, request_id: str | None) -> Message:
        """A message, or the conversation's message with that id."""
        if isinstance(message, Message):
            return message
        try:
            return self.dialogue.get(message)
        except KeyError:
            raise self._not_found(message, request_id) from None

    @staticmethod
    def _not_found(message_id: str | None, request_id: str | None) -> ClientError:
        return ClientError(errors.NOT_FOUND, f"no message {message_id!r} in the conversation", request_id)

    def _offer_frame(self, data: str | bytes) -> None:
        self._frame_received()
        self._engine_ready_for(None, True)
        check_encoded_size(data, self.settings.max_image_bytes, None)
        if self._frame is not None:
            self._count_drop("superseded")
        self._frame = data

    def _respond(self, intent: Respond) -> None:
        given = tuple(self._find(message, intent.request_id) for message in intent.input)
        self._engine_ready_for(intent.request_id, self._frame is not None or any(m.images for m in given))
        running = self._conversation_jobs()
        if running and not intent.out_of_band:
            if intent.when_busy == "refuse":
                raise ClientError(errors.ANSWER_IN_PROGRESS, "an answer is already in progress in this "
                                  "conversation", intent.request_id)
            if intent.when_busy == "interrupt":
                self._cancel_jobs(running, INTERRUPTED)
        frame = [user_message(images=[self._frame], message_id=intent.frame_id)] if self._frame is not None else []
        self._frame = None
        config = self.config if intent.temperature is None else replace(self.config, temperature=intent.temperature)
        max_tokens = intent.max_tokens or self.config.max_tokens
        input_type = "image" if frame or any(message.images for message in given) else "text"
        if intent.out_of_band:
            instructions = self.dialogue.instructions if intent.instructions is None else intent.instructions
            job = self._job(intent.request_id, input_type, False, (*frame, *given), instructions,
                            max_tokens, config)
        else:
            turn = (*frame, *self._pending_turn)
            self._pending_turn = []
            if frame and len(turn) == 1:  # nothing to join: the frame is a message of the conversation now
                self.dialogue.add(frame)
                self.outbox.put(MessageAdded(frame[0], intent.request_id))
                turn = ()
            job = self._job(intent.request_id, input_type, False, turn, intent.instructions, max_tokens, config,
                            self.dialogue, intent.answer_id)
        self._queue_request(job)

    def _conversation_jobs(self) -> list[Job]:
        return [job for job in self._jobs if not job.finished and job.dialogue is self.dialogue]

    # Work in flight: queueing, cancelling, closing.

    def _queue_request(self, job: Job) -> None:
        try:
            self.queue.put_request(job)
        except QueueFull as exc:
            raise ClientError(errors.QUEUE_FULL, f"{exc}; the limit is {self.queue.max_pending}",
                              job.request_id) from None
        self._track(job)
        self.update_depths()

    def _track(self, job: Job) -> None:
        """An accepted job: it carries any pending reset of the conversation to the engine."""
        self._reset_pending = False
        self._jobs = [tracked for tracked in self._jobs if not tracked.finished]
        self._jobs.append(job)

    def _frame_received(self) -> None:
        self.frames_received += 1
        self.metrics.frames_received.inc()

    def _count_drop(self, reason: str) -> None:
        """A frame that was context only, dropped: no client message says so, the counters do."""
        self.frames_dropped += 1
        self.metrics.frames_dropped.labels(reason=reason).inc()

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
        return all(job.finished for job in self._jobs) and self.voice.idle()

    def _cancel_jobs(self, jobs: list[Job], reason: str = "cancelled") -> None:
        for job in jobs:
            job.cancel_reason = reason
            if self.queue.remove(self.id, job):
                self._end_unstarted(job)
            else:
                job.cancelled = True
        self.update_depths()

    def _end_unstarted(self, job: Job) -> None:
        if job.is_frame:
            self._drop_frame(job, "cancelled")
        else:
            job.finished = True
            self.outbox.put(ResponseCompleted(job.request_id, job.input_type, "", job.cancel_reason, 0, 0, 0.0, None))

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
        self.voice.close()
        self.forget(self.id)
        self.update_depths()
        log.info("connection_closed", session=self.id, duration=round(time.monotonic() - self.opened, 3),
                 messages=self.messages, frames_received=self.frames_received,
                 frames_dropped=self.frames_dropped)

    def update_depths(self) -> None:
        self.metrics.set_queue_depths(*self.queue.depths())
