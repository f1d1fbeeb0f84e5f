"""Listening: a session's microphone audio into turns, each transcribed in order.

Audio (already validated) is queued with the client's turn marks and configuration changes, so that all of them
act in the order they came; one task resamples it to 16 kHz, keeps it in a bounded ring and, with server-side
turn detection, feeds it to the session's VAD stream on the audio thread. Without turn detection the client
marks turns (`AudioMark`). A finished turn is its audio from `prefix_padding_ms` before the onset to where the
silence was heard; a second task transcribes turns one after another, so that VAD keeps listening (and can
hear a barge-in) while a turn is being transcribed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import structlog

from mlxd import errors
from mlxd.audio import VadStream
from mlxd.audio.pcm import SPEECH_RATE, pcm16_to_float, resample
from mlxd.errors import ClientError
from mlxd.events import AudioCleared, AudioCommitted, ErrorReport, ServerEvent, SpeechStarted, SpeechStopped
from mlxd.intents import AudioInput, AudioMark, TurnDetection
from mlxd.voice.ring import AudioRing
from mlxd.voice.turns import TurnDetector

log = structlog.get_logger("mlxd.voice")

MAX_TURN_SECONDS = 30
MAX_BACKLOG_SECONDS = 60
MAX_WAITING_TURNS = 4


def new_item_id() -> str:
    return f"item_{secrets.token_hex(8)}"


def milliseconds(sample: int) -> int:
    return sample * 1000 // SPEECH_RATE


@dataclass(frozen=True)
class SpokenTurn:
    """A turn's audio, to be transcribed; `request_id` is that of the chunk (or mark) that ended it."""

    item_id: str
    samples: np.ndarray
    request_id: str | None
    respond: bool


@dataclass(frozen=True)
class _Detection:
    """A change of turn detection, queued in order with the audio."""

    detection: TurnDetection | None


@dataclass(frozen=True)
class _After:
    """Something to do once every turn queued before it is heard and transcribed: a response the client
    asked for just after committing its turn (OpenAI's commit then response.create) answers that turn."""

    action: Callable[[], None]


