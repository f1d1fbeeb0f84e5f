"""`session.audio` and `output_modalities`: OpenAI's voice configuration, merged into the wire's own copy
and handed to the session whole as VoiceSettings.

Audio is PCM16LE mono at 24 kHz both ways (`audio/pcm`, the API's default); G.711 (`audio/pcmu`,
`audio/pcma`) is refused as `unsupported_feature`, as are `semantic_vad`, `idle_timeout_ms`, custom voices and
speeds other than 1. Noise reduction is accepted and not applied. `output_modalities` is `["text"]` (the
default here) or `["audio"]`, which speaks each answer and sends its text as the audio's transcript.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from typing import Any

from mlxd.intents import (
    MAX_AUDIO_CHUNK_BYTES,
    AudioInput,
    TruncateAnswer,
    TurnDetection,
    VoiceSettings,
    pcm_problem,
)
from mlxd.protocols.base import AudioSupport
from mlxd.protocols.openai_realtime.fields import INVALID_VALUE, UNSUPPORTED_FEATURE, Fields

RATE = 24000
PCM = {"type": "audio/pcm", "rate": RATE}
G711 = ("audio/pcmu", "audio/pcma")
MODALITIES = (["text"], ["audio"])
MAX_PADDING_MS = 10_000
MAX_VOICE_CHARS = 64
SERVER_VAD = TurnDetection()  # OpenAI's default: 0.5 / 300 ms / 500 ms
DETECTION_FIELDS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                    "interrupt_response", "idle_timeout_ms")


@dataclass(frozen=True)
class AudioConfig:
    """The session's audio configuration as OpenAI shows it; `transcription` is the client's own object."""

    output_audio: bool = False
    turn_detection: TurnDetection | None = SERVER_VAD
    transcription: dict[str, Any] | None = None
    voice: str | None = None

    def settings(self) -> VoiceSettings:
        return VoiceSettings(self.turn_detection, self.transcription is not None, self.output_audio, self.voice)

    def modalities(self) -> list[str]:
        return ["audio"] if self.output_audio else ["text"]

    def session_json(self) -> dict[str, Any]:
        detection = self.turn_detection
        shown = None if detection is None else {
            "type": "server_vad", "threshold": detection.threshold, "prefix_padding_ms": detection.prefix_padding_ms,
            "silence_duration_ms": detection.silence_duration_ms, "create_response": detection.create_response,
            "interrupt_response": detection.interrupt_response, "idle_timeout_ms": None}
        return {"input": {"format": PCM, "noise_reduction": None, "transcription": self.transcription,
                          "turn_detection": shown},
                "output": {"format": PCM, "voice": self.voice, "speed": 1.0}}


def parse_modalities(fields: Fields, audio: AudioSupport) -> bool | None:
    """`output_modalities` as whether answers are spoken (None: not given)."""
    modalities = fields.listed("output_modalities")
    if modalities is None:
        return None
    if modalities not in MODALITIES:
        raise fields.error(INVALID_VALUE, "output_modalities", 'must be ["text"] or ["audio"]')
    if modalities == ["audio"] and audio.tts_refusal:
        raise fields.error(UNSUPPORTED_FEATURE, "output_modalities", f"audio output: {audio.tts_refusal}")
    return modalities == ["audio"]


def parse_audio(session: Fields, current: AudioConfig, audio: AudioSupport) -> AudioConfig:
    """`session.output_modalities` and `session.audio` over the current configuration: what is not given stays."""
    output_audio = parse_modalities(session, audio)
    config = current if output_audio is None else replace(current, output_audio=output_audio)
    if not session.has("audio"):
        return config
    section = Fields(session.get("audio"), session.path("audio"), session.event_id, ("input", "output"))
    if section.has("input"):
        config = _input(Fields(section.get("input"), section.path("input"), session.event_id,
                               ("format", "noise_reduction", "transcription", "turn_detection")), config)
    if section.has("output"):
        output = Fields(section.get("output"), section.path("output"), session.event_id, ("format", "voice", "speed"))
        _format(output)
        if output.number("speed", 0.25, 1.5) not in (None, 1):
            raise output.error(UNSUPPORTED_FEATURE, "speed", "only the natural speed (1.0) is served")
        voice = output.get("voice")
        if isinstance(voice, dict):
            raise output.error(UNSUPPORTED_FEATURE, "voice", "custom voices are not served: name a voice")
        config = replace(config, voice=output.text("voice", MAX_VOICE_CHARS) or config.voice)
    return config


def _input(fields: Fields, config: AudioConfig) -> AudioConfig:
    _format(fields)
    if fields.has("noise_reduction"):
        Fields(fields.get("noise_reduction"), fields.path("noise_reduction"), fields.event_id, ("type", "strength"))
    if "transcription" in fields.value:  # null turns it off
        transcription = fields.get("transcription")
        if transcription is not None:
            Fields(transcription, fields.path("transcription"), fields.event_id,
                   ("model", "language", "languages", "prompt", "keywords", "delay"))
        config = replace(config, transcription=transcription)
    if "turn_detection" in fields.value:  # null: the client commits its turns
        config = replace(config, turn_detection=_turn_detection(fields))
    return config


def _turn_detection(fields: Fields) -> TurnDetection | None:
    value = fields.get("turn_detection")
    if value is None:
        return None
    detection = Fields(value, fields.path("turn_detection"), fields.event_id, DETECTION_FIELDS, ignored=("eagerness",))
    kind = detection.required("type")
    if kind == "semantic_vad":
        raise detection.error(UNSUPPORTED_FEATURE, "type", "semantic_vad is not served: use server_vad or null")
    if kind != "server_vad":
        raise detection.error(INVALID_VALUE, "type", "must be server_vad or semantic_vad")
    if detection.has("idle_timeout_ms"):
        raise detection.error(UNSUPPORTED_FEATURE, "idle_timeout_ms", "idle timeouts are not served")
    defaults = SERVER_VAD
    return TurnDetection(
        threshold=_or(detection.number("threshold", 0.0, 1.0), defaults.threshold),
        prefix_padding_ms=int(_or(detection.number("prefix_padding_ms", 0, MAX_PADDING_MS, integer=True),
                                  defaults.prefix_padding_ms)),
        silence_duration_ms=int(_or(detection.number("silence_duration_ms", 0, MAX_PADDING_MS, integer=True),
                                    defaults.silence_duration_ms)),
        interrupt_response=_or(detection.boolean("interrupt_response"), defaults.interrupt_response),
        create_response=_or(detection.boolean("create_response"), defaults.create_response))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _format(fields: Fields) -> None:
    if not fields.has("format"):
        return
    audio_format = Fields(fields.get("format"), fields.path("format"), fields.event_id, ("type", "rate"))
    kind = audio_format.get("type")
    if kind in G711:
        raise audio_format.error(UNSUPPORTED_FEATURE, "type", f"{kind} (G.711) is not served: send audio/pcm at "
                                 f"{RATE} Hz")
    if kind not in (None, "audio/pcm"):
        raise audio_format.error(INVALID_VALUE, "type", "must be audio/pcm")
    if audio_format.get("rate") not in (None, RATE):
        raise audio_format.error(INVALID_VALUE, "rate", f"audio/pcm is {RATE} Hz")


TEXT_ONLY = AudioConfig()


def refuse_unheard(fields: Fields, audio: AudioSupport) -> None:
    """Audio events are refused, naming why, when the server cannot take speech."""
    if audio.stt_refusal:
        raise fields.error(UNSUPPORTED_FEATURE, "type", f"{fields.get('type')}: {audio.stt_refusal}")


def parse_append(message: dict[str, Any], event_id: str | None, audio: AudioSupport) -> AudioInput:
    """`input_audio_buffer.append`: base64 PCM16 at 24 kHz, at most one chunk's worth."""
    event = Fields(message, "", event_id, ("type", "event_id", "audio"))
    refuse_unheard(event, audio)
    encoded = event.text("audio", 2 * MAX_AUDIO_CHUNK_BYTES, required=True)
    try:
        pcm = base64.b64decode(encoded or "", validate=True)
    except (binascii.Error, ValueError):
        raise event.error(INVALID_VALUE, "audio", "not valid base64") from None
    problem = pcm_problem(pcm, RATE)
    if problem:
        raise event.error(INVALID_VALUE, "audio", problem[1])
    return AudioInput(pcm, RATE)  # no id: a turn it ends is answered by a response named by the server


def parse_truncate(message: dict[str, Any], event_id: str | None) -> TruncateAnswer:
    event = Fields(message, "", event_id, ("type", "event_id", "item_id", "content_index", "audio_end_ms"))
    item_id = event.identifier("item_id", required=True)
    event.required("content_index")
    event.number("content_index", 0, 0, integer=True)
    event.required("audio_end_ms")
    end_ms = event.number("audio_end_ms", 0, 2**31 - 1, integer=True)
    assert item_id is not None and end_ms is not None
    return TruncateAnswer(item_id, int(end_ms), event_id)
