"""The Gemini Live wire alone: what each client message means in neutral intents, what each event becomes on
the wire, and the close code and reason of every refusal."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxd.dialogue import Message, Part
from mlxd.errors import ClientError
from mlxd.events import (
    AudioOut,
    ConfigUpdated,
    ErrorReport,
    FrameDropped,
    InputTranscript,
    ResponseCompleted,
    ResponseStarted,
    SpeechStarted,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import (
    MAX_AUDIO_CHUNK_BYTES,
    AddMessages,
    AudioInput,
    AudioMark,
    ConfigUpdate,
    Interrupt,
    OfferFrame,
    Respond,
    SetInstructions,
    SetVoice,
    TurnDetection,
    VoiceSettings,
)
from mlxd.protocols.base import MAX_CLOSE_REASON_BYTES, AudioRefusals, Close
from mlxd.protocols.gemini_live import GeminiLiveWire
from mlxd.settings import Settings
from tests.helpers import encoded_image

JPEG = encoded_image(8, 8)
URLSAFE = base64.urlsafe_b64encode(JPEG).decode()
HEARD = AudioRefusals(stt_refusal=None, tts_refusal=None)  # the server has its audio models
PCM = bytes(range(256)) * 4  # 512 samples
MIC = {"data": base64.urlsafe_b64encode(PCM).decode().rstrip("="), "mimeType": "audio/pcm;rate=16000"}


def wire(setup: dict | None = None, max_text_chars: int = 1000, audio=HEARD) -> GeminiLiveWire:
    gemini = GeminiLiveWire(Settings(max_text_chars=max_text_chars), audio)
    gemini.parse(json.dumps({"setup": {"model": "models/gemini-2.0-flash-live-001", **(setup or {})}}))
    return gemini


def parse(gemini: GeminiLiveWire, message: dict) -> list:
    return list(gemini.parse(json.dumps(message)))


def refusal(gemini: GeminiLiveWire, message: dict | str) -> tuple[int, str]:
    """The close frame the client gets for `message`."""
    with pytest.raises(ClientError) as refused:
        gemini.parse(message if isinstance(message, str) else json.dumps(message))
    (close,) = gemini.encode(ErrorReport(refused.value.code, refused.value.message))
    assert isinstance(close, Close) and len(close.sendable_reason.encode()) <= MAX_CLOSE_REASON_BYTES
    return close.code, close.reason


def test_setup_maps_generation_config_in_either_spelling_and_acknowledges_once():
    gemini = GeminiLiveWire(Settings(max_text_chars=1000))
    setup = {"setup": {"model": "anything", "generation_config": {
        "temperature": 0.0, "topK": 5.0, "top_p": 0.5, "maxOutputTokens": 7, "presencePenalty": 0.1,
        "frequency_penalty": -0.1, "candidateCount": 1, "responseModalities": ["TEXT"], "seed": 3,
        "mediaResolution": "MEDIA_RESOLUTION_LOW", "speechConfig": {}, "thinkingConfig": {}},
        "system_instruction": {"role": "user", "parts": [{"text": "Be brief."}, {"text": "Be kind."}]},
        "contextWindowCompression": {"slidingWindow": {}}, "proactivity": {}, "sessionResumption": {},
        "inputAudioTranscription": {}, "outputAudioTranscription": {}, "somethingNew": 1}}
    instructions, update = parse(gemini, setup)
    assert instructions == SetInstructions("Be brief.\nBe kind."), "no voice to set: this server has no audio"
    assert update == ConfigUpdate(None, {"temperature": 0.0, "top_k": 5, "top_p": 0.5, "max_tokens": 7,
                                         "presence_penalty": 0.1, "frequency_penalty": -0.1})
    event = ConfigUpdated(update.changes, GenerationConfig())
    assert gemini.encode(event) == [b'{"setupComplete":{}}']
    assert gemini.encode(event) == [], "only the setup is acknowledged"
    assert gemini.opening() == [], "the server speaks only after the setup"


@pytest.mark.parametrize("message,code,named", [
    ('{"setup": {', 1007, "not valid JSON"),
    ("[1, 2]", 1007, "JSON object"),
    ({"clientContent": {"turnComplete": True}}, 1007, "first message must be a setup"),
    ({"setup": {}, "clientContent": {}}, 1007, "exactly one of"),
    ({}, 1007, "exactly one of"),
    ({"hello": {}}, 1007, "got hello"),
    ({"setup": {"generationConfig": {"temperature": 5}}}, 1007, "temperature"),
    ({"setup": {"generationConfig": {"topK": 2.5}}}, 1007, "topK"),
    ({"setup": {"generationConfig": {"candidateCount": 2}}}, 1007, "candidateCount"),
    ({"setup": {"generationConfig": {"maxOutputTokens": "many"}}}, 1007, "maxOutputTokens"),
    ({"setup": {"generationConfig": {"responseModalities": ["IMAGE"]}}}, 1007, "responseModalities"),
    ({"setup": {"generationConfig": {"responseModalities": ["AUDIO"]}}}, 1008, "AUDIO: this server has no audio"),
    ({"setup": {"generationConfig": {"responseModalities": ["TEXT", "AUDIO"]}}}, 1007, '["TEXT"] or ["AUDIO"]'),
    ({"setup": {"realtimeInputConfig": {"automaticActivityDetection": {"silenceDurationMs": -1}}}}, 1007,
     "silenceDurationMs"),
    ({"setup": {"realtimeInputConfig": {"automaticActivityDetection": {"startOfSpeechSensitivity": "MAX"}}}},
     1007, "startOfSpeechSensitivity"),
    ({"setup": {"tools": [{"functionDeclarations": [{"name": "f"}]}]}}, 1008, "function calling"),
    ({"setup": {"sessionResumption": {"handle": "abc"}}}, 1008, "not resumable"),
    ({"setup": {"realtimeInputConfig": {"activityHandling": "SOMETIMES"}}}, 1007, "activityHandling"),
    ({"setup": {"systemInstruction": {"parts": [{"text": 5}]}}}, 1007, "systemInstruction.parts[0].text"),
    ({"setup": {"generationConfig": []}}, 1007, "generationConfig: must be an object"),
])
def test_bad_setups_close_the_connection_naming_the_problem(message, code, named):
    assert refusal(GeminiLiveWire(Settings(max_text_chars=1000)), message)[0] == code, "no audio models here"
    assert named in refusal(GeminiLiveWire(Settings(max_text_chars=1000)), message)[1]


@pytest.mark.parametrize("message,code,named", [
    ({"setup": {}}, 1007, "setup was already sent"),
    ({"toolResponse": {"functionResponses": [{"id": "x", "name": "f", "response": {}}]}}, 1008, "toolResponse"),
    ({"realtimeInput": {"audio": {"data": "AAEC", "mimeType": "audio/pcm;rate=16000"}}}, 1007, "even number"),
    ({"realtimeInput": {"audio": {"data": "AAE=", "mimeType": "audio/pcm;rate=96000"}}}, 1007, "96000 Hz"),
    ({"realtimeInput": {"audio": {"data": "AAE=", "mimeType": "audio/pcm;rate=fast"}}}, 1007, "whole number"),
    ({"realtimeInput": {"audio": {"data": "AAE=", "mimeType": "audio/mp3"}}}, 1007, "audio/pcm;rate=N"),
    ({"realtimeInput": {"audio": {"data": "!!", "mimeType": "audio/pcm"}}}, 1007, "realtimeInput.audio.data"),
    ({"realtimeInput": {"mediaChunks": [{"data": base64.b64encode(b"\0" * (MAX_AUDIO_CHUNK_BYTES + 2)).decode(),
                                         "mime_type": "audio/pcm"}]}}, 1007, "over the limit"),
    ({"clientContent": {"turns": [{"parts": [{"inlineData": MIC}]}]}}, 1008, "realtimeInput.audio"),
    ({"realtimeInput": {"video": {"data": "AAE=", "mimeType": "text/plain"}}}, 1007, "not an image type"),
    ({"realtimeInput": {"video": {"data": "!!!", "mimeType": "image/jpeg"}}}, 1007, "realtimeInput.video.data"),
    ({"realtimeInput": {"activityStart": {}}}, 1007, "automatic activity detection is on"),
    ({"realtimeInput": {"text": "x" * 1001}}, 1007, "limit is 1000"),
    ({"clientContent": {"turns": {"parts": []}}}, 1007, "clientContent.turns: must be a list"),
    ({"clientContent": {"turns": [{"role": "system", "parts": []}]}}, 1007, "turns[0].role"),
    ({"clientContent": {"turnComplete": "yes"}}, 1007, "turnComplete"),
    ({"contextUpdate": {"tools": {"tools": [{"googleSearch": {}}]}}}, 1008, "function calling"),
])
def test_bad_messages_after_setup_close_with_1007_or_1008(message, code, named):
    found_code, reason = refusal(wire(), message)
    assert found_code == code and named in reason


def test_a_complete_turn_asks_and_an_incomplete_one_waits_and_cuts_a_running_answer():
    gemini = wire()
    turns = [{"role": "user", "parts": [{"text": "Look:"}, {"inline_data": {"data": URLSAFE.rstrip("="),
                                                                            "mime_type": "image/jpeg"}}]},
             {"role": "model", "parts": [{"text": "I see."}]}, {"parts": [{"text": "And?"}], "unknown": 1}]
    interrupt, added = parse(gemini, {"client_content": {"turns": turns[:2], "turnComplete": False}})
    assert interrupt == Interrupt()
    assert added == AddMessages((Message("user", (Part(text="Look:"), Part(image=JPEG))),
                                 Message("assistant", (Part(text="I see."),))), pending=True)
    added, respond = parse(gemini, {"clientContent": {"turns": turns[2:], "turnComplete": True}})
    assert added.messages == (Message("user", (Part(text="And?"),)),) and added.pending
    assert isinstance(respond, Respond) and respond.when_busy == "interrupt" and not respond.out_of_band
    (again,) = parse(gemini, {"clientContent": {"turnComplete": True}})
    assert again.request_id != respond.request_id, "each answer has its own id"


def test_realtime_text_asks_at_once_and_frames_are_context_in_any_base64():
    gemini = wire()
    padded_standard = base64.b64encode(JPEG).decode()
    intents = parse(gemini, {"realtime_input": {"video": {"data": URLSAFE, "mime_type": "image/jpeg"}}})
    assert intents == [OfferFrame(JPEG)]
    assert parse(gemini, {"realtimeInput": {"mediaChunks": [{"data": padded_standard, "mimeType": "image/png"},
                                                            {"data": URLSAFE.rstrip("="), "mimeType": "image/png"}]}}
                 ) == [OfferFrame(JPEG), OfferFrame(JPEG)]
    added, respond = parse(gemini, {"realtimeInput": {"text": "What now?"}})
    assert added == AddMessages((Message("user", (Part(text="What now?"),)),), pending=True)
    assert isinstance(respond, Respond)
    assert parse(gemini, {"realtimeInput": {"audioStreamEnd": True}}) == [AudioMark("end")], "it flushes"


def test_with_activity_detection_off_an_activity_is_one_turn_answered_at_its_end():
    gemini = wire({"realtime_input_config": {"automatic_activity_detection": {"disabled": True}}})
    assert parse(gemini, {"realtimeInput": {"activityStart": {}}}) == [Interrupt(), AudioMark("start")]
    (added,) = parse(gemini, {"realtimeInput": {"text": "part one"}})
    assert added.pending
    assert parse(gemini, {"realtimeInput": {"video": {"data": URLSAFE, "mimeType": "image/jpeg"}}}) == [
        OfferFrame(JPEG)]
    (respond,) = parse(gemini, {"realtimeInput": {"activityEnd": {}}})
    assert isinstance(respond, Respond)


def test_the_setup_sets_the_voice_modality_transcriptions_and_activity_detection():
    gemini = GeminiLiveWire(Settings(), HEARD)
    setup = {"setup": {"generationConfig": {"responseModalities": ["audio"], "speechConfig": {"voiceConfig": {
        "prebuiltVoiceConfig": {"voiceName": "Puck"}}}}, "inputAudioTranscription": {},
        "realtimeInputConfig": {"automaticActivityDetection": {"prefixPaddingMs": 100, "silence_duration_ms": "800",
                                                               "startOfSpeechSensitivity": "START_SENSITIVITY_HIGH",
                                                               "endOfSpeechSensitivity": "END_SENSITIVITY_LOW"}}}}
    _, voice, _ = parse(gemini, setup)
    assert voice == SetVoice(VoiceSettings(TurnDetection(0.3, 100, 800), input_transcription=True,
                                           output_audio=True, voice="Puck"))
    (_, voice, _) = parse(GeminiLiveWire(Settings(), HEARD), {"setup": {"realtimeInputConfig": {
        "activityHandling": "NO_INTERRUPTION", "automaticActivityDetection": {"disabled": True}}}})
    assert voice == SetVoice(VoiceSettings(None)), "text answers, the client marks turns"
    (_, voice, _) = parse(GeminiLiveWire(Settings(), HEARD), {"setup": {"realtimeInputConfig": {
        "activityHandling": "NO_INTERRUPTION"}}})
    assert voice.settings.turn_detection == TurnDetection(interrupt_response=False)


def test_microphone_audio_in_either_field_and_alphabet_goes_to_the_session():
    gemini = wire()
    assert parse(gemini, {"realtimeInput": {"audio": MIC}}) == [AudioInput(PCM, 16000)]
    standard = {"data": base64.b64encode(PCM).decode(), "mime_type": "audio/pcm; rate=24000"}
    assert parse(gemini, {"realtime_input": {"media_chunks": [standard, {"data": URLSAFE, "mimeType": "image/jpeg"}]}}
                 ) == [AudioInput(PCM, 24000), OfferFrame(JPEG)]
    assert parse(gemini, {"realtimeInput": {"audio": {"data": MIC["data"], "mimeType": "audio/pcm"}}}) == [
        AudioInput(PCM, 16000)], "16 kHz unless the mimeType says otherwise"


def test_without_speech_input_audio_is_refused_naming_the_reason():
    deaf = AudioRefusals(stt_refusal="speech input is turned off (--stt-model none)", tts_refusal=None)
    assert refusal(wire(audio=deaf), {"realtimeInput": {"audio": MIC}}) == (
        1008, "realtimeInput.audio: speech input is turned off (--stt-model none)")
    assert refusal(wire(audio=deaf), {"realtimeInput": {"mediaChunks": [MIC]}})[0] == 1008
    (_, voice, _) = parse(GeminiLiveWire(Settings(), deaf), {"setup": {"generationConfig": {
        "responseModalities": ["AUDIO"]}}})
    assert voice.settings.output_audio, "it can still answer aloud"
    assert parse(wire(audio=deaf), {"realtimeInput": {"audioStreamEnd": True}}) == [], "nothing was heard"
    manual = wire({"realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}}, audio=deaf)
    assert parse(manual, {"realtimeInput": {"activityStart": {}}}) == [Interrupt()], "text activity only"
    assert isinstance(parse(manual, {"realtimeInput": {"activityEnd": {}}})[0], Respond)


def test_with_activity_detection_off_a_spoken_activity_is_a_turn_the_session_transcribes():
    gemini = wire({"realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}})
    assert parse(gemini, {"realtimeInput": {"activityStart": {}}}) == [Interrupt(), AudioMark("start")]
    assert parse(gemini, {"realtimeInput": {"audio": MIC}}) == [AudioInput(PCM, 16000)]
    assert parse(gemini, {"realtimeInput": {"activityEnd": {}}}) == [AudioMark("end")], "no Respond: the turn asks"
    assert parse(gemini, {"realtimeInput": {"audioStreamEnd": True}}) == [], "activity marks the turns"


def test_a_spoken_answer_is_audio_parts_and_its_text_an_output_transcription():
    gemini = wire({"generationConfig": {"responseModalities": ["AUDIO"]}, "outputAudioTranscription": {},
                   "inputAudioTranscription": {}})
    assert gemini.encode(SpeechStarted("item-1", 120)) == [], "Gemini has no speech events"
    assert decoded(gemini.encode(InputTranscript("item-1", "What is the capital of France?"))) == [
        {"serverContent": {"inputTranscription": {"text": "What is the capital of France?", "finished": True}}}]
    assert decoded(gemini.encode(TokenText("gemini-1", "Paris"))) == [
        {"serverContent": {"outputTranscription": {"text": "Paris", "finished": False}}}]
    (audio,) = decoded(gemini.encode(AudioOut("gemini-1", PCM)))
    (part,) = audio["serverContent"]["modelTurn"]["parts"]
    assert part["inlineData"]["mimeType"] == "audio/pcm;rate=24000"
    assert base64.b64decode(part["inlineData"]["data"]) == PCM
    silent = wire({"generationConfig": {"responseModalities": ["AUDIO"]}})
    assert silent.encode(TokenText("gemini-1", "Paris")) == [], "no outputAudioTranscription: audio only"
    assert silent.encode(InputTranscript("item-1", "Hi")) == [], "no inputAudioTranscription"
    assert decoded(wire().encode(TokenText("gemini-1", "Paris")))[0]["serverContent"]["modelTurn"]["parts"] == [
        {"text": "Paris"}], "TEXT answers are text parts"


def test_no_interruption_makes_new_input_wait_for_the_running_answer():
    gemini = wire({"realtimeInputConfig": {"activityHandling": "NO_INTERRUPTION",
                                           "automaticActivityDetection": {"disabled": True}}})
    assert parse(gemini, {"realtimeInput": {"activityStart": {}}}) == [AudioMark("start")]
    assert parse(gemini, {"clientContent": {"turns": [{"parts": [{"text": "hi"}]}]}})[0].pending
    (respond,) = parse(gemini, {"clientContent": {"turnComplete": True}})
    assert respond.when_busy == "wait"


def test_context_update_replaces_the_system_instruction():
    gemini = wire()
    assert parse(gemini, {"contextUpdate": {"systemInstruction": {"parts": [{"text": "New rules."}]}}}) == [
        SetInstructions("New rules.")]
    assert parse(gemini, {"contextUpdate": {"systemInstruction": "Plain."}}) == [SetInstructions("Plain.")]
    assert parse(gemini, {"context_update": {"tools": {"tools": []}}}) == []


def decoded(frames: list) -> list[dict]:
    assert all(isinstance(frame, bytes) for frame in frames), "Google's server sends binary frames"
    return [json.loads(frame) for frame in frames]


def test_an_answer_streams_as_model_turns_then_generation_and_turn_complete_with_usage():
    gemini = wire()
    assert gemini.encode(ResponseStarted("gemini-1", "text")) == []
    assert decoded(gemini.encode(TokenText("gemini-1", "Par"))) == [
        {"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": "Par"}]}}}]
    done = ResponseCompleted("gemini-1", "text", "Paris", "stop", 40, 3, 0.5, 0.1, cached_tokens=30)
    assert decoded(gemini.encode(done)) == [
        {"serverContent": {"generationComplete": True}},
        {"serverContent": {"turnComplete": True}, "usageMetadata": {
            "promptTokenCount": 40, "cachedContentTokenCount": 30, "responseTokenCount": 3,
            "totalTokenCount": 43}}]
    cut = ResponseCompleted("gemini-2", "text", "Pa", "interrupted", 50, 1, 0.2, 0.1)
    interrupted, complete = decoded(gemini.encode(cut))
    assert interrupted == {"serverContent": {"interrupted": True}}
    assert complete["serverContent"] == {"turnComplete": True} and complete["usageMetadata"]["totalTokenCount"] == 51
    assert gemini.encode(FrameDropped(None, "superseded")) == []


@pytest.mark.parametrize("code,close_code", [
    ("model_text_only", 1008), ("rate_limited", 1008), ("image_decode_failed", 1007), ("image_too_large", 1007),
    ("queue_full", 1013), ("model_unavailable", 1011), ("internal", 1011)])
def test_session_refusals_become_close_frames(code, close_code):
    (close,) = wire().encode(ErrorReport(code, "é" * 200))
    assert close.code == close_code and len(close.sendable_reason.encode()) <= MAX_CLOSE_REASON_BYTES


def test_go_away_before_the_server_closes():
    gemini = wire()
    assert decoded(gemini.farewell(1001)) == [{"goAway": {"timeLeft": "0s"}}]
    assert decoded(gemini.farewell(1000)) == [{"goAway": {"timeLeft": "0s"}}]
    assert gemini.farewell(1008) == []


VALID = [
    {"setup": {"model": "m", "generationConfig": {"temperature": 0.5, "topK": 5.0, "responseModalities": ["TEXT"]},
               "systemInstruction": {"role": "user", "parts": [{"text": "s"}]}, "tools": [],
               "sessionResumption": {}, "realtimeInputConfig": {"activityHandling": "NO_INTERRUPTION",
                                                                "automaticActivityDetection": {"disabled": True}}}},
    {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "t"}, {"inlineData": {
        "data": URLSAFE, "mimeType": "image/jpeg"}}]}], "turnComplete": True}},
    {"realtimeInput": {"text": "t", "video": {"data": URLSAFE, "mimeType": "image/jpeg"}, "activityStart": {},
                       "activityEnd": {}, "mediaChunks": [{"data": URLSAFE, "mimeType": "image/png"}]}},
    {"contextUpdate": {"systemInstruction": {"parts": [{"text": "s"}]}, "tools": {"tools": []}}},
    {"realtimeInput": {"audio": MIC, "mediaChunks": [MIC], "audioStreamEnd": True}},
    {"setup": {"generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {"voiceConfig": {
        "prebuiltVoiceConfig": {"voiceName": "Puck"}}}}, "inputAudioTranscription": {}, "outputAudioTranscription": {},
        "realtimeInputConfig": {"automaticActivityDetection": {"prefixPaddingMs": 100, "silenceDurationMs": 500,
                                                               "startOfSpeechSensitivity": "START_SENSITIVITY_LOW"}}}},
]
ANYTHING = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=2), max_leaves=4)


def places(value, path=()):
    """Every path to a value inside a message."""
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from places(child, (*path, key))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_field_of_any_type_is_parsed_or_refused_never_a_crash(data):
    """Each valid message with one value anywhere in it replaced by anything JSON can hold."""
    template = data.draw(st.sampled_from(VALID))
    path = data.draw(st.sampled_from(list(places(template))))
    message = replaced(template, path, data.draw(ANYTHING))
    for automatic in (True, False):
        gemini = wire() if automatic else wire({"realtimeInputConfig": {"automaticActivityDetection": {
            "disabled": True}}})
        try:
            gemini.parse(json.dumps(message))
        except ClientError as refused:
            assert isinstance(gemini.encode(ErrorReport(refused.code, refused.message))[0], Close)
