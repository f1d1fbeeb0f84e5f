"""A session's voice: what it hears becomes turns, and what it answers can be spoken.

The session hands this layer its voice intents (`SetVoice`, `AudioInput`, `AudioMark`, `TruncateAnswer`) and
each answer's job; the layer calls back into the session, through `VoiceHooks`, to answer a spoken turn, to
cut a running answer when the user starts speaking (barge-in) and to cut an answer's text in the conversation.
Audio is checked here, before it is queued, so a bad chunk is refused at once and the session carries on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlxd import errors
from mlxd.dialogue import Message, user_message
from mlxd.errors import ClientError
from mlxd.events import AnswerTruncated, ErrorReport, InputTranscript, ServerEvent
from mlxd.intents import AudioInput, AudioMark, SetVoice, TruncateAnswer, VoiceSettings, pcm_problem
from mlxd.scheduler import Job
from mlxd.voice.listening import Listener, SpokenTurn
from mlxd.voice.speaking import Speaker

if TYPE_CHECKING:
    from mlxd.audio import AudioModels

VoiceIntent = SetVoice | AudioInput | AudioMark | TruncateAnswer


@dataclass(frozen=True)
class VoiceHooks:
    """What the voice layer asks of its session: `answer_turn(message, request_id, respond)` takes a spoken
    turn's user message (answering it unless `respond` is false), `barge_in` cuts what is being answered,
    `cut_answer(message_id, text)` replaces an answer's text in the conversation (False if it is not there)."""

    answer_turn: Callable[[Message, str | None, bool], None]
    barge_in: Callable[[], None]
    cut_answer: Callable[[str, str], bool]


def audio_refusal(audio: AudioModels | None) -> str | None:
    """Why speech input is refused in this server, or None when it is served."""
    if audio is None:
        return "this server has no audio models"
    return audio.stt_refusal


class Voice:
    def __init__(self, audio: AudioModels | None, emit: Callable[[ServerEvent], None], hooks: VoiceHooks) -> None:
        self.audio = audio
        self.settings = VoiceSettings()
        self._emit = emit
        self._hooks = hooks
        self._listener: Listener | None = None
        self._speaker: Speaker | None = None

    def handle(self, intent: VoiceIntent) -> None:
        """Act on a voice intent; raises ClientError to refuse it."""
        if isinstance(intent, SetVoice):
            self._set(intent)
        elif isinstance(intent, AudioInput):
            self._check(intent)
            self._listening().put(intent)
        elif isinstance(intent, AudioMark):
            self._refuse_unless_listening(intent.request_id)
            self._listening().put(intent)
        else:
            self._truncate(intent)

    def speak_answer(self, job: Job) -> None:
        """Speak this job's answer too, when the client asked for spoken answers."""
        if self.settings.output_audio:
            self._speaking().tap(job, self.settings.voice)

    def after_turns(self, action: Callable[[], None]) -> bool:
        """Defer `action` until the audio heard so far is transcribed and its turns answered or added; False
        (nothing deferred) when nothing is being heard."""
        if self._listener is None or self._listener.idle():
            return False
        self._listener.after_turns(action)
        return True

    def interrupt(self) -> None:
        """Barge-in: drop what is still to be spoken."""
        if self._speaker is not None:
            self._speaker.interrupt()

    def idle(self) -> bool:
        return (self._listener is None or self._listener.idle()) and (self._speaker is None or self._speaker.idle())

    def close(self) -> None:
        for part in (self._listener, self._speaker):
            if part is not None:
                part.close()

    def _set(self, intent: SetVoice) -> None:
        settings = intent.settings
        if settings.output_audio and (self.audio is None or self.audio.tts_refusal is not None):
            reason = "this server has no audio models" if self.audio is None else self.audio.tts_refusal
            raise ClientError(errors.AUDIO_UNAVAILABLE, f"spoken answers are not available: {reason}",
                              intent.request_id)
        self.settings = settings
        if self._listener is not None:
            self._listener.configure(settings.turn_detection)

    def _refuse_unless_listening(self, request_id: str | None) -> None:
        reason = audio_refusal(self.audio)
        if reason is not None:
            raise ClientError(errors.AUDIO_UNAVAILABLE, f"audio input is not available: {reason}", request_id)

    def _check(self, chunk: AudioInput) -> None:
        self._refuse_unless_listening(chunk.request_id)
        problem = pcm_problem(chunk.pcm, chunk.sample_rate)
        if problem is not None:
            field, reason = problem
            raise ClientError(errors.INVALID_FIELD, f"{field}: {reason}", chunk.request_id, field)

    def _truncate(self, intent: TruncateAnswer) -> None:
        try:
            found = self._speaker is not None and self._speaker.truncate(intent.message_id, intent.audio_end_ms)
        except ValueError as exc:
            raise ClientError(errors.INVALID_FIELD, f"audio_end_ms: {exc}", intent.request_id,
                              "audio_end_ms") from None
        if not found:
            raise ClientError(errors.NOT_FOUND, f"no spoken answer {intent.message_id!r} to truncate",
                              intent.request_id)
        self._emit(AnswerTruncated(intent.message_id, intent.audio_end_ms, intent.request_id))

    def _listening(self) -> Listener:
        if self._listener is None:
            assert self.audio is not None
            self._listener = Listener(self.audio.vad_stream, self.audio.transcribe, self._emit, self._speech_started,
                                      self._transcribed, self.settings.turn_detection)
        return self._listener

    def _speaking(self) -> Speaker:
        if self._speaker is None:
            assert self.audio is not None
            self._speaker = Speaker(self.audio.speak, self._emit, self._hooks.cut_answer)
        return self._speaker

    def _speech_started(self) -> None:
        self.interrupt()
        self._hooks.barge_in()

    def _transcribed(self, turn: SpokenTurn, text: str) -> None:
        if self.settings.input_transcription:
            self._emit(InputTranscript(turn.item_id, text, turn.request_id))
        if text:
            self._hooks.answer_turn(user_message(text, message_id=turn.item_id), turn.request_id, turn.respond)
        elif self.settings.standalone_turns:  # the turn asked for an answer, and there is nothing to answer
            self._emit(ErrorReport(errors.INVALID_FIELD, "audio: no speech was heard", turn.request_id, "audio",
                                   "audio"))
