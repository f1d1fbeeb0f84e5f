"""The original protocol's voice: parse and serialise its audio messages and voice configuration.

In: `audio_chunk {audio, sample_rate?, id?}` (base64 PCM16LE mono, 16 kHz unless said otherwise, at most
1 MiB decoded), `audio_end {id?}` (the client's audio is at an end: the turn being heard ends now) and
`audio_clear {id?}`. Config: `responseModalities` `["TEXT"]` or `["TEXT", "AUDIO"]`, `turnDetection` (server
VAD, or null: the client ends each turn with `audio_end`) and `voice`. Out: `transcript {text, id}`, `audio
{audio, sample_rate, id}`, `speech_started`, `speech_stopped` and `audio_cleared`.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import replace
from typing import Any

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import (
    AudioCleared,
    AudioCommitted,
    AudioOut,
    InputTranscript,
    ServerEvent,
    SpeechStarted,
    SpeechStopped,
)
from mlxd.intents import MAX_AUDIO_CHUNK_BYTES, AudioInput, AudioMark, Intent, TurnDetection, VoiceSettings

AUDIO_TYPES = ("audio_chunk", "audio_end", "audio_clear")
VOICE_FIELDS = ("responseModalities", "turnDetection", "voice")
DEFAULT_SAMPLE_RATE = 16000
MAX_VOICE_CHARS = 64
DETECTION_FIELDS: dict[str, tuple[str, float, float]] = {
    "threshold": ("threshold", 0.0, 1.0),
    "prefixPaddingMs": ("prefix_padding_ms", 0, 5000),
    "silenceDurationMs": ("silence_duration_ms", 100, 10000),
}
DETECTION_SWITCHES = {"interruptResponse": "interrupt_response"}
INITIAL_VOICE = VoiceSettings(input_transcription=True, standalone_turns=True)


def parse_audio(message: dict[str, Any], kind: str, request_id: str | None, settings: VoiceSettings) -> Intent:
    """One of AUDIO_TYPES as its intent; raises ClientError naming what is wrong."""
    if kind == "audio_clear":
        return AudioMark("clear", request_id)
    if kind == "audio_end":
        return AudioMark("commit" if settings.turn_detection is None else "end", request_id)
    data = message.get("audio")
    if not isinstance(data, str) or not data:
        raise ClientError(errors.INVALID_FIELD, "audio: required, base64 PCM16 audio", request_id, "audio")
    if len(data) > math.ceil(MAX_AUDIO_CHUNK_BYTES / 3) * 4:
        raise ClientError(errors.INVALID_FIELD, f"audio: a chunk is at most {MAX_AUDIO_CHUNK_BYTES} bytes decoded",
                          request_id, "audio")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(errors.INVALID_FIELD, "audio: not valid base64", request_id, "audio") from None
    rate = message.get("sample_rate", DEFAULT_SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ClientError(errors.INVALID_FIELD, "sample_rate: must be an integer (Hz)", request_id, "sample_rate")
    return AudioInput(pcm, rate, request_id)


def parse_voice_field(name: str, value: Any, settings: VoiceSettings) -> VoiceSettings:
    """Settings with one voice configuration field applied; raises ValueError naming what is wrong."""
    if name == "responseModalities":
        if (not isinstance(value, list) or not all(isinstance(modality, str) for modality in value)
                or sorted(value) not in (["TEXT"], ["AUDIO", "TEXT"])):
            raise ValueError(f'{name}: ["TEXT"] or ["TEXT", "AUDIO"]')
        return replace(settings, output_audio="AUDIO" in value)
    if name == "voice":
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_VOICE_CHARS):
            raise ValueError(f"{name}: a voice name of 1 to {MAX_VOICE_CHARS} characters, or null")
        return replace(settings, voice=value)
    if value is None:
        return replace(settings, turn_detection=None)
    if not isinstance(value, dict):
        raise ValueError(f"{name}: an object of {', '.join([*DETECTION_FIELDS, *DETECTION_SWITCHES])}, or null")
    detection = settings.turn_detection or TurnDetection()
    changes: dict[str, Any] = {}
    for field, number in value.items():
        if field in DETECTION_SWITCHES and isinstance(number, bool):
            changes[DETECTION_SWITCHES[field]] = number
            continue
        if field not in DETECTION_FIELDS:
            raise ValueError(f"{name}.{str(field)[:64]}: not a turn detection field")
        attribute, low, high = DETECTION_FIELDS[field]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
            raise ValueError(f"{name}.{field}: a number from {low} to {high}")
        changes[attribute] = number if attribute == "threshold" else int(number)
    return replace(settings, turn_detection=replace(detection, **changes))


def voice_config(settings: VoiceSettings) -> dict[str, Any]:
    """The voice fields of `current_config`."""
    detection = settings.turn_detection
    return {
        "responseModalities": ["TEXT", "AUDIO"] if settings.output_audio else ["TEXT"],
        "turnDetection": None if detection is None else {
            **{wire: getattr(detection, name) for wire, (name, *_) in DETECTION_FIELDS.items()},
            **{wire: getattr(detection, name) for wire, name in DETECTION_SWITCHES.items()}},
        "voice": settings.voice,
    }


def encode_voice(event: ServerEvent) -> dict[str, Any] | None:
    """A voice event as its message (without id and timestamp); None for one the protocol does not send."""
    if isinstance(event, InputTranscript):
        return {"type": "transcript", "text": event.text}
    if isinstance(event, AudioOut):
        return {"type": "audio", "audio": base64.b64encode(event.pcm).decode("ascii"),
                "sample_rate": event.sample_rate}
    if isinstance(event, SpeechStarted):
        return {"type": "speech_started", "audio_start_ms": event.audio_start_ms}
    if isinstance(event, SpeechStopped):
        return {"type": "speech_stopped", "audio_end_ms": event.audio_end_ms}
    if isinstance(event, AudioCleared):
        return {"type": "audio_cleared"}
    if isinstance(event, AudioCommitted):
        return None
    raise TypeError(f"not a server event of this protocol: {event!r}")
