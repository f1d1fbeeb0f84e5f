"""Gemini Live speech through Google's python SDK against a real mlxd over wss: the flite question sent with
`send_realtime_input(audio=...)` is heard by the real Silero and Whisper tiny.en and answered by the embedded
SmolLM2; spoken answers are audio parts; speech over an answer cuts it; bad audio is refused with a close
code and the server carries on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.genai import errors as genai_errors
from google.genai import types

from tests.gemini_sdk import MODEL, answer, client, flags, run, serving_tls, text_of
from tests.spoken import ANSWER, QUESTION, chunks, spoken_pcm

RATE = 16000
MIME = f"audio/pcm;rate={RATE}"
SPOKEN = {"temperature": 0, "max_output_tokens": 40, "input_audio_transcription": {}}


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return spoken_pcm(QUESTION, tmp_path_factory.mktemp("speech"), RATE)


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    with serving_tls("smollm2-135m", tmp_path_factory.mktemp("config"), timeout=300) as started:
        yield started


async def say(session, pcm: bytes) -> None:
    for chunk in chunks(pcm, RATE):
        await session.send_realtime_input(audio=types.Blob(data=chunk, mime_type=MIME))


def transcript_of(messages: list[types.LiveServerMessage], kind: str) -> str:
    return "".join(getattr(m.server_content, kind).text or "" for m in messages
                   if m.server_content is not None and getattr(m.server_content, kind) is not None)


def audio_of(messages: list[types.LiveServerMessage]) -> list[types.Blob]:
    return [part.inline_data for m in messages if m.server_content is not None and m.server_content.model_turn
            for part in m.server_content.model_turn.parts or () if part.inline_data is not None]


def converse(server: tuple, config: dict, script) -> object:
    server, cert = server

    async def conversation() -> object:
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            return await script(session)

    return run(conversation(), timeout=300)


@pytest.mark.slow
def test_the_spoken_question_is_transcribed_and_answered(voice_server, question):
    async def script(session) -> list:
        await say(session, question)
        return await answer(session)

    messages = converse(voice_server, {**SPOKEN, "response_modalities": ["TEXT"]}, script)
    assert transcript_of(messages, "input_transcription") == QUESTION
    assert text_of(messages).strip() == ANSWER
    assert flags([m for m in messages if m.server_content.input_transcription is None])[-2:] == [
        "generation_complete", "turn_complete"]


@pytest.mark.slow
def test_with_activity_detection_off_the_clients_activity_is_the_turn(voice_server, question):
    async def script(session) -> list:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await say(session, question)
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        return await answer(session)

    config = {**SPOKEN, "response_modalities": ["TEXT"],
              "realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}
    messages = converse(voice_server, config, script)
    assert transcript_of(messages, "input_transcription") == QUESTION
    assert text_of(messages).strip() == ANSWER


@pytest.mark.slow
def test_an_audio_answer_is_24khz_audio_parts_with_its_transcription(voice_server, question):
    async def script(session) -> list:
        await say(session, question)
        return await answer(session)

    config = {**SPOKEN, "response_modalities": ["AUDIO"], "output_audio_transcription": {}}
    messages = converse(voice_server, config, script)
    parts = audio_of(messages)
    assert parts and {part.mime_type for part in parts} == {"audio/pcm;rate=24000"}
    seconds = sum(len(part.data) for part in parts) / 2 / 24000
    assert seconds > 1.0, "the sentence is spoken"
    assert "Paris" in transcript_of(messages, "output_transcription")
    assert not any(part.text for m in messages if m.server_content.model_turn
                   for part in m.server_content.model_turn.parts), "AUDIO answers carry no text parts"


@pytest.mark.slow
def test_speech_over_a_spoken_answer_interrupts_it(voice_server, question):
    async def script(session) -> tuple[list, list]:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(
            text="Tell me a long story about a brave knight and a dragon.")]), turn_complete=True)
        iterator = session.receive().__aiter__()
        first = [await asyncio.wait_for(iterator.__anext__(), 120)]
        while not audio_of(first):
            first.append(await asyncio.wait_for(iterator.__anext__(), 120))
        await say(session, question)
        async for message in iterator:
            first.append(message)
        return first, await answer(session)

    config = {**SPOKEN, "response_modalities": ["AUDIO"], "max_output_tokens": 200}
    cut, spoken_answer = converse(voice_server, config, script)
    shape = [name for m in cut if m.server_content for name in ("interrupted", "turn_complete")
             if getattr(m.server_content, name)]
    assert shape == ["interrupted", "turn_complete"]
    after = cut[next(i for i, m in enumerate(cut) if m.server_content and m.server_content.interrupted):]
    assert not audio_of(after), "no audio of the cut answer after interrupted"
    assert transcript_of(spoken_answer, "input_transcription") == QUESTION and audio_of(spoken_answer)


@pytest.fixture(scope="module")
def tiny_server(tiny_text_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    with serving_tls(tiny_text_model, tmp_path_factory.mktemp("config")) as started:
        yield started


def closed_by(server: tuple, blob: types.Blob) -> genai_errors.APIError:
    async def script(session) -> None:
        await session.send_realtime_input(audio=blob)
        await answer(session)

    with pytest.raises(genai_errors.APIError) as refused:
        converse(server, {"response_modalities": ["TEXT"]}, script)
    return refused.value


def still_served(server: tuple) -> bool:
    """A new session's text turn is answered to its end."""
    async def script(session) -> list:
        await session.send_realtime_input(text="Still there?")
        return await answer(session)

    return flags(converse(server, {"response_modalities": ["TEXT"], "max_output_tokens": 4}, script))[-1] == \
        "turn_complete"


@pytest.mark.parametrize("blob,named", [
    (types.Blob(data=b"\0" * 321, mime_type=MIME), "even number of bytes"),
    (types.Blob(data=b"\0" * 320, mime_type="audio/pcm;rate=96000"), "96000 Hz"),
    (types.Blob(data=b"\0" * (1024 * 1024 + 2), mime_type=MIME), "over the limit"),
    (types.Blob(data=b"\0" * 320, mime_type="audio/ogg"), "audio/pcm;rate=N"),
])
def test_bad_audio_closes_that_session_with_1007_and_the_server_carries_on(tiny_server, blob, named):
    refused = closed_by(tiny_server, blob)
    assert refused.code == 1007 and named in str(refused)
    assert still_served(tiny_server)


def test_audio_to_a_server_without_speech_input_is_refused_naming_why(tiny_text_model: Path, tmp_path: Path):
    with serving_tls(tiny_text_model, tmp_path, "--stt-model", "none", "--tts-model", "none") as started:
        refused = closed_by(started, types.Blob(data=b"\0" * 320, mime_type=MIME))
        assert refused.code == 1008 and "--stt-model none" in str(refused)
        with pytest.raises(genai_errors.APIError) as mute:
            converse(started, {"response_modalities": ["AUDIO"]}, answer)
        assert mute.value.code == 1008 and "AUDIO" in str(mute.value)
        assert still_served(started), "text is still served"
