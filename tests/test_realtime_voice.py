"""OpenAI Realtime speech through the openai SDK's realtime client against a real mlxd: the flite question
appended with `input_audio_buffer.append` at 24 kHz is heard by server VAD (Silero), transcribed (Whisper
tiny.en) and answered by the embedded SmolLM2, in text or in audio; speech over a spoken answer cancels it;
truncation cuts the history; bad audio gets an `error` and the session carries on. Every event is validated
by the SDK's `RealtimeServerEvent` union (tests.test_realtime_server.Realtime)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.spoken import ANSWER, QUESTION, chunks, spoken_pcm
from tests.test_realtime_server import Realtime, run

RATE = 24000
TRANSCRIBED = {"input": {"transcription": {"model": "whisper-1"}}}
STORY = "Tell me a long story about a brave knight and a dragon."


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return spoken_pcm(QUESTION, tmp_path_factory.mktemp("speech"), RATE)


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.helpers import ServerProcess

    server = ServerProcess("smollm2-135m", log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        server.wait_state("ready", timeout=300)
        yield server
    finally:
        server.stop()


async def say(rt: Realtime, pcm: bytes) -> None:
    for chunk in chunks(pcm, RATE):
        await rt.connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


def of_type(events: list, kind: str) -> list:
    return [event for event in events if event.type == kind]


@pytest.mark.slow
def test_the_spoken_question_is_heard_transcribed_and_answered_in_text(voice_server, question):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(temperature=0, max_output_tokens=40, audio=TRANSCRIBED)
        await say(rt, question)
        events = await rt.until("response.done", timeout=240)
        kinds = [event.type for event in events]
        for before, after in [("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
                              ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"),
                              ("input_audio_buffer.committed", "conversation.item.added"),
                              ("conversation.item.added", "response.created")]:
            assert kinds.index(before) < kinds.index(after), kinds
        (started,) = of_type(events, "input_audio_buffer.speech_started")
        (committed,) = of_type(events, "input_audio_buffer.committed")
        assert started.item_id == committed.item_id and 900 <= started.audio_start_ms <= 1700, "1 s of silence first"
        (transcribed,) = of_type(events, "conversation.item.input_audio_transcription.completed")
        assert transcribed.transcript == QUESTION and transcribed.item_id == committed.item_id
        user = next(e.item for e in events if e.type == "conversation.item.done" and e.item.role == "user")
        assert user.id == committed.item_id and user.content[0].type == "input_audio"
        response = events[-1].response
        assert response.status == "completed" and response.output[0].content[0].text.strip() == ANSWER
        await rt.connection.conversation.item.retrieve(item_id=user.id)
        assert (await rt.until("conversation.item.retrieved"))[-1].item.content[0].transcript == QUESTION

    run(scenario, voice_server, timeout=300)


@pytest.mark.slow
def test_push_to_talk_a_commit_then_response_create_answers_the_spoken_turn(voice_server, question):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(temperature=0, max_output_tokens=40,
                       audio={"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}})
        await say(rt, question)
        await rt.connection.input_audio_buffer.commit()
        await rt.connection.response.create()  # at once: the turn is still being transcribed
        events = await rt.until("response.done", timeout=240)
        kinds = [event.type for event in events]
        assert "input_audio_buffer.speech_started" not in kinds, "the client marks its turns"
        assert kinds.index("conversation.item.input_audio_transcription.completed") < kinds.index("response.created")
        response = events[-1].response
        assert response.status == "completed" and response.output[0].content[0].text.strip() == ANSWER

    run(scenario, voice_server, timeout=300)


@pytest.mark.slow
def test_audio_output_streams_audio_deltas_with_the_transcript(voice_server, question):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(temperature=0, max_output_tokens=40, output_modalities=["audio"], audio=TRANSCRIBED)
        await say(rt, question)
        events = await rt.until("response.done", timeout=240)
        deltas = of_type(events, "response.output_audio.delta")
        audio = b"".join(base64.b64decode(event.delta) for event in deltas)
        assert len(audio) / 2 / RATE > 1.0, "the answer is spoken"
        (transcript,) = of_type(events, "response.output_audio_transcript.done")
        assert transcript.transcript.strip() == ANSWER
        assert not of_type(events, "response.output_text.delta")
        response = events[-1].response
        assert response.output_modalities == ["audio"] and response.output[0].content[0].type == "output_audio"
        assert [e.type for e in events].index("response.output_audio.done") > \
            [e.type for e in events].index(deltas[-1].type)

    run(scenario, voice_server, timeout=300)


@pytest.mark.slow
def test_speech_over_an_answer_cancels_it_and_truncate_cuts_what_was_not_heard(voice_server, question):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(temperature=0, max_output_tokens=200, output_modalities=["audio"], audio=TRANSCRIBED)
        await rt.say(STORY)
        await rt.connection.response.create()
        story = await rt.until("response.output_audio.delta", timeout=240)
        response_id = story[-1].response_id
        await say(rt, question)
        events = await rt.until("response.done", timeout=240)
        assert events[-1].response.id == response_id
        assert (events[-1].response.status, events[-1].response.status_details.reason) == (
            "cancelled", "turn_detected")
        assert of_type(events, "input_audio_buffer.speech_started")
        answer = events[-1].response.output[0]
        spoken_text = answer.content[0].transcript
        await rt.connection.conversation.item.truncate(item_id=answer.id, content_index=0, audio_end_ms=400)
        later = await rt.until("conversation.item.truncated", timeout=120)
        assert not [e for e in later if e.type == "response.output_audio.delta" and e.response_id == response_id]
        await rt.connection.conversation.item.retrieve(item_id=answer.id)
        retrieved = (await rt.until("conversation.item.retrieved", timeout=120))[-1].item
        kept = retrieved.content[0].transcript
        assert len(kept) < len(spoken_text) and spoken_text.startswith(kept)

    run(scenario, voice_server, timeout=300)


def test_bad_audio_gets_an_error_and_the_session_carries_on(text_server):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=3)
        for audio, named in [(base64.b64encode(b"\0" * 3).decode(), "even number"),
                             (base64.b64encode(b"\0" * (1024 * 1024 + 2)).decode(), "over the limit"),
                             ("not base64!", "base64")]:
            error = await rt.error({"type": "input_audio_buffer.append", "event_id": "bad", "audio": audio})
            assert (error.code, error.param, error.event_id) == ("invalid_value", "audio", "bad")
            assert named in error.message
        error = await rt.error({"type": "session.update", "event_id": "g711", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
        assert (error.code, error.param) == ("unsupported_feature", "session.audio.input.format.type")
        error = await rt.error({"type": "session.update", "event_id": "semantic", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}})
        assert error.code == "unsupported_feature" and "semantic_vad" in error.message
        await rt.say("still here")
        assert (await rt.respond())[-1].response.status == "incomplete"

    run(scenario, text_server)
    assert not text_server.unhandled_errors()


def test_audio_to_a_server_without_speech_input_is_refused_naming_why(start_server, tiny_text_model: Path):
    server = start_server(tiny_text_model, "--stt-model", "none", "--tts-model", "none")

    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=3)
        error = await rt.error({"type": "input_audio_buffer.append", "event_id": "a", "audio": "AAAA"})
        assert (error.code, error.event_id) == ("unsupported_feature", "a") and "--stt-model none" in error.message
        error = await rt.error({"type": "session.update", "event_id": "s", "session": {
            "type": "realtime", "output_modalities": ["audio"]}})
        assert (error.code, error.param) == ("unsupported_feature", "session.output_modalities")
        await rt.say("still here")
        assert (await rt.respond())[-1].response.status == "incomplete"

    run(scenario, server)
