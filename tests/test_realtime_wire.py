"""The OpenAI Realtime wire alone: client events to intents, and every server event it writes validated
against the openai SDK's own pydantic union `RealtimeServerEvent` (as openai-agents validates them)."""

from __future__ import annotations

import base64
import json

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from mlxd import errors
from mlxd.dialogue import Message, Part
from mlxd.errors import ClientError
from mlxd.events import (
    AnswerTruncated,
    AudioCleared,
    AudioCommitted,
    AudioOut,
    ConfigUpdated,
    ErrorReport,
    FrameDropped,
    InputTranscript,
    MessageAdded,
    MessageDeleted,
    MessageRetrieved,
    ResponseCompleted,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import (
    MAX_AUDIO_CHUNK_BYTES,
    AddMessages,
    AudioInput,
    AudioMark,
    Cancel,
    ConfigUpdate,
    Interrupt,
    OfferFrame,
    Respond,
    SetInstructions,
    SetVoice,
    TruncateAnswer,
    TurnDetection,
    VoiceSettings,
)
from mlxd.protocols.base import AudioRefusals
from mlxd.protocols.openai_realtime import RealtimeWire
from mlxd.settings import Settings
from tests.helpers import encoded_image, image_b64

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
HEARD = AudioRefusals(stt_refusal=None, tts_refusal=None)  # the server has its audio models
PCM = bytes(range(256)) * 6  # 768 samples, 32 ms at 24 kHz


class Checked:
    """A wire whose every outgoing event is validated by the SDK's types and has a fresh event_id."""

    def __init__(self, audio=None) -> None:
        self.wire = RealtimeWire(Settings(max_tokens=50), "tiny-model", audio=audio or AudioRefusals())
        self.event_ids: set[str] = set()

    def check(self, messages) -> list[dict]:
        decoded = []
        for message in messages:
            SERVER_EVENT.validate_json(message)
            event = json.loads(message)
            assert event["event_id"] not in self.event_ids
            self.event_ids.add(event["event_id"])
            decoded.append(event)
        return decoded

    def encode(self, event) -> list[dict]:
        return self.check(self.wire.encode(event))

    def parse(self, event: dict):
        return self.wire.parse(json.dumps(event))

    def refusal(self, event: dict | str) -> ClientError:
        with pytest.raises(ClientError) as refused:
            self.wire.parse(event if isinstance(event, str) else json.dumps(event))
        report = ErrorReport(refused.value.code, refused.value.message, refused.value.request_id,
                             field=refused.value.field)
        (error,) = self.encode(report)
        assert error["type"] == "error" and error["error"]["code"] == refused.value.code
        return refused.value


def completed(request_id: str, text: str, finish_reason: str = "stop") -> ResponseCompleted:
    return ResponseCompleted(request_id, "text", text, finish_reason, 12, 3, 0.5, 0.1, cached_tokens=4,
                             image_tokens=2)


def types(events: list[dict]) -> list[str]:
    return [event["type"] for event in events]


def test_session_created_then_session_updated_with_the_whole_session():
    wire = Checked()
    (created,) = wire.check(wire.wire.opening())
    assert created["type"] == "session.created"
    assert created["session"] | {"id": None} == {
        "type": "realtime", "object": "realtime.session", "id": None, "model": "tiny-model",
        "output_modalities": ["text"], "instructions": "", "max_output_tokens": 50, "tools": [],
        "tool_choice": "auto", "temperature": 0.7, "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": None, "transcription": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 500, "create_response": True,
                                         "interrupt_response": True, "idle_timeout_ms": None}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": None, "speed": 1.0}}}
    intents = wire.parse({"type": "session.update", "event_id": "e1", "session": {
        "type": "realtime", "instructions": "Be brief.", "max_output_tokens": "inf", "temperature": 0.2,
        "audio": {"output": {"voice": "marin"}}, "tracing": None, "model": "gpt-realtime"}})
    assert intents == [SetInstructions("Be brief."), SetVoice(VoiceSettings(voice="marin"), "e1"),
                       ConfigUpdate("e1", {"max_tokens": 8192, "temperature": 0.2})]
    config = GenerationConfig(max_tokens=8192, temperature=0.2)
    (updated,) = wire.encode(ConfigUpdated(intents[-1].changes, config, "e1"))
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Be brief."
    assert updated["session"]["max_output_tokens"] == "inf"
    assert updated["session"]["temperature"] == 0.2


@pytest.mark.parametrize(("session", "code", "param"), [
    ({"type": "realtime", "max_output_tokens": 0}, "invalid_value", "session.max_output_tokens"),
    ({"type": "realtime", "temperature": 3}, "invalid_value", "session.temperature"),
    ({"type": "realtime", "voice": "x"}, "unknown_parameter", "session.voice"),
    ({"type": "realtime", "output_modalities": ["audio"]}, "unsupported_feature", "session.output_modalities"),
    ({"type": "realtime", "tools": [{"type": "function", "name": "f"}]}, "unsupported_feature", "session.tools"),
    ({"type": "realtime", "tool_choice": "required"}, "unsupported_feature", "session.tool_choice"),
    ({"type": "realtime", "instructions": "\ud800"}, "invalid_value", "session.instructions"),
    ({"instructions": "x"}, "missing_required_parameter", "session.type"),
    ({"type": "transcription"}, "invalid_value", "session.type"),
])
def test_a_bad_session_update_changes_nothing(session, code, param):
    wire = Checked()
    refused = wire.refusal({"type": "session.update", "event_id": "bad", "session": {"instructions": "new", **session}})
    assert (refused.code, refused.field, refused.request_id) == (code, param, "bad")
    intents = wire.parse({"type": "session.update", "session": {"type": "realtime"}})
    (updated,) = wire.encode(ConfigUpdated({}, GenerationConfig(max_tokens=50), intents[-1].request_id))
    assert updated["session"]["instructions"] == ""


@pytest.mark.parametrize(("event", "code", "param"), [
    ('{"type": ', "invalid_json", None),
    ("[1]", "invalid_json", None),
    ({"type": "no.such.event"}, "invalid_value", "type"),
    ({"type": "input_audio_buffer.append", "audio": ""}, "unsupported_feature", "type"),
    ({"type": "conversation.item.truncate"}, "missing_required_parameter", "item_id"),
    ({"type": "response.cancel", "extra": 1}, "unknown_parameter", "extra"),
    ({"type": "conversation.item.create"}, "missing_required_parameter", "item"),
    ({"type": "conversation.item.create", "item": {"type": "function_call", "name": "f"}}, "unsupported_feature",
     "item.type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": ""}]}}, "unsupported_feature", "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}}, "invalid_value",
     "item.content[0].image_url"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}]}}, "image_decode_failed",
     "item.content[0].image_url"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "\udc00"}]}}, "invalid_value", "item.content[0].text"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "tool", "content": []}},
     "invalid_value", "item.role"),
    ({"type": "conversation.item.delete"}, "missing_required_parameter", "item_id"),
    ({"type": "response.create", "response": {"output_modalities": ["audio"]}}, "unsupported_feature",
     "response.output_modalities"),
    ({"type": "response.create", "response": {"conversation": "other"}}, "invalid_value", "response.conversation"),
    ({"type": "response.create", "response": {"max_output_tokens": 9000}}, "invalid_value",
     "response.max_output_tokens"),
    ({"type": "response.create", "response": {"metadata": {"k": 1}}}, "invalid_value", "response.metadata"),
    ({"type": "response.cancel"}, "response_cancel_not_active", "response_id"),
    ({"type": "input_image_buffer.append", "image_url": "https://example.com/x.jpg"}, "invalid_value",
     "image_url"),
])
def test_junk_and_unsupported_features_are_refused_with_a_code_and_a_param(event, code, param):
    refused = Checked().refusal(event)
    assert (refused.code, refused.field) == (code, param)


