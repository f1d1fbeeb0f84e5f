"""The original protocol's voice messages alone: parsing, the connection's voice settings, serialisation."""

from __future__ import annotations

import base64
import json

import pytest

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import AudioCommitted, AudioOut, ConfigUpdated, ErrorReport, InputTranscript, SpeechStarted
from mlxd.generation import GenerationConfig
from mlxd.intents import AudioInput, AudioMark, ConfigUpdate, SetVoice, TurnDetection
from mlxd.protocols.mlxws import MlxwsWire
from mlxd.protocols.mlxws_voice import INITIAL_VOICE
from mlxd.settings import Settings


def parse(wire: MlxwsWire, message: dict) -> list:
    return wire.parse(json.dumps(message))


def encoded(wire: MlxwsWire, event) -> dict | None:
    messages = wire.encode(event)
    if not messages:
        return None
    message = json.loads(messages[0])
    message.pop("timestamp")
    return message


def test_the_first_audio_tells_the_session_how_this_protocol_listens():
    wire = MlxwsWire(Settings())
    pcm = b"\x01\x00\x02\x00"
    first = parse(wire, {"type": "audio_chunk", "id": "c1", "audio": base64.b64encode(pcm).decode()})
    assert first == [SetVoice(INITIAL_VOICE), AudioInput(pcm, 16000, "c1")]
    assert INITIAL_VOICE.input_transcription and INITIAL_VOICE.standalone_turns
    assert parse(wire, {"type": "audio_chunk", "audio": "AAAA", "sample_rate": 24000}) == [
        AudioInput(b"\x00\x00\x00", 24000, None)]  # the session refuses the odd count
    assert parse(wire, {"type": "audio_end", "id": "e"}) == [AudioMark("end", "e")]
    assert parse(wire, {"type": "audio_clear"}) == [AudioMark("clear", None)]


def test_voice_config_is_merged_and_reported():
    wire = MlxwsWire(Settings())
    intents = parse(wire, {"type": "config", "id": "v", "responseModalities": ["TEXT", "AUDIO"],
                           "turnDetection": {"silenceDurationMs": 800}, "temperature": 0})
    voice, update = intents
    assert isinstance(voice, SetVoice) and isinstance(update, ConfigUpdate) and update.changes == {"temperature": 0}
    assert voice.settings.output_audio and voice.settings.turn_detection == TurnDetection(silence_duration_ms=800)
    reply = encoded(wire, ConfigUpdated({"temperature": 0}, GenerationConfig(temperature=0), "v"))
    assert reply["updated_fields"] == {"temperature": 0, "responseModalities": ["TEXT", "AUDIO"],
                                       "turnDetection": {"silenceDurationMs": 800}}
    assert reply["current_config"]["turnDetection"]["silenceDurationMs"] == 800
    assert parse(wire, {"type": "config", "id": "same", "responseModalities": ["AUDIO", "TEXT"]})[0] == \
        ConfigUpdate("same", {}), "nothing new: no SetVoice"
    off = parse(wire, {"type": "config", "turnDetection": None})[0]
    assert off.settings.turn_detection is None
    assert parse(wire, {"type": "audio_end", "id": "e"}) == [AudioMark("commit", "e")], "the client ends turns"


def test_refused_voice_settings_are_not_reported_as_current():
    wire = MlxwsWire(Settings())
    parse(wire, {"type": "config", "id": "v", "responseModalities": ["TEXT", "AUDIO"]})
    encoded(wire, ErrorReport(errors.AUDIO_UNAVAILABLE, "no speech engine", "v"))
    reply = encoded(wire, ConfigUpdated({}, GenerationConfig(), "v"))
    assert reply["current_config"]["responseModalities"] == ["TEXT"] and reply["updated_fields"] == {}
    assert parse(wire, {"type": "audio_end"})[0] == SetVoice(INITIAL_VOICE), "told again before the next audio"


@pytest.mark.parametrize("message,words", [
    ({"type": "audio_chunk"}, "required"),
    ({"type": "audio_chunk", "audio": "@@@@"}, "base64"),
    ({"type": "audio_chunk", "audio": "AAAA", "sample_rate": "16k"}, "integer"),
    ({"type": "audio_chunk", "audio": "A" * (1024 * 1024 * 4 // 3 + 8)}, "at most"),
    ({"type": "config", "turnDetection": {"threshold": 2}}, "threshold"),
    ({"type": "config", "turnDetection": {"eagerness": "high"}}, "eagerness"),
    ({"type": "config", "voice": 7}, "voice"),
    ({"type": "config", "responseModalities": ["TEXT", 0.5, None]}, "responseModalities"),  # found by fuzz.py
    ({"type": "config", "responseModalities": [["AUDIO"], "TEXT"]}, "responseModalities"),
])
def test_bad_voice_messages_are_refused_by_name(message, words):
    with pytest.raises(ClientError) as caught:
        parse(MlxwsWire(Settings()), message)
    assert caught.value.code == errors.INVALID_FIELD and words in caught.value.message


def test_voice_events_on_the_wire():
    wire = MlxwsWire(Settings())
    assert encoded(wire, InputTranscript("item", "hello", "c9")) == {"type": "transcript", "text": "hello",
                                                                       "id": "c9"}
    assert encoded(wire, AudioOut("c9", b"\x01\x02")) == {"type": "audio", "audio": "AQI=", "sample_rate": 24000,
                                                          "id": "c9"}
    assert encoded(wire, SpeechStarted("item", 1200)) == {"type": "speech_started", "audio_start_ms": 1200}
    assert encoded(wire, AudioCommitted("item", "c9")) is None
