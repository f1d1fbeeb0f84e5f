"""Spoken answers: a job's events are tapped, each complete sentence is spoken, and the audio streams out.

Tokens go to the client as always; on the engine thread the tap also cuts them into sentences and hands each
complete one to the event loop, where one task per session speaks them in order (on the audio thread, through
`AudioModels.speak`) and sends the audio in chunks while later tokens are still being generated. An answer's
terminal event is held until its audio is out, so that every `AudioOut` of an answer comes before its
`ResponseCompleted`. Answers are spoken one after another, as the session's lane runs them.

Barge-in drops whatever is not yet spoken, ends the answer `interrupted` and leaves in the conversation only
the text whose audio was sent; a truncation (the client says how much it played) cuts it further, mapping
milliseconds to text by each sentence's audio length.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog

from mlxd import errors
from mlxd.audio.pcm import OUTPUT_RATE, float_to_pcm16
from mlxd.events import (
    TERMINAL_EVENTS,
    AudioOut,
    ErrorReport,
    ResponseCompleted,
    ResponseStarted,
    ServerEvent,
    TokenText,
)
from mlxd.scheduler import Job
from mlxd.voice.sentences import SentenceSplitter

log = structlog.get_logger("mlxd.voice")

INTERRUPTED = "interrupted"
CHUNK_SAMPLES = OUTPUT_RATE // 2
MAX_QUEUED_SENTENCES = 32
REMEMBERED_ANSWERS = 16


@dataclass(eq=False)
class _Answer:
    request_id: str | None
    message_id: str
    voice: str | None
    pending: deque[str] = field(default_factory=deque)
    spoken: list[tuple[str, int]] = field(default_factory=list)  # each sentence and its samples of audio
    final: ServerEvent | None = None
    begun: bool = False
    dropped: bool = False
    muted: bool = False
    released: bool = False
    cut_to: str | None = None

    @property
    def spoken_text(self) -> str:
        return "".join(sentence for sentence, _ in self.spoken)

    def text_heard(self, audio_end_ms: int) -> str:
        """The text of the first `audio_end_ms` of this answer's audio; a sentence heard in part is cut at the
        word boundary nearest its share of the sentence's audio."""
        remaining = audio_end_ms * OUTPUT_RATE // 1000
        text = ""
        for sentence, samples in self.spoken:
            if remaining >= samples:
                text += sentence
                remaining -= samples
                continue
            share = round(len(sentence) * remaining / samples)
            cut = sentence.rfind(" ", 0, share + 1)
            return text + sentence[:max(cut, 0)]
        return text

    @property
    def audio_ms(self) -> int:
        return sum(samples for _, samples in self.spoken) * 1000 // OUTPUT_RATE