def test_an_image_too_large_is_refused_when_it_arrives():
    wire = RealtimeWire(Settings(max_image_pixels=100), "m")
    with pytest.raises(ClientError) as refused:
        wire.parse(json.dumps({"type": "conversation.item.create", "event_id": "big", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_image", "image_url": image_b64()}]}}))
    assert (refused.value.code, refused.value.request_id) == (errors.IMAGE_TOO_LARGE, "big")


def test_items_keep_their_ids_and_come_back_as_sent():
    wire = Checked()
    image = image_b64(fmt="PNG")
    (intent,) = wire.parse({"type": "conversation.item.create", "event_id": "c1", "previous_item_id": "root",
                            "item": {"id": "mine", "type": "message", "role": "user", "content": [
                                {"type": "input_text", "text": "What is it?"},
                                {"type": "input_image", "image_url": image}]}})
    message = Message("user", (Part(text="What is it?"), Part(image=image)), "mine")
    assert intent == AddMessages((message,), after="root", request_id="c1")
    added, done = wire.encode(MessageAdded(message, "c1"))
    assert types([added, done]) == ["conversation.item.added", "conversation.item.done"]
    assert added["item"]["id"] == "mine" and added["previous_item_id"] is None
    assert added["item"]["content"] == [{"type": "input_text", "text": "What is it?"},
                                        {"type": "input_image", "image_url": image}]
    (retrieved,) = wire.encode(MessageRetrieved(message, "r"))
    assert retrieved["item"] == added["item"]
    (deleted,) = wire.encode(MessageDeleted("mine", "d"))
    assert deleted == {"type": "conversation.item.deleted", "event_id": deleted["event_id"], "item_id": "mine"}
    (error,) = wire.encode(ErrorReport(errors.NOT_FOUND, "no message 'x'", "d2"))
    assert error["error"]["code"] == "item_not_found" and error["error"]["event_id"] == "d2"


def test_a_response_is_the_whole_openai_sequence_and_the_deltas_add_up():
    wire = Checked()
    (respond,) = wire.parse({"type": "response.create", "event_id": "go",
                             "response": {"metadata": {"turn": "1"}, "temperature": 0, "max_output_tokens": 7}})
    assert isinstance(respond, Respond) and not respond.out_of_band and respond.when_busy == "refuse"
    assert (respond.temperature, respond.max_tokens, respond.answer_id is not None) == (0, 7, True)
    events = wire.encode(ResponseStarted(respond.request_id, "text"))
    events += wire.encode(TokenText(respond.request_id, "Hel"))
    events += wire.encode(TokenText(respond.request_id, "lo \u00e9"))
    events += wire.encode(completed(respond.request_id, "Hello \u00e9", "length"))
    assert types(events) == [
        "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = events[-1]["response"]
    assert deltas == events[6]["text"] == done["output"][0]["content"][0]["text"] == "Hello \u00e9"
    assert done["id"] == respond.request_id and done["output"][0]["id"] == respond.answer_id
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"
    assert done["output"][0]["status"] == "incomplete" and done["metadata"] == {"turn": "1"}
    assert done["usage"]["input_tokens"] == 12 and done["usage"]["total_tokens"] == 15
    assert done["usage"]["input_token_details"] | {"audio_tokens": 0} == {
        "cached_tokens": 4, "image_tokens": 2, "text_tokens": 10, "audio_tokens": 0}
    assert done["conversation_id"] is not None


def test_out_of_band_responses_add_no_conversation_items():
    wire = Checked()
    (respond,) = wire.parse({"type": "response.create", "response": {"conversation": "none", "input": [
        {"type": "item_reference", "id": "earlier"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Now?"}]}]}})
    assert respond.out_of_band and respond.answer_id is None and respond.input[0] == "earlier"
    events = wire.encode(ResponseStarted(respond.request_id, "text")) + wire.encode(completed(respond.request_id, ""))
    assert "conversation.item.added" not in types(events) and "conversation.item.done" not in types(events)
    assert events[-1]["response"]["conversation_id"] is None and events[-1]["response"]["status"] == "completed"


def test_cancel_ends_a_response_cancelled_and_a_second_cancel_is_not_active():
    wire = Checked()
    (respond,) = wire.parse({"type": "response.create"})
    wire.encode(ResponseStarted(respond.request_id, "text"))
    assert wire.parse({"type": "response.cancel", "event_id": "stop"}) == [Cancel(respond.request_id)]
    events = wire.encode(completed(respond.request_id, "Hi", "cancelled"))
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert wire.refusal({"type": "response.cancel", "response_id": respond.request_id}).code == \
        "response_cancel_not_active"


def test_a_queued_response_cancelled_before_it_started_still_has_created_and_done():
    wire = Checked()
    (respond,) = wire.parse({"type": "response.create"})
    wire.parse({"type": "response.cancel", "response_id": respond.request_id})
    events = wire.encode(completed(respond.request_id, "", "cancelled"))
    assert types(events) == ["response.created", "response.done"]


def test_a_cancel_that_lost_the_race_is_not_active():
    wire = Checked()
    (respond,) = wire.parse({"type": "response.create"})
    wire.parse({"type": "response.cancel", "event_id": "late", "response_id": respond.request_id})
    wire.encode(completed(respond.request_id, ""))
    (error,) = wire.encode(ErrorReport(errors.NOT_FOUND, "nothing", respond.request_id))
    assert error["error"]["code"] == "response_cancel_not_active" and error["error"]["event_id"] == "late"


def test_a_refused_response_is_one_error_with_the_clients_event_id_and_a_failed_one_ends_failed():
    wire = Checked()
    (busy,) = wire.parse({"type": "response.create", "event_id": "second"})
    (error,) = wire.encode(ErrorReport(errors.ANSWER_IN_PROGRESS, "busy", busy.request_id))
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["event_id"] == "second"
    (respond,) = wire.parse({"type": "response.create"})
    wire.encode(ResponseStarted(respond.request_id, "text"))
    wire.encode(TokenText(respond.request_id, "partial"))
    events = wire.encode(ErrorReport(errors.INTERNAL, "the model failed", respond.request_id))
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["status_details"]["error"]["message"] == "the model failed"
    assert events[0]["text"] == "partial"


def test_frames_are_offered_and_their_commit_is_a_user_item():
    wire = Checked()
    jpeg = encoded_image()
    assert wire.wire.parse(jpeg) == [OfferFrame(jpeg)]
    assert wire.parse({"type": "input_image_buffer.append", "image_url": image_b64()}) == [OfferFrame(image_b64())]
    assert wire.encode(FrameDropped(None, "superseded")) == []
    (respond,) = wire.parse({"type": "response.create"})
    frame = Message("user", (Part(image=jpeg),), respond.frame_id)
    added, _ = wire.encode(MessageAdded(frame, respond.request_id))
    assert added["item"]["id"] == respond.frame_id
    assert added["item"]["content"][0]["image_url"].startswith("data:image/jpeg;base64,")
    started = wire.encode(ResponseStarted(respond.request_id, "image"))
    assert started[2]["type"] == "conversation.item.added" and started[2]["previous_item_id"] == respond.frame_id


@pytest.mark.parametrize(("audio", "code", "param"), [
    ({"output": {"format": {"type": "audio/pcmu"}}}, "unsupported_feature", "session.audio.output.format.type"),
    ({"input": {"format": {"type": "audio/pcma"}}}, "unsupported_feature", "session.audio.input.format.type"),
    ({"input": {"format": {"type": "audio/pcm", "rate": 16000}}}, "invalid_value", "session.audio.input.format.rate"),
    ({"input": {"turn_detection": {"type": "semantic_vad"}}}, "unsupported_feature",
     "session.audio.input.turn_detection.type"),
    ({"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}, "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    ({"input": {"turn_detection": {"type": "server_vad", "create_response": "yes"}}}, "invalid_value",
     "session.audio.input.turn_detection.create_response"),
    ({"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}, "unsupported_feature",
     "session.audio.input.turn_detection.idle_timeout_ms"),
    ({"input": {"transcription": {"model": "whisper-1", "colour": "red"}}}, "unknown_parameter",
     "session.audio.input.transcription.colour"),
    ({"output": {"voice": {"id": "voice_1234"}}}, "unsupported_feature", "session.audio.output.voice"),
    ({"output": {"speed": 1.5}}, "unsupported_feature", "session.audio.output.speed"),
])
def test_audio_the_server_cannot_honour_is_refused_naming_the_field(audio, code, param):
    refused = Checked(HEARD).refusal({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
    assert (refused.code, refused.field) == (code, param)


def test_the_audio_configuration_merges_and_the_session_gets_it_whole():
    wire = Checked(HEARD)
    voice, _ = wire.parse({"type": "session.update", "event_id": "v", "session": {
        "type": "realtime", "output_modalities": ["audio"], "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": {"type": "near_field"},
                      "transcription": {"model": "whisper-1", "language": "en"},
                      "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                                         "interrupt_response": False}},
            "output": {"voice": "marin", "format": {"type": "audio/pcm"}}}}})
    assert voice == SetVoice(VoiceSettings(TurnDetection(0.6, 300, 700, interrupt_response=False),
                                           input_transcription=True, output_audio=True, voice="marin"), "v")
    (updated,) = wire.encode(ConfigUpdated({}, GenerationConfig(), "v"))
    session = updated["session"]
    assert session["output_modalities"] == ["audio"] and session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}
    (voice, _) = wire.parse({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"turn_detection": None}}}})
    assert voice.settings == VoiceSettings(None, True, True, "marin"), "what is not given stays; null turns off"
    assert len(wire.parse({"type": "session.update", "session": {"type": "realtime"}})) == 1, "nothing new"


def test_audio_output_is_refused_without_speech_and_audio_input_without_transcription():
    deaf = AudioRefusals(stt_refusal="speech input is turned off (--stt-model none)", tts_refusal=None)
    mute = AudioRefusals(stt_refusal=None, tts_refusal="no text-to-speech model could be loaded")
    refused = Checked(mute).refusal({"type": "session.update", "session": {"type": "realtime",
                                                                           "output_modalities": ["audio"]}})
    assert refused.code == "unsupported_feature" and "no text-to-speech model" in refused.message
    for event in ({"type": "input_audio_buffer.append", "audio": "AAAA"}, {"type": "input_audio_buffer.commit"},
                  {"type": "input_audio_buffer.clear"}):
        refused = Checked(deaf).refusal(event)
        assert (refused.code, refused.field) == ("unsupported_feature", "type")
        assert "--stt-model none" in refused.message
    assert Checked(mute).parse({"type": "input_audio_buffer.append", "audio": "AAAAAA=="}) == [
        AudioInput(b"\0" * 4, 24000)], "a server that cannot speak still listens"


@pytest.mark.parametrize(("audio", "named"), [
    ("AAEC", "even number"),
    ("!!!!", "base64"),
    (base64.b64encode(b"\0" * (MAX_AUDIO_CHUNK_BYTES + 2)).decode(), "over the limit"),
])
def test_bad_audio_is_refused_and_good_audio_is_24khz_input(audio, named):
    wire = Checked(HEARD)
    refused = wire.refusal({"type": "input_audio_buffer.append", "event_id": "a", "audio": audio})
    assert (refused.code, refused.field, refused.request_id) == ("invalid_value", "audio", "a")
    assert named in refused.message
    assert wire.parse({"type": "input_audio_buffer.append", "event_id": "b",
                       "audio": base64.b64encode(PCM).decode()}) == [AudioInput(PCM, 24000)]


def test_a_spoken_turn_is_the_buffer_events_then_an_input_audio_item_and_its_transcript():
    wire = Checked(HEARD)
    wire.parse({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"transcription": {"model": "whisper-1"}}}}})
    assert wire.parse({"type": "input_audio_buffer.commit", "event_id": "c"}) == [
        AudioMark("commit", "c", respond=False)], "a commit answers nothing: response.create asks"
    assert wire.parse({"type": "input_audio_buffer.clear", "event_id": "x"}) == [AudioMark("clear", "x", respond=False)]
    events = wire.encode(SpeechStarted("item_1", 1200)) + wire.encode(SpeechStopped("item_1", 3700))
    events += wire.encode(AudioCommitted("item_1"))
    heard = Message("user", (Part(text="What is the capital of France?"),), "item_1")
    events += wire.encode(MessageAdded(heard))
    events += wire.encode(InputTranscript("item_1", "What is the capital of France?"))
    events += wire.encode(AudioCleared("x"))
    assert types(events) == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.added", "conversation.item.done", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed", "input_audio_buffer.cleared"]
    assert events[0]["audio_start_ms"] == 1200 and events[1]["audio_end_ms"] == 3700
    assert events[3]["item"]["id"] == "item_1" and events[3]["previous_item_id"] is None
    assert events[3]["item"]["content"] == [{"type": "input_audio", "transcript": None}], "told at its commit"
    assert events[6]["transcript"] == "What is the capital of France?"
    assert events[6]["usage"] == {"type": "duration", "seconds": 2.5}
    (retrieved,) = wire.encode(MessageRetrieved(heard))
    assert retrieved["item"]["content"] == [{"type": "input_audio", "transcript": "What is the capital of France?"}]
    (respond,) = wire.parse({"type": "response.create"})
    started = wire.encode(ResponseStarted(respond.request_id, "text"))
    assert started[2]["type"] == "conversation.item.added" and started[2]["previous_item_id"] == "item_1"


def test_a_response_server_vad_made_is_spoken_named_by_its_answer_and_cut_by_speech():
    wire = Checked(HEARD)
    wire.parse({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}})
    events = wire.encode(ResponseStarted("vad-1", "text", answer_id="answer_1"))
    events += wire.encode(TokenText("vad-1", "The capital"))
    events += wire.encode(AudioOut("vad-1", PCM))
    events += wire.encode(SpeechStarted("item_2", 5000))
    events += wire.encode(completed("vad-1", "The capital", "interrupted"))
    assert types(events) == [
        "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_audio_transcript.delta", "response.output_audio.delta", "input_audio_buffer.speech_started",
        "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
        "response.output_item.done", "conversation.item.done", "response.done"]
    assert events[3]["part"] == {"type": "audio", "transcript": ""}
    assert base64.b64decode(events[5]["delta"]) == PCM and events[5]["item_id"] == "answer_1"
    done = events[-1]["response"]
    assert (done["id"], done["status"], done["status_details"]["reason"]) == ("vad-1", "cancelled", "turn_detected")
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "The capital"}]
    assert done["output_modalities"] == ["audio"]
    assert wire.encode(AudioOut("vad-1", PCM)) == [], "nothing after its end"
    (retrieved,) = wire.encode(MessageRetrieved(Message("assistant", (Part(text="The capital"),), "answer_1")))
    assert retrieved["item"]["content"] == [{"type": "output_audio", "transcript": "The capital"}]


def test_truncate_and_output_audio_buffer_clear():
    wire = Checked(HEARD)
    wire.parse({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}})
    assert wire.parse({"type": "conversation.item.truncate", "event_id": "t", "item_id": "answer_1",
                       "content_index": 0, "audio_end_ms": 1500}) == [TruncateAnswer("answer_1", 1500, "t")]
    assert wire.refusal({"type": "conversation.item.truncate", "item_id": "a", "content_index": 1,
                         "audio_end_ms": 0}).field == "content_index"
    assert wire.refusal({"type": "conversation.item.truncate", "item_id": "a", "content_index": 0,
                         "audio_end_ms": -5}).field == "audio_end_ms"
    (truncated,) = wire.encode(AnswerTruncated("answer_1", 1500, "t"))
    assert truncated == {"type": "conversation.item.truncated", "event_id": truncated["event_id"],
                         "item_id": "answer_1", "content_index": 0, "audio_end_ms": 1500}
    (respond,) = wire.parse({"type": "response.create"})
    wire.encode(ResponseStarted(respond.request_id, "text"))
    assert wire.parse({"type": "output_audio_buffer.clear"}) == [Interrupt()]
    events = wire.encode(completed(respond.request_id, "", "interrupted"))
    assert events[-1] == {"type": "output_audio_buffer.cleared", "event_id": events[-1]["event_id"],
                          "response_id": respond.request_id}
    assert wire.refusal({"type": "response.create", "response": {"output_modalities": ["text"]}}).field == \
        "response.output_modalities", "a response speaks as its session does"
