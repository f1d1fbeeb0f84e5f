"""Gemini Live video on Google's python SDK against the tiny vision model: frames are context for the next
answer (only the newest waits, the rest are dropped and counted), images in turns, and the limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.gemini_sdk import MODEL, answer, client, flags, run, serving_tls, usage_of, user_turn
from tests.helpers import ServerProcess, encoded_image

GREEDY = {"response_modalities": ["TEXT"], "temperature": 0, "max_output_tokens": 3}


@pytest.fixture(scope="module")
def vision_tls_server(tiny_vision_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    with serving_tls(tiny_vision_model, tmp_path_factory.mktemp("config"), "--max-image-pixels",
                     "1000000") as started:
        yield started


def dropped(server: ServerProcess, cert: Path, reason: str = "superseded") -> float:
    trust = ssl.create_default_context(cafile=str(cert))
    text = httpx.get(f"https://127.0.0.1:{server.port}/metrics", verify=trust, timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "mlxd_frames_dropped_total" and sample.labels.get("reason") == reason)


def test_frames_are_context_for_the_next_answer_and_only_the_newest_waits(vision_tls_server):
    """The older frames cannot be decoded: the answer succeeds only if they were never used."""
    server, cert = vision_tls_server
    before = dropped(server, cert)
    frames = [types.Blob(data=b"not an image", mime_type="image/jpeg"),
              types.Blob(data=b"nor this", mime_type="image/jpeg"), Image.new("RGB", (64, 48), (0, 0, 200))]

    async def conversation() -> list:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            for frame in frames:
                await session.send_realtime_input(video=frame)
            with pytest.raises(asyncio.TimeoutError):  # frames never start an answer
                await asyncio.wait_for(session.receive().__anext__(), 1.0)
            await session.send_realtime_input(text="What do you see?")
            return await answer(session)

    assert flags(run(conversation())) == ["text", "generation_complete", "turn_complete"]
    assert dropped(server, cert) - before == 2, "the two older frames were superseded"


def test_a_frame_adds_its_image_tokens_to_the_prompt(vision_tls_server):
    server, cert = vision_tls_server

    async def prompt_tokens(with_frame: bool) -> int:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            if with_frame:
                await session.send_realtime_input(video=types.Blob(data=encoded_image(64, 48),
                                                                   mime_type="image/jpeg"))
            await session.send_realtime_input(text="Describe.")
            return usage_of(await answer(session)).prompt_token_count

    assert run(prompt_tokens(True)) > run(prompt_tokens(False))


def test_images_in_turns_and_max_output_tokens_bound_image_answers(vision_tls_server):
    server, cert = vision_tls_server
    turn = types.Content(role="user", parts=[types.Part.from_bytes(data=encoded_image(64, 48, "PNG"),
                                                                   mime_type="image/png"),
                                             types.Part(text="What is this?")])

    async def conversation() -> list:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            await session.send_client_content(turns=turn)
            return await answer(session)

    messages = run(conversation())
    assert flags(messages) == ["text", "generation_complete", "turn_complete"]
    assert usage_of(messages).response_token_count == 3


@pytest.mark.parametrize("image,code", [(b"not an image at all", 1007), ("huge", 1007)])
def test_an_image_that_cannot_be_used_closes_with_1007(vision_tls_server, image, code):
    server, cert = vision_tls_server
    data = encoded_image(2000, 1000) if image == "huge" else image

    async def conversation() -> None:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            await session.send_realtime_input(video=types.Blob(data=data, mime_type="image/jpeg"))
            await session.send_client_content(turns=user_turn("Look."))
            await answer(session)

    with pytest.raises(genai_errors.APIError) as refused:
        run(conversation())
    assert refused.value.code == code


def test_frames_over_the_message_rate_are_dropped_and_other_messages_over_it_close(vision_tls_server):
    server, cert = vision_tls_server
    before = dropped(server, cert, "rate_limited")

    async def conversation() -> None:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            for _ in range(600):  # past the burst of 200 and the 100 a second refilled meanwhile
                await session.send_realtime_input(video=types.Blob(data=b"x", mime_type="image/jpeg"))
            await session.send_realtime_input(text="And now?")
            await answer(session)

    with pytest.raises(genai_errors.APIError) as refused:
        run(conversation())
    assert refused.value.code == 1008 and "messages a second" in str(refused.value)
    assert dropped(server, cert, "rate_limited") - before > 0
