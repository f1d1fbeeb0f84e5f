"""Gemini Live (BidiGenerateContent) on one connection: parse, validate, serialise.

Apps written for Google's Live API talk to mlxd by changing only the base URL and key. A client sends one
JSON object per message with exactly one of `setup` (first, once), `clientContent`, `realtimeInput`,
`toolResponse` or `contextUpdate`; the server answers in binary frames of JSON with only the top-level keys
Google's SDKs accept (`setupComplete`, `serverContent`, `usageMetadata`, `goAway`): the python SDK raises on
any other. The protocol has no error message, so a refusal is a close frame, 1007 for a malformed message
and 1008 for what mlxd does not do, whose reason names the problem.

Meaning, in the session's neutral terms: the connection is one conversation; turns are messages, a complete
turn (or text sent in real time, or the end of an activity when the client detects activity itself) asks
for an answer, video frames are context for the next answer, and new input cuts a running answer unless the
setup said NO_INTERRUPTION. Microphone audio goes to the session's turn detection (or, with automatic
activity detection disabled, between the client's activityStart and activityEnd); a spoken answer comes
back as audio model turns (gemini_audio), its text as outputTranscription where the setup asked for it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import structlog

from mlxd import errors
from mlxd.dialogue import user_message
from mlxd.errors import ClientError
from mlxd.events import (
    AudioOut,
    ConfigUpdated,
    ErrorReport,
    InputTranscript,
    ResponseCompleted,
    ServerEvent,
    TokenText,
)
from mlxd.intents import (
    AddMessages,
    AudioMark,
    ConfigUpdate,
    Intent,
    Interrupt,
    OfferFrame,
    Respond,
    SetInstructions,
    SetVoice,
    WhenBusy,
)
from mlxd.protocols.base import NO_AUDIO, AudioSupport, Close, Outgoing
from mlxd.protocols.gemini_audio import audio_input, audio_part, is_audio, setup_voice, transcription
from mlxd.protocols.gemini_fields import (
    UNSUPPORTED,
    as_bool,
    as_list,
    as_object,
    as_text,
    camel,
    content_message,
    field,
    generation_changes,
    image_blob,
    instruction_text,
    invalid,
    unsupported,
)
from mlxd.protocols.mlxws import _load_object
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.protocols.gemini_live")

VERSIONS = ("v1", "v1beta", "v1alpha")
METHODS = ("BidiGenerateContent", "BidiGenerateContentConstrained")
PATHS = tuple(f"{slashes}ws/google.ai.generativelanguage.{version}.GenerativeService.{method}"
              for slashes in ("/", "//") for version in VERSIONS for method in METHODS)
CLIENT_MESSAGES = ("setup", "clientContent", "realtimeInput", "toolResponse", "contextUpdate")
ACTIVITY_HANDLING = {None: "interrupt", "ACTIVITY_HANDLING_UNSPECIFIED": "interrupt",
                     "START_OF_ACTIVITY_INTERRUPTS": "interrupt", "NO_INTERRUPTION": "wait"}
INVALID_PAYLOAD, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1007, 1008, 1011, 1013
CLOSE_CODES = {
    errors.INVALID_JSON: INVALID_PAYLOAD, errors.UNKNOWN_TYPE: INVALID_PAYLOAD,
    errors.INVALID_FIELD: INVALID_PAYLOAD, errors.TEXT_TOO_LONG: INVALID_PAYLOAD,
    errors.IMAGE_DECODE_FAILED: INVALID_PAYLOAD, errors.IMAGE_TOO_LARGE: INVALID_PAYLOAD,
    UNSUPPORTED: POLICY_VIOLATION, errors.AUDIO_UNAVAILABLE: POLICY_VIOLATION, errors.MODEL_TEXT_ONLY: POLICY_VIOLATION,
    errors.RATE_LIMITED: POLICY_VIOLATION,
    errors.QUEUE_FULL: TRY_AGAIN_LATER, errors.MODEL_UNAVAILABLE: INTERNAL_ERROR, errors.INTERNAL: INTERNAL_ERROR,
}
FAREWELL_CODES = (1000, 1001)


class GeminiLiveWire:
    """One Gemini Live connection's side of the wire: where it is in the protocol and what setup chose."""

    def __init__(self, settings: Settings, audio: AudioSupport = NO_AUDIO) -> None:
        self.max_text_chars = settings.max_text_chars
        self.audio = audio
        self._set_up = False
        self._acknowledged = False
        self._automatic_activity = True
        self._when_busy: WhenBusy = "interrupt"
        self._answers = itertools.count(1)
        self._output_audio = self._output_transcription = self._input_transcription = False
        self._activity_audio = False  # audio came since the client's activityStart

    def opening(self) -> list[str | bytes]:
        return []  # the server speaks first only after the client's setup

    def parse(self, data: str | bytes) -> list[Intent]:
        message = _load_object(data, "message")
        kinds = [camel(key) for key in message]
        if len(kinds) != 1 or kinds[0] not in CLIENT_MESSAGES:
            got = ", ".join(key[:24] for key in list(message)[:3]) or "nothing"
            raise ClientError(errors.UNKNOWN_TYPE, f"a message has exactly one of {', '.join(CLIENT_MESSAGES)}; "
                              f"got {got}")
        kind, body = kinds[0], next(iter(message.values()))
        if (kind == "setup") == self._set_up:
            raise ClientError(errors.UNKNOWN_TYPE, "setup was already sent" if self._set_up
                              else f"the first message must be a setup, not {kind}")
        if kind == "setup":
            return self._setup(as_object(body, "setup"))
        if kind == "clientContent":
            return self._client_content(as_object(body, kind))
        if kind == "realtimeInput":
            return self._realtime_input(as_object(body, kind))
        if kind == "contextUpdate":
            return self._context_update(as_object(body, kind))
        raise unsupported("toolResponse: no tools were declared (function calling is not supported)")

    def _setup(self, setup: dict[str, Any]) -> list[Intent]:
        model = field(setup, "model")
        if model is not None and not isinstance(model, str):
            raise invalid("setup.model: must be a string")
        changes = generation_changes(field(setup, "generationConfig"))
        if as_list(field(setup, "tools"), "setup.tools"):
            raise unsupported("setup.tools: function calling is not supported")
        if field(as_object(field(setup, "sessionResumption"), "setup.sessionResumption"), "handle"):
            raise unsupported("setup.sessionResumption.handle: sessions are not resumable")
        realtime = as_object(field(setup, "realtimeInputConfig"), "setup.realtimeInputConfig")
        detection = as_object(field(realtime, "automaticActivityDetection"),
                              "setup.realtimeInputConfig.automaticActivityDetection")
        disabled = as_bool(field(detection, "disabled"),
                           "setup.realtimeInputConfig.automaticActivityDetection.disabled")
        handling = field(realtime, "activityHandling")
        if not isinstance(handling, (str, type(None))) or handling not in ACTIVITY_HANDLING:
            raise invalid(f"setup.realtimeInputConfig.activityHandling: unknown value {str(handling)[:40]!r}")
        instructions = instruction_text(field(setup, "systemInstruction"), "setup.systemInstruction",
                                        self.max_text_chars)
        voice = setup_voice(setup, ACTIVITY_HANDLING[handling], self.audio)
        self._set_up = True
        self._automatic_activity = not disabled
        self._when_busy = ACTIVITY_HANDLING[handling]
        self._output_audio, self._output_transcription = voice.settings.output_audio, voice.output_transcription
        self._input_transcription = voice.settings.input_transcription
        log.info("gemini_setup", model=model and model[:200], automatic_activity=self._automatic_activity,
                 activity_handling=handling, output_audio=self._output_audio)
        speaks = self.audio.stt_refusal is None or voice.settings.output_audio
        return [SetInstructions(instructions), *([SetVoice(voice.settings)] if speaks else []),
                ConfigUpdate(None, changes)]

    def _respond(self) -> Respond:
        return Respond(f"gemini-{next(self._answers)}", when_busy=self._when_busy)

    def _barge_in(self) -> list[Intent]:
        return [Interrupt()] if self._when_busy == "interrupt" else []

    def _client_content(self, body: dict[str, Any]) -> list[Intent]:
        turns = as_list(field(body, "turns"), "clientContent.turns")
        messages = tuple(content_message(turn, f"clientContent.turns[{i}]", self.max_text_chars)
                         for i, turn in enumerate(turns))
        complete = as_bool(field(body, "turnComplete"), "clientContent.turnComplete")
        intents: list[Intent] = [] if complete else self._barge_in()
        if messages:
            intents.append(AddMessages(messages, pending=True))
        if complete:
            intents.append(self._respond())
        return intents

    def _realtime_input(self, body: dict[str, Any]) -> list[Intent]:
        started, ended = field(body, "activityStart") is not None, field(body, "activityEnd") is not None
        if (started or ended) and self._automatic_activity:
            raise invalid("realtimeInput.activityStart/End: automatic activity detection is on; disable it in "
                          "setup.realtimeInputConfig")
        hears = self.audio.stt_refusal is None  # else marks have no audio to mark, and only text is served
        intents: list[Intent] = [*self._barge_in(), *([AudioMark("start")] if hears else [])] if started else []
        if started:
            self._activity_audio = False
        media = [("realtimeInput.audio", field(body, "audio"))] if field(body, "audio") is not None else []
        media += [(f"realtimeInput.mediaChunks[{i}]", chunk)
                  for i, chunk in enumerate(as_list(field(body, "mediaChunks"), "realtimeInput.mediaChunks"))]
        if field(body, "video") is not None:
            media.append(("realtimeInput.video", field(body, "video")))
        for path, blob in media:
            audio = path == "realtimeInput.audio" or is_audio(blob)
            intents.append(audio_input(blob, path, self.audio) if audio else OfferFrame(image_blob(blob, path)))
            self._activity_audio |= audio
        if field(body, "text") is not None:
            text = as_text(field(body, "text"), "realtimeInput.text", self.max_text_chars)
            intents.append(AddMessages((user_message(text),), pending=True))
            if self._automatic_activity:
                intents.append(self._respond())
        if ended:
            intents.append(AudioMark("end") if self._activity_audio else self._respond())
        stream_end = as_bool(field(body, "audioStreamEnd"), "realtimeInput.audioStreamEnd")
        if stream_end and self._automatic_activity and hears:
            intents.append(AudioMark("end"))  # the microphone is off: what was heard is a turn now
        return intents

    def _context_update(self, body: dict[str, Any]) -> list[Intent]:
        tools = field(body, "tools")
        if isinstance(tools, dict):
            tools = field(tools, "tools")
        if as_list(tools, "contextUpdate.tools"):
            raise unsupported("contextUpdate.tools: function calling is not supported")
        if field(body, "systemInstruction") is None:
            return []
        return [SetInstructions(instruction_text(field(body, "systemInstruction"), "contextUpdate.systemInstruction",
                                                 self.max_text_chars))]

    def encode(self, event: ServerEvent) -> list[Outgoing]:
        if isinstance(event, TokenText):
            if not event.text or (self._output_audio and not self._output_transcription):
                return []
            if self._output_audio:
                return [_frame(transcription("outputTranscription", event.text, False))]
            return [_frame({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": event.text}]}}})]
        if isinstance(event, AudioOut):
            return [_frame(audio_part(event.pcm, event.sample_rate))] if event.pcm else []
        if isinstance(event, InputTranscript):
            return [_frame(transcription("inputTranscription", event.text, True))] if self._input_transcription else []
        if isinstance(event, ResponseCompleted):
            return [_frame(message) for message in _completion(event)]
        if isinstance(event, ConfigUpdated) and not self._acknowledged:
            self._acknowledged = True
            return [_frame({"setupComplete": {}})]
        if isinstance(event, ErrorReport):
            return [Close(CLOSE_CODES.get(event.code, POLICY_VIOLATION), event.message)]
        return []  # nothing else has a Gemini message: frames dropped are counted, not told

    def farewell(self, code: int) -> list[str | bytes]:
        return [_frame({"goAway": {"timeLeft": "0s"}})] if code in FAREWELL_CODES else []


def _completion(event: ResponseCompleted) -> list[dict[str, Any]]:
    """The end of an answer: generationComplete (or interrupted, for a cut one), then turnComplete with usage."""
    messages: list[dict[str, Any]] = []
    if event.finish_reason in ("stop", "length"):
        messages.append({"serverContent": {"generationComplete": True}})
    elif event.finish_reason == "interrupted":
        messages.append({"serverContent": {"interrupted": True}})
    usage = {"promptTokenCount": event.prompt_tokens, "cachedContentTokenCount": event.cached_tokens,
             "responseTokenCount": event.completion_tokens,
             "totalTokenCount": event.prompt_tokens + event.completion_tokens}
    messages.append({"serverContent": {"turnComplete": True}, "usageMetadata": usage})
    return messages


def _frame(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
