"""mlxd.client against real servers on the tiny models: streaming, frames, configure, status, cancel, errors."""

from __future__ import annotations

import asyncio
import signal

import pytest

from mlxd.client import Client, ClientError, ConnectError, ServerError
from tests.helpers import encoded_image, free_port

TOKEN = "client-Token_0123456789"


def run(coroutine, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def test_ask_streams_the_answer_and_ends_with_its_result(text_server):
    async def scenario():
        async with Client(text_server.ws_url()) as client:
            config = await client.configure(temperature=0, maxOutputTokens=10)
            reply = client.ask("Tell me a story")
            pieces = [piece async for piece in reply]
            result = await reply
            again = await client.ask("Tell me a story")
            with_context = await client.ask("Tell me a story", context="You tell stories.")
        return config, reply, pieces, result, again, with_context

    config, reply, pieces, result, again, with_context = run(scenario())
    assert (config["temperature"], config["maxOutputTokens"]) == (0, 10)
    assert len(pieces) >= 1 and "".join(pieces) == result.text != ""
    assert result.id == reply.id and result.dropped is None
    assert (result.finish_reason, result.usage["completion_tokens"]) == ("length", 10)
    assert 0 < result.time_to_first_token <= result.inference_time
    assert again.text == result.text, "greedy answers repeat"
    assert with_context.usage["prompt_tokens"] > result.usage["prompt_tokens"], "the context reached the prompt"


def test_status_is_the_servers_status_message(text_server, tiny_text_model):
    async def scenario():
        async with Client(text_server.ws_url("/ws")) as client:
            return await client.status()

    status = run(scenario())
    assert (status["type"], status["state"], status["model"]) == ("status", "ready", str(tiny_text_model))
    assert status["session"]["pending"] == 0


def test_images_from_a_path_or_bytes_and_frames_that_may_be_dropped(vision_server, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(encoded_image(64, 48, "PNG"))

    async def scenario():
        async with Client(vision_server.ws_url()) as client:
            await client.configure(temperature=0, max_tokens_image=30)
            from_path = await client.send_image(image, prompt="What is this?")
            from_bytes = await client.send_image(image.read_bytes(), prompt="What is this?")
            replies = [client.send_frame(encoded_image(64, 48), prompt="Describe", screen=i % 2 == 1)
                       for i in range(5)]
            return from_path, from_bytes, replies, [await reply for reply in replies]

    from_path, from_bytes, replies, results = run(scenario())
    assert from_path.text == from_bytes.text != "" and from_path.finish_reason == "length"
    assert [result.id for result in results] == [reply.id for reply in replies]
    dropped = [result for result in results if result.dropped is not None]
    answered = [result for result in results if result.dropped is None]
    assert dropped and {result.dropped for result in dropped} == {"superseded"}, "the latest frame wins"
    assert all(result.text == "" for result in dropped)
    assert answered and all(result.text and result.finish_reason for result in answered)


def test_cancel_by_id_or_the_running_one(text_server):
    async def cancelled(client: Client, by_id: bool):
        reply = client.ask("Tell me everything.")
        await reply.__aiter__().__anext__()  # it is streaming
        await client.cancel(reply.id if by_id else None)
        return await reply

    async def scenario():
        async with Client(text_server.ws_url()) as client:
            await client.configure(temperature=0, maxOutputTokens=8000)
            return await cancelled(client, True), await cancelled(client, False)

    for result in run(scenario()):
        assert result.finish_reason == "cancelled" and 0 < result.usage["completion_tokens"] < 8000


def test_error_replies_raise_server_error(text_server, vision_server):
    async def codes():
        found = []
        async with Client(text_server.ws_url()) as client:
            for attempt in (client.configure(temperature=5), client.ask("x" * 40_000),
                            client.send_image(encoded_image(), prompt="What?")):
                with pytest.raises(ServerError) as refused:
                    await attempt
                found.append((refused.value.code, refused.value.message))
            reply = client.ask("x" * 40_000)
            with pytest.raises(ServerError):
                _ = [piece async for piece in reply]  # iterating an error reply raises too
            assert (await client.status())["state"] == "ready", "the session carries on"
        async with Client(vision_server.ws_url()) as client:
            with pytest.raises(ServerError) as refused:
                await client.send_image(b"not an image at all")
            found.append((refused.value.code, refused.value.message))
        return found

    found = run(codes())
    assert [code for code, _ in found] == ["invalid_field", "text_too_long", "model_text_only", "image_decode_failed"]
    assert "temperature" in found[0][1]


def test_connect_errors_name_the_url_and_the_status(start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})

    async def attempt(url: str, token: str | None = None):
        try:
            async with Client(url, token=token, open_timeout=5) as client:
                return (await client.status())["state"]
        except ConnectError as exc:
            return exc

    nowhere = f"ws://127.0.0.1:{free_port()}"
    refused = run(attempt(nowhere))
    assert isinstance(refused, ConnectError) and (refused.url, refused.status) == (nowhere, None)
    assert nowhere in str(refused)
    assert run(attempt(server.ws_url())).status == 401
    assert run(attempt(server.ws_url(), "wrong-token")).status == 403
    assert run(attempt(server.ws_url(), TOKEN)) == "ready", "the token goes as a Bearer header"
    assert run(attempt("http://127.0.0.1:1/")).status is None


def test_a_lost_connection_fails_pending_replies(start_server, tiny_text_model):
    server = start_server(tiny_text_model)

    async def scenario():
        async with Client(server.ws_url()) as client:
            await client.configure(temperature=0, maxOutputTokens=8000)
            reply = client.ask("Tell me everything.")
            await reply.__aiter__().__anext__()
            server.process.send_signal(signal.SIGKILL)
            with pytest.raises(ClientError) as lost:
                await reply
            assert not isinstance(lost.value, ServerError)
            with pytest.raises(ClientError):
                await client.ask("anyone there?")
            with pytest.raises(ClientError):
                await client.status()
            return str(lost.value)

    assert "lost" in run(scenario())