class Listener:
    def __init__(self, vad_stream: Callable[[], VadStream], transcribe: Callable[[np.ndarray], Awaitable[str]],
                 emit: Callable[[ServerEvent], None], on_speech_start: Callable[[], None],
                 on_transcript: Callable[[SpokenTurn, str], None], detection: TurnDetection | None) -> None:
        self._vad_stream = vad_stream
        self._transcribe = transcribe
        self._emit = emit
        self._on_speech_start = on_speech_start
        self._on_transcript = on_transcript
        self._inbox: deque[AudioInput | AudioMark | _Detection | _After] = deque()
        self._hearing = False  # an item is out of the inbox, being acted on
        self._backlog_samples = 0
        self._turns: deque[SpokenTurn | _After] = deque()
        self._heard = asyncio.Event()
        self._turn_ready = asyncio.Event()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._transcribe_in_turn())]
        self.ring = AudioRing(SPEECH_RATE * (MAX_TURN_SECONDS + 1))
        self._vad: VadStream | None = None
        self._vad_next = 0  # the ring sample where the VAD stream's next window begins
        self._detection: TurnDetection | None = None
        self._detector: TurnDetector | None = None
        self._item_id: str | None = None
        self._turn_start: int | None = None  # where the turn being heard began; None: no turn yet
        self._set_detection(detection)

    def put(self, item: AudioInput | AudioMark) -> None:
        """Queue audio or a mark; raises ClientError when audio arrives faster than it can be listened to."""
        if isinstance(item, AudioInput):
            samples = len(item.pcm) // 2 * SPEECH_RATE // item.sample_rate
            if self._backlog_samples + samples > MAX_BACKLOG_SECONDS * SPEECH_RATE:
                raise ClientError(errors.RATE_LIMITED, f"audio arrives faster than it can be listened to: over "
                                  f"{MAX_BACKLOG_SECONDS} s are waiting", item.request_id)
            self._backlog_samples += samples
        self._inbox.append(item)
        self._heard.set()

    def after_turns(self, action: Callable[[], None]) -> None:
        """Run `action` on the event loop once what is queued so far has been heard and transcribed."""
        self._inbox.append(_After(action))
        self._heard.set()

    def configure(self, detection: TurnDetection | None) -> None:
        if detection != self._detection:
            self._inbox.append(_Detection(detection))
            self._heard.set()

    def idle(self) -> bool:
        return not self._inbox and not self._hearing and not self._turns

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._vad is not None:
            self._vad.close()

    async def _listen(self) -> None:
        while True:
            if not self._inbox:
                self._heard.clear()
                await self._heard.wait()
                continue
            item = self._inbox.popleft()
            self._hearing = True
            try:
                if isinstance(item, AudioInput):
                    await self._hear(item)
                elif isinstance(item, AudioMark):
                    self._mark(item)
                elif isinstance(item, _After):
                    self._turns.append(item)
                    self._turn_ready.set()
                else:
                    self._set_detection(item.detection)
            except ClientError as exc:
                self._emit(ErrorReport(exc.code, exc.message, exc.request_id))
            except Exception as exc:  # a model failed: this chunk is lost, the client is told, listening goes on
                log.warning("listening_failed", error=str(exc))
                self._emit(ErrorReport(errors.INTERNAL, f"listening failed: {exc}",
                                       getattr(item, "request_id", None)))
            finally:
                self._hearing = False

    async def _hear(self, chunk: AudioInput) -> None:
        samples = pcm16_to_float(chunk.pcm)
        self._backlog_samples -= len(chunk.pcm) // 2 * SPEECH_RATE // chunk.sample_rate
        if chunk.sample_rate != SPEECH_RATE:
            samples = resample(samples, chunk.sample_rate, SPEECH_RATE)
        if self._detection is not None and self._vad is None:
            self._vad = self._vad_stream()
            self._detector = TurnDetector(self._detection, self._vad.window, SPEECH_RATE)
            self._vad_next = self.ring.end
        self.ring.append(samples)
        if self._detection is not None:
            await self._detect(samples, chunk.request_id)
        if self._turn_start is not None and self.ring.end - self._turn_start >= MAX_TURN_SECONDS * SPEECH_RATE:
            self._commit(self.ring.end, chunk.request_id)  # the longest turn there may be: answer it
        elif self._turn_start is None:
            self.ring.keep_from(self.ring.end - self._detection_padding() - self._vad.window)

    async def _detect(self, samples: np.ndarray, request_id: str | None) -> None:
        """Feed the chunk to VAD; each window's probability may start or end the turn."""
        assert self._detector is not None and self._detection is not None and self._vad is not None
        for probability in await self._vad.probabilities(samples):
            sample, self._vad_next = self._vad_next, self._vad_next + self._vad.window
            boundary = self._detector.feed(float(probability), sample)
            if boundary is None:
                continue
            if boundary.kind == "start":
                if self._item_id is None:  # not already in a turn the client marked
                    self._start(boundary.sample, boundary.sample - self._detection_padding())
            elif self._turn_start is not None:
                self._emit(SpeechStopped(self._item_id or "", milliseconds(boundary.sample)))
                end = boundary.sample + self._detection.silence_duration_ms * SPEECH_RATE // 1000
                self._commit(min(end, self.ring.end), request_id, self._detection.create_response)

    def _detection_padding(self) -> int:
        assert self._detection is not None
        return self._detection.prefix_padding_ms * SPEECH_RATE // 1000

    def _start(self, onset: int, turn_start: int) -> None:
        self._item_id = new_item_id()
        self._turn_start = max(self.ring.start, turn_start)
        self._emit(SpeechStarted(self._item_id, milliseconds(onset)))
        if self._detection is None or self._detection.interrupt_response:
            self._on_speech_start()

    def _mark(self, mark: AudioMark) -> None:
        speaking = self._item_id is not None
        if mark.kind == "start":
            if not speaking:
                self._start(self.ring.end, self.ring.end)
        elif mark.kind == "clear":
            self._clear()
            self._emit(AudioCleared(mark.request_id))
        elif self._turn_start is not None and (speaking or self.ring.end > self._turn_start):
            if speaking:
                self._emit(SpeechStopped(self._item_id or "", milliseconds(self.ring.end)))
            create = mark.respond and (self._detection.create_response if self._detection is not None else True)
            self._commit(self.ring.end, mark.request_id, create)
        elif mark.kind == "commit":
            raise ClientError(errors.INVALID_FIELD, "commit: no audio is buffered", mark.request_id)

    def _commit(self, end: int, request_id: str | None, respond: bool = True) -> None:
        assert self._turn_start is not None
        item_id = self._item_id or new_item_id()
        samples = self.ring.between(self._turn_start, end)
        self.ring.keep_from(end)
        self._item_id = None
        self._turn_start = None if self._detection is not None else end
        if self._detector is not None:
            self._detector.restart()
        self._emit(AudioCommitted(item_id, request_id))
        if len(self._turns) >= MAX_WAITING_TURNS:
            self._emit(ErrorReport(errors.QUEUE_FULL, f"turn {item_id} was not transcribed: "
                                   f"{MAX_WAITING_TURNS} turns are already waiting", request_id))
            return
        self._turns.append(SpokenTurn(item_id, samples, request_id, respond))
        self._turn_ready.set()

    def _clear(self) -> None:
        self.ring.keep_from(self.ring.end)
        self._item_id = None
        self._turn_start = None if self._detection is not None else self.ring.end
        self._restart_detection()

    def _set_detection(self, detection: TurnDetection | None) -> None:
        self._detection = detection
        self._item_id = None
        self._turn_start = None if detection is not None else self.ring.end
        self._detector = None if detection is None or self._vad is None else \
            TurnDetector(detection, self._vad.window, SPEECH_RATE)
        self._restart_detection()

    def _restart_detection(self) -> None:
        """Speech in progress is forgotten, and so is the VAD's state: it starts afresh at the next sample."""
        if self._detector is not None:
            self._detector.restart()
        if self._vad is not None:
            self._vad.reset()
        self._vad_next = self.ring.end

    async def _transcribe_in_turn(self) -> None:
        while True:
            if not self._turns:
                self._turn_ready.clear()
                await self._turn_ready.wait()
                continue
            turn = self._turns[0]
            if isinstance(turn, _After):
                self._turns.popleft()
                try:
                    turn.action()
                except ClientError as exc:  # as `Session.handle` would have refused it
                    self._emit(ErrorReport(exc.code, exc.message, exc.request_id, field=exc.field))
                continue
            try:
                text = await self._transcribe(turn.samples)
            except Exception as exc:
                log.warning("transcription_failed", item=turn.item_id, error=str(exc))
                self._emit(ErrorReport(errors.INTERNAL, f"transcribing turn {turn.item_id} failed: {exc}",
                                       turn.request_id))
            else:
                self._on_transcript(turn, text.strip())
            finally:
                self._turns.popleft()