class Speaker:
    def __init__(self, speak: Callable[[str, str | None], Any], emit: Callable[[ServerEvent], None],
                 cut_answer: Callable[[str, str], bool]) -> None:
        """`speak` is AudioModels.speak; `cut_answer(message_id, text)` replaces an answer's text in the
        conversation (False when it is not there)."""
        self._speak = speak
        self._emit = emit
        self._cut_answer = cut_answer
        self._answers: deque[_Answer] = deque()
        self._remembered: OrderedDict[str, _Answer] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def tap(self, job: Job, voice: str | None) -> None:
        """Speak this job's answer: from now on its events pass through here, on the engine thread."""
        loop = asyncio.get_running_loop()
        if job.answer_id is None:
            job.answer_id = f"answer_{secrets.token_hex(6)}"
        answer = _Answer(job.request_id, job.answer_id, voice)
        splitter = SentenceSplitter()
        emit = self._emit

        def on_loop(function: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the session is gone
                loop.call_soon_threadsafe(function, *args)

        def tapped(event: ServerEvent) -> None:
            if isinstance(event, TokenText):
                emit(event)
                for sentence in splitter.add(event.text):
                    on_loop(self._sentence, answer, sentence)
            elif isinstance(event, TERMINAL_EVENTS):
                on_loop(self._end, answer, splitter.flush(), event)
            else:
                if isinstance(event, ResponseStarted):
                    on_loop(self._begin, answer)
                emit(event)

        job.emit = tapped

    def idle(self) -> bool:
        return not self._answers

    def interrupt(self) -> None:
        """Barge-in: nothing more is spoken of any answer; each ends `interrupted` as soon as it has ended."""
        for answer in list(self._answers):
            answer.dropped = True
            answer.pending.clear()
            if answer.final is not None:
                self._release(answer)

    def truncate(self, message_id: str, audio_end_ms: int) -> bool:
        """Keep only the text of the first `audio_end_ms` of an answer's audio; False if no answer has that id.
        Raises ValueError past the audio sent."""
        answer = self._remembered.get(message_id)
        if answer is None:
            return False
        if audio_end_ms > answer.audio_ms:
            raise ValueError(f"audio_end_ms {audio_end_ms} is past the {answer.audio_ms} ms of audio sent")
        answer.dropped = True
        answer.pending.clear()
        answer.cut_to = answer.text_heard(audio_end_ms)
        if answer.released:
            self._cut_answer(answer.message_id, answer.cut_to)
        elif answer.final is not None:
            self._release(answer)
        return True

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._answers.clear()

    def _begin(self, answer: _Answer) -> None:
        if self._closed:  # the session is gone: nobody would hear it
            return
        answer.begun = True
        self._answers.append(answer)
        self._remembered[answer.message_id] = answer
        while len(self._remembered) > REMEMBERED_ANSWERS:
            self._remembered.popitem(last=False)
        if self._task is None:
            self._task = asyncio.create_task(self._speak_in_turn())

    def _sentence(self, answer: _Answer, sentence: str) -> None:
        if answer.dropped or answer.muted:
            return
        if len(answer.pending) >= MAX_QUEUED_SENTENCES:  # speech is behind: speak more at a time
            sentence = answer.pending.pop() + sentence
        answer.pending.append(sentence)
        self._wake.set()

    def _end(self, answer: _Answer, rest: str, event: ServerEvent) -> None:
        if not answer.begun:  # ended before it began (refused, or cut while waiting): nothing to speak
            self._emit(event)
            return
        if rest:
            self._sentence(answer, rest)
        answer.final = event
        if isinstance(event, ResponseCompleted) and event.finish_reason not in ("stop", "length"):
            answer.dropped = True
            answer.pending.clear()
        if answer.dropped:
            self._release(answer)
        self._wake.set()

    def _release(self, answer: _Answer) -> None:
        """Send the answer's held terminal event; a cut answer's conversation text becomes what was sent."""
        if answer.released:
            return
        answer.released = True
        with contextlib.suppress(ValueError):
            self._answers.remove(answer)
        event = answer.final
        if answer.dropped:
            if isinstance(event, ResponseCompleted) and event.finish_reason in ("stop", "length"):
                event = replace(event, finish_reason=INTERRUPTED)
            if answer.cut_to is None:
                answer.cut_to = answer.spoken_text
            self._cut_answer(answer.message_id, answer.cut_to)
        assert event is not None
        self._emit(event)

    async def _speak_in_turn(self) -> None:
        """Speak the oldest answer's sentences in order; release it once it has ended and all is spoken."""
        while True:
            answer = self._answers[0] if self._answers else None
            if answer is None or (not answer.pending and answer.final is None):
                self._wake.clear()
                await self._wake.wait()
                continue
            if not answer.pending:
                self._release(answer)
                continue
            sentence = answer.pending.popleft()
            samples = await self._synthesize(answer, sentence)
            if answer.dropped or answer.muted:
                continue
            answer.spoken.append((sentence, len(samples)))
            for start in range(0, len(samples), CHUNK_SAMPLES):
                self._emit(AudioOut(answer.request_id, float_to_pcm16(samples[start:start + CHUNK_SAMPLES]),
                                    OUTPUT_RATE))

    async def _synthesize(self, answer: _Answer, sentence: str) -> np.ndarray:
        if not any(character.isalnum() for character in sentence):
            return np.zeros(0, dtype=np.float32)
        try:
            return await self._speak(sentence.strip(), answer.voice)
        except Exception as exc:  # the answer's text still arrives; its speech is lost, and the client is told
            log.warning("speech_failed", request=answer.request_id, error=str(exc))
            answer.muted = True
            answer.pending.clear()
            self._emit(ErrorReport(errors.INTERNAL, f"speaking the answer failed: {exc}"))
            return np.zeros(0, dtype=np.float32)
