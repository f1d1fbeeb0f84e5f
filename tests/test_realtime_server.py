"""OpenAI Realtime on /v1/realtime against the real server, with the real python `openai` SDK as the client:
`client.realtime.connect()` pointed at mlxd by base_url. Every event received is validated by the SDK's
pydantic union `RealtimeServerEvent`."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from PIL import Image
from pydantic import TypeAdapter

from tests.helpers import delta, encoded_image, image_b64, scrape
from tests.test_history import cold_greedy

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
RESPONSE_SEQUENCE = [
    "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "conversation.item.done", "response.done"]


class Realtime:
    """The SDK's connection; `recv` validates each event with the SDK's union and bounds every wait."""

    def __init__(self, connection) -> None:
        self.connection = connection

    async def recv(self, timeout: float = 30):
        return SERVER_EVENT.validate_json(await asyncio.wait_for(self.connection.recv_bytes(), timeout))

    async def until(self, kind: str, timeout: float = 60) -> list:
        """Events up to and including the first of type `kind`."""
        events = []
        while True:
            events.append(await self.recv(timeout))
            if events[-1].type == kind:
                return events

    async def setup(self, **session) -> None:
        """Read session.created, apply `session` and read session.updated."""
        assert (await self.recv()).type == "session.created"
        await self.connection.session.update(session={"type": "realtime", **session})
        assert (await self.recv()).type == "session.updated"

    async def say(self, text: str, **item) -> object:
        await self.connection.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **item})
        added, done = await self.recv(), await self.recv()
        assert (added.type, done.type) == ("conversation.item.added", "conversation.item.done")
        return done.item

    async def respond(self, **response) -> list:
        await self.connection.response.create(**({"response": response} if response else {}))
        return await self.until("response.done")

    async def error(self, event: dict) -> object:
        await self.connection.send_raw(json.dumps(event))
        error = await self.recv()
        assert error.type == "error", error
        return error.error


def run(scenario, server, api_key: str = "any-key", timeout: float = 120, **connect) -> None:
    async def main() -> None:
        client = AsyncOpenAI(api_key=api_key, base_url=f"{server.http}/v1")
        async with client.realtime.connect(model="gpt-realtime", **connect) as connection:
            await scenario(Realtime(connection))

    asyncio.run(asyncio.wait_for(main(), timeout))


def kinds(events: list) -> list[str]:
    collapsed = []
    for event in events:
        if not (collapsed and collapsed[-1] == event.type == "response.output_text.delta"):
            collapsed.append(event.type)
    return collapsed


def text_of(events: list) -> str:
    return "".join(event.delta for event in events if event.type == "response.output_text.delta")


def test_a_text_turn_is_the_whole_openai_sequence(text_server, tiny_text_model):
    tokenizer = load_tokenizer(tiny_text_model)

    async def scenario(rt: Realtime) -> None:
        created = await rt.recv()
        assert created.type == "session.created" and created.session.model == str(tiny_text_model)
        await rt.connection.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                                    "max_output_tokens": 5, "temperature": 0})
        updated = (await rt.recv()).session
        assert (updated.instructions, updated.max_output_tokens, updated.temperature) == ("Be brief.", 5, 0)
        assert updated.output_modalities == ["text"] and updated.tools == []
        item = await rt.say("Hello there", id="my-item")
        assert item.id == "my-item" and item.content[0].text == "Hello there"
        events = await rt.respond(metadata={"turn": "one"})
        assert kinds(events) == RESPONSE_SEQUENCE
        response = events[-1].response
        assert text_of(events) == events[-5].text == response.output[0].content[0].text
        assert (response.status, response.status_details.reason) == ("incomplete", "max_output_tokens")
        assert response.metadata == {"turn": "one"} and response.conversation_id is not None
        usage = response.usage
        prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hello there"}], add_generation_prompt=True)
        assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (len(prompt), 5, len(prompt) + 5)
        assert usage.input_token_details.text_tokens == len(prompt)
        assert len({event.event_id for event in events}) == len(events)

    run(scenario, text_server)


def test_the_conversation_is_kept_its_prefix_cached_and_a_deleted_item_leaves_it(text_server, tiny_text_model):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=6, temperature=0)
        await rt.say("Tell me a story about a robot.", id="story")
        first = (await rt.respond())[-1].response
        await rt.say("What happened next?")
        second = (await rt.respond())[-1].response
        answer = first.output[0].content[0].text
        expected_text, expected_prompt = cold_greedy(tiny_text_model, [
            {"role": "user", "content": "Tell me a story about a robot."},
            {"role": "assistant", "content": answer}, {"role": "user", "content": "What happened next?"}], 6)
        assert second.usage.input_tokens == expected_prompt
        assert second.usage.input_token_details.cached_tokens >= first.usage.input_tokens
        assert second.output[0].content[0].text == expected_text, "a warm turn answers as a cold run would"
        await rt.connection.conversation.item.retrieve(item_id=first.output[0].id)
        retrieved = await rt.recv()
        assert retrieved.type == "conversation.item.retrieved" and retrieved.item.content[0].text == answer
        await rt.connection.conversation.item.delete(item_id="story")
        assert (await rt.recv()).item_id == "story"
        third = (await rt.respond())[-1].response
        _, without_story = cold_greedy(tiny_text_model, [
            {"role": "assistant", "content": answer}, {"role": "user", "content": "What happened next?"},
            {"role": "assistant", "content": second.output[0].content[0].text}], 1)
        assert third.usage.input_tokens == without_story

    run(scenario, text_server)


def test_the_same_engine_answers_both_protocols_alike(text_server):
    from tests.helpers import run_request, send

    with text_server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 8})
        ws.recv(timeout=10)
        original = run_request(ws, {"type": "text_input", "content": "Hello", "id": "o"})[-1]["full_text"]

    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=8, temperature=0)
        events = await rt.respond(conversation="none", input=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}])
        assert text_of(events) == original

    run(scenario, text_server)


def test_one_default_response_at_a_time_out_of_band_ones_queue_and_cancel_keeps_the_partial_item(text_server):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens="inf", temperature=0)
        await rt.say("Tell me everything.")
        await rt.connection.response.create()
        started = await rt.until("response.output_text.delta")
        response_id = started[0].response.id
        await rt.connection.response.create(event_id="second")
        busy = (await rt.until("error"))[-1]  # deltas of the running answer may come first
        assert busy.type == "error" and busy.error.code == "conversation_already_has_active_response"
        assert busy.error.event_id == "second"
        await rt.connection.response.create(response={"conversation": "none", "max_output_tokens": 3, "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Aside"}]}]})
        await rt.connection.response.cancel(response_id=response_id)
        events = await rt.until("response.done")
        cancelled = events[-1].response
        assert (cancelled.id, cancelled.status, cancelled.status_details.reason) == (
            response_id, "cancelled", "client_cancelled")
        partial = cancelled.output[0]
        assert partial.status == "incomplete" and partial.content[0].text
        aside = await rt.until("response.done")
        assert "conversation.item.added" not in kinds(aside) and "conversation.item.done" not in kinds(aside)
        assert aside[-1].response.conversation_id is None and aside[-1].response.usage.output_tokens == 3
        await rt.connection.conversation.item.retrieve(item_id=partial.id)
        assert (await rt.recv()).item.content[0].text == partial.content[0].text, "the cut answer stays"
        await rt.connection.response.cancel(event_id="again")
        error = (await rt.recv()).error
        assert (error.code, error.event_id) == ("response_cancel_not_active", "again")

    run(scenario, text_server)


JUNK = [
    ({"type": "no.such.event", "event_id": "j1"}, "invalid_value", "type"),
    ({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "j2"}, "invalid_value", "audio"),
    ({"type": "output_audio_buffer.clear", "event_id": "j3", "extra": 1}, "unknown_parameter", "extra"),
    ({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": 0, "event_id": "j4"},
     "item_not_found", None),
    ({"type": "session.update", "event_id": "j5", "session": {"type": "realtime", "instructions": "changed",
                                                              "output_modalities": ["text", "audio"]}},
     "invalid_value", "session.output_modalities"),
    ({"type": "session.update", "event_id": "j6", "session": {"type": "realtime", "instructions": "changed",
                                                              "tools": [{"type": "function", "name": "f"}]}},
     "unsupported_feature", "session.tools"),
    ({"type": "session.update", "event_id": "j7", "session": {"type": "realtime", "instructions": "changed",
                                                              "max_output_tokens": 0}},
     "invalid_value", "session.max_output_tokens"),
    ({"type": "session.update", "event_id": "j8", "session": {"type": "realtime", "voices": "changed"}},
     "unknown_parameter", "session.voices"),
    ({"type": "conversation.item.create", "event_id": "j9", "item": {"type": "function_call_output", "output": ""}},
     "unsupported_feature", "item.type"),
    ({"type": "conversation.item.create", "event_id": "j10", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.jpg"}]}}, "invalid_value",
     "item.content[0].image_url"),
    ({"type": "conversation.item.create", "event_id": "j11", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}}, "image_decode_failed",
     "item.content[0].image_url"),
    ({"type": "conversation.item.create", "event_id": "j12", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": image_b64()}]}}, "model_text_only", None),
    ({"type": "conversation.item.create", "event_id": "j13", "previous_item_id": "nope", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}, "item_not_found", None),
    ({"type": "conversation.item.delete", "item_id": "nope", "event_id": "j14"}, "item_not_found", None),
    ({"type": "conversation.item.retrieve", "item_id": "nope", "event_id": "j15"}, "item_not_found", None),
    ({"type": "response.create", "event_id": "j16", "response": {"conversation": "none", "input": [
        {"type": "item_reference", "id": "nope"}]}}, "item_not_found", None),
    ({"type": "response.cancel", "response_id": "resp_nope", "event_id": "j17"}, "response_cancel_not_active",
     "response_id"),
    ({"type": "input_image_buffer.append", "image_url": "file:///etc/passwd", "event_id": "j18"}, "invalid_value",
     "image_url"),
    ({"type": "conversation.item.delete", "event_id": "j19"}, "missing_required_parameter", "item_id"),
    ({"type": "conversation.item.create", "event_id": "j20", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "\ud800"}]}}, "invalid_value", "item.content[0].text"),
]


def test_junk_and_every_refusal_get_an_error_and_the_session_carries_on(text_server):
    async def scenario(rt: Realtime) -> None:
        await rt.setup(instructions="kept", max_output_tokens=3)
        await rt.connection.send_raw("{not json")
        assert (await rt.recv()).error.code == "invalid_json"
        await rt.connection.send_raw('"\\ud800"')
        assert (await rt.recv()).error.code == "invalid_json"
        for event, code, param in JUNK:
            error = await rt.error(event)
            assert (error.code, error.param, error.event_id, error.type) == (
                code, param, event["event_id"], "invalid_request_error"), event
        await rt.connection.session.update(session={"type": "realtime"})
        assert (await rt.recv()).session.instructions == "kept", "a refused session.update changed nothing"
        await rt.say("still here")
        assert (await rt.respond())[-1].response.status == "incomplete"

    run(scenario, text_server)
    assert not text_server.unhandled_errors()


def test_limits_refuse_with_image_too_large_queue_full_and_rate_limited(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model, "--max-image-bytes", "2000", "--max-pending", "1",
                          "--max-messages-per-second", "1", "--message-burst", "6")

    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens="inf")
        error = await rt.error({"type": "conversation.item.create", "event_id": "big", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_image", "image_url": image_b64(400, 400)}]}})
        assert (error.code, error.event_id) == ("image_too_large", "big")
        question = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]}]
        for number in range(6):  # one runs, one waits, the next are over --max-pending, the last over the rate
            await rt.connection.response.create(event_id=f"r{number}", response={"conversation": "none",
                                                                                 "input": question})
        codes = set()
        while "rate_limited" not in codes:
            event = await rt.recv()
            if event.type == "error":
                codes.add(event.error.code)
        assert "queue_full" in codes

    run(scenario, server)


def test_the_newest_frame_is_committed_at_response_create(vision_server):
    frames = [encoded_image(color=(10 * i, 0, 0)) for i in range(3)]
    newest = image_b64(fmt="PNG")

    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=2, temperature=0)
        for frame in frames:
            await rt.connection.send_raw(frame)
        await rt.connection.send_raw(json.dumps({"type": "input_image_buffer.append", "image_url": newest}))
        events = await rt.respond()
        added, done, *response = events
        assert (added.type, done.type) == ("conversation.item.added", "conversation.item.done")
        assert done.item.role == "user" and done.item.content[0].image_url == newest, "the latest frame wins"
        assert kinds(response) == RESPONSE_SEQUENCE and response[2].previous_item_id == done.item.id
        assert response[-1].response.usage.input_token_details.image_tokens > 0
        await rt.connection.send_raw(frames[0])
        aside = await rt.respond(conversation="none")
        assert "conversation.item.added" not in kinds(aside), "out of band, the frame goes into its input only"
        assert aside[-1].response.usage.input_token_details.image_tokens > 0
        empty = await rt.respond(conversation="none", input=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]}])
        assert empty[-1].response.usage.input_token_details.image_tokens == 0, "the buffer was emptied"

    before = scrape(vision_server)
    run(scenario, vision_server)
    assert delta(before, scrape(vision_server), "mlxd_frames_dropped_total", reason="superseded") == 3


def test_an_image_the_model_cannot_decode_fails_its_response_and_the_session_recovers(vision_server):
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    truncated = buffer.getvalue()[:len(buffer.getvalue()) // 2]  # its header is whole: it is accepted on arrival
    url = "data:image/jpeg;base64," + base64.b64encode(truncated).decode()

    async def scenario(rt: Realtime) -> None:
        await rt.setup(max_output_tokens=2)
        await rt.connection.conversation.item.create(item={
            "type": "message", "role": "user", "id": "broken", "content": [{"type": "input_image", "image_url": url}]})
        assert (await rt.until("conversation.item.done")).pop().item.id == "broken"
        events = await rt.respond()
        assert kinds(events) == ["response.created", "response.done"]
        failed = events[-1].response
        assert failed.status == "failed" and failed.status_details.error.code == "image_decode_failed"
        await rt.connection.conversation.item.delete(item_id="broken")
        await rt.recv()
        await rt.say("Hello")
        assert (await rt.respond())[-1].response.status == "incomplete"

    run(scenario, vision_server)


@pytest.mark.slow
def test_the_embedded_model_answers_sensibly_through_the_sdk(start_server):
    server = start_server("smollm2-135m")

    async def scenario(rt: Realtime) -> None:
        await rt.setup(instructions="Answer in one word.", max_output_tokens=10, temperature=0)
        await rt.say("What is the capital of France?")
        response = (await rt.respond())[-1].response
        assert "Paris" in response.output[0].content[0].text
        assert response.status == "completed"

    run(scenario, server)
