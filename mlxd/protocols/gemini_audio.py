"""Gemini Live's audio, read and written: the voice a setup asks for, microphone blobs, and the messages that
carry spoken answers and transcripts.

Input is PCM16LE mono in a Blob whose mimeType is `audio/pcm;rate=N` (16 kHz when no rate is given, as
Google's docs assume); output is `audio/pcm;rate=24000`. Automatic activity detection maps onto OpenAI
server_vad semantics: `prefixPaddingMs` and `silenceDurationMs` as they are, start-of-speech sensitivity
as the VAD threshold; end-of-speech sensitivity is accepted, and `silenceDurationMs` is what ends a turn.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from mlxd.intents import AudioInput, TurnDetection, VoiceSettings, WhenBusy, pcm_problem
from mlxd.protocols.base import AudioSupport
from mlxd.protocols.gemini_fields import as_list, as_object, decode_base64, field, invalid, unsupported

PCM_MIME = "audio/pcm"
DEFAULT_INPUT_RATE = 16000
MAX_PADDING_MS = 10_000
THRESHOLDS = {None: 0.5, "START_SENSITIVITY_UNSPECIFIED": 0.5, "START_SENSITIVITY_HIGH": 0.3,
              "START_SENSITIVITY_LOW": 0.7}
END_SENSITIVITIES = (None, "END_SENSITIVITY_UNSPECIFIED", "END_SENSITIVITY_HIGH", "END_SENSITIVITY_LOW")
DETECTION = "setup.realtimeInputConfig.automaticActivityDetection"


@dataclass(frozen=True)
class Voice:
    """What a setup chose for speech: the session's settings, and whether answers' text goes out as
    outputTranscription (the wire's own business)."""

    settings: VoiceSettings
    output_transcription: bool


def setup_voice(setup: dict[str, Any], when_busy: WhenBusy, audio: AudioSupport) -> Voice:
    """The voice of a setup: modality, voice name, transcription configs and automatic activity detection."""
    config = as_object(field(setup, "generationConfig"), "setup.generationConfig")
    output_audio = _audio_modality(as_list(field(config, "responseModalities"),
                                           "setup.generationConfig.responseModalities"))
    if output_audio and audio.tts_refusal:
        raise unsupported(f"responseModalities AUDIO: {audio.tts_refusal}")
    settings = VoiceSettings(
        turn_detection=_turn_detection(setup, when_busy),
        input_transcription=field(setup, "inputAudioTranscription") is not None,
        output_audio=output_audio,
        voice=_voice_name(field(config, "speechConfig")))
    return Voice(settings, output_audio and field(setup, "outputAudioTranscription") is not None)


def _audio_modality(modalities: list[Any]) -> bool:
    names = [modality.upper() if isinstance(modality, str) else modality for modality in modalities]
    if names not in ([], ["TEXT"], ["AUDIO"]):
        raise invalid('setup.generationConfig.responseModalities: ["TEXT"] or ["AUDIO"]')
    return names == ["AUDIO"]


def _voice_name(speech: Any) -> str | None:
    path = "setup.generationConfig.speechConfig"
    voice = as_object(field(as_object(speech, path), "voiceConfig"), f"{path}.voiceConfig")
    name = field(as_object(field(voice, "prebuiltVoiceConfig"), f"{path}.voiceConfig.prebuiltVoiceConfig"),
                 "voiceName")
    if name is not None and (not isinstance(name, str) or len(name) > 64):
        raise invalid(f"{path}.voiceConfig.prebuiltVoiceConfig.voiceName: a string of up to 64 characters")
    return name


def _turn_detection(setup: dict[str, Any], when_busy: WhenBusy) -> TurnDetection | None:
    realtime = as_object(field(setup, "realtimeInputConfig"), "setup.realtimeInputConfig")
    detection = as_object(field(realtime, "automaticActivityDetection"), DETECTION)
    if field(detection, "disabled") is True:
        return None
    start = field(detection, "startOfSpeechSensitivity")
    if not isinstance(start, (str, type(None))) or start not in THRESHOLDS:
        raise invalid(f"{DETECTION}.startOfSpeechSensitivity: unknown value {str(start)[:40]!r}")
    end = field(detection, "endOfSpeechSensitivity")
    if not isinstance(end, (str, type(None))) or end not in END_SENSITIVITIES:
        raise invalid(f"{DETECTION}.endOfSpeechSensitivity: unknown value {str(end)[:40]!r}")
    defaults = TurnDetection()
    return TurnDetection(
        threshold=THRESHOLDS[start],
        prefix_padding_ms=_milliseconds(detection, "prefixPaddingMs", defaults.prefix_padding_ms),
        silence_duration_ms=_milliseconds(detection, "silenceDurationMs", defaults.silence_duration_ms),
        interrupt_response=when_busy == "interrupt")


def _milliseconds(detection: dict[str, Any], name: str, default: int) -> int:
    value = field(detection, name)
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():  # int32 fields may come as JSON strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PADDING_MS:
        raise invalid(f"{DETECTION}.{name}: an integer from 0 to {MAX_PADDING_MS}")
    return value


def is_audio(blob: Any) -> bool:
    mime_type = field(blob, "mimeType") if isinstance(blob, dict) else None
    return isinstance(mime_type, str) and mime_type.lower().startswith("audio/")


def audio_input(blob: Any, path: str, audio: AudioSupport) -> AudioInput:
    """A Blob of microphone audio as an AudioInput; refused when speech input is not served."""
    if audio.stt_refusal:
        raise unsupported(f"{path}: {audio.stt_refusal}")
    blob = as_object(blob, path)
    mime_type = field(blob, "mimeType")
    if not isinstance(mime_type, str):
        raise invalid(f"{path}.mimeType: must be a string")
    kind, *parameters = (piece.strip() for piece in mime_type.split(";"))
    if kind.lower() != PCM_MIME:
        raise invalid(f"{path}.mimeType: {mime_type[:40]!r}: audio must be audio/pcm;rate=N (PCM16LE mono)")
    rate = DEFAULT_INPUT_RATE
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "rate":
            if not value.strip().isdigit():
                raise invalid(f"{path}.mimeType: the rate {value[:16]!r} is not a whole number of Hz")
            rate = int(value)
    pcm = decode_base64(field(blob, "data"), f"{path}.data")
    problem = pcm_problem(pcm, rate)
    if problem:
        raise invalid(f"{path}: {problem[1]}")
    return AudioInput(pcm, rate)


def audio_part(pcm: bytes, sample_rate: int) -> dict[str, Any]:
    """A model turn carrying one chunk of a spoken answer."""
    data = base64.b64encode(pcm).decode("ascii")
    return {"serverContent": {"modelTurn": {"role": "model", "parts": [
        {"inlineData": {"mimeType": f"{PCM_MIME};rate={sample_rate}", "data": data}}]}}}


def transcription(kind: str, text: str, finished: bool) -> dict[str, Any]:
    """`inputTranscription` or `outputTranscription` text."""
    return {"serverContent": {kind: {"text": text, "finished": finished}}}
