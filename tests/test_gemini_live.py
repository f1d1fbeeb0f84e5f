"""Gemini Live apps on Google's python SDK against a real mlxd over wss: answers, history, configuration,
interruption, activity signals and refusals, on the tiny random-weight text model (greedy determinism
stands in for content)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.genai import errors as genai_errors
from google.genai import types
from websockets.sync.client import connect

from tests.gemini_sdk import (
    MODEL,
    answer,
    client,
    flags,
    run,
    serving_tls,
    text_of,
    usage_of,
    user_turn,
)
from tests.helpers import run_request, send, tokens_text

GREEDY = {"response_modalities": ["TEXT"], "temperature": 0, "max_output_tokens": 8}


@pytest.fixture(scope="module")
def tls_server(tiny_text_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """One server for the module, with the certificate `--tls-self-signed` made in a private config dir."""
    with serving_tls(tiny_text_model, tmp_path_factory.mktemp("config")) as started:
        yield started


def ask(tls_server, question: str, config: dict | None = None, **http_options) -> list[types.LiveServerMessage]:
    server, cert = tls_server

    async def conversation() -> list[types.LiveServerMessage]:
        async with client(server, cert, **http_options).aio.live.connect(model=MODEL,
                                                                         config=config or GREEDY) as session:
            await session.send_client_content(turns=user_turn(question), turn_complete=True)
            return await answer(session)

    return run(conversation())


def test_an_answer_streams_model_turns_then_generation_and_turn_complete(tls_server):
    messages = ask(tls_server, "What is the capital of France?")
    assert flags(messages) == ["text", "generation_complete", "turn_complete"]
    assert all(m.server_content.model_turn.role == "model" for m in messages if m.server_content.model_turn)
    usage = usage_of(messages)
    assert usage.response_token_count == 8
    assert usage.total_token_count == usage.prompt_token_count + usage.response_token_count
    assert text_of(messages) == text_of(ask(tls_server, "What is the capital of France?")), "greedy: deterministic"


def test_the_same_question_gets_the_same_answer_as_on_mlxds_own_protocol(tls_server):
    server, cert = tls_server
    gemini = ask(tls_server, "Name a colour.")
    with connect(f"wss://127.0.0.1:{server.port}/", ssl=ssl.create_default_context(cafile=str(cert)),
                 open_timeout=30) as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 8})
        ws.recv(timeout=30)
        messages = run_request(ws, {"type": "text_input", "content": "Name a colour.", "id": "q"})
    assert text_of(gemini) == tokens_text(messages, "q")
    assert usage_of(gemini).prompt_token_count == messages[-1]["usage"]["prompt_tokens"]


@pytest.mark.parametrize("version", ["v1", "v1beta", "v1alpha"])
def test_every_api_version_and_a_base_url_ending_in_a_slash(tls_server, version):
    server, _ = tls_server
    plain = ask(tls_server, "Hi", api_version=version)
    slashed = ask(tls_server, "Hi", api_version=version, base_url=f"https://127.0.0.1:{server.port}/")
    assert text_of(plain) == text_of(slashed) and flags(plain)[-1] == "turn_complete"


def test_history_is_kept_and_reused_from_the_kv_cache(tls_server):
    server, cert = tls_server

    async def conversation() -> tuple[list, list]:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            await session.send_client_content(turns=user_turn("My name is Ada."))
            first = await answer(session)
            await session.send_client_content(turns=user_turn("What is my name?"))
            return first, await answer(session)

    first, second = run(conversation())
    one, two = usage_of(first), usage_of(second)
    assert two.prompt_token_count > one.prompt_token_count + one.response_token_count, "the whole prompt counts"
    assert two.cached_content_token_count > 0, "the first turn is reused from the KV cache"


def test_generation_config_and_system_instruction_shape_the_answer(tls_server):
    long = ask(tls_server, "Tell me more.", {**GREEDY, "max_output_tokens": 3})
    assert usage_of(long).response_token_count == 3
    plain = usage_of(ask(tls_server, "Tell me more.")).prompt_token_count
    instructed = ask(tls_server, "Tell me more.", {**GREEDY, "system_instruction": "You are a pirate."})
    assert usage_of(instructed).prompt_token_count > plain, "the system instruction is part of every prompt"
    sampled = ask(tls_server, "Tell me more.", {**GREEDY, "temperature": 1.0, "top_p": 0.9, "top_k": 5, "seed": 1,
                                                "media_resolution": "MEDIA_RESOLUTION_LOW",
                                                "context_window_compression": {"sliding_window": {}}})
    assert flags(sampled)[-1] == "turn_complete"


def test_incomplete_turns_accumulate_and_an_empty_complete_turn_answers_them(tls_server):
    server, cert = tls_server

    async def conversation() -> tuple[list, list]:
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            await session.send_client_content(turns=[user_turn("Remember: blue."),
                                                     types.Content(role="model", parts=[types.Part(text="OK.")])],
                                              turn_complete=False)
            await session.send_client_content(turns=user_turn("Which colour?"), turn_complete=False)
            await session.send_client_content()
            built = await answer(session)
        async with client(server, cert).aio.live.connect(model=MODEL, config=GREEDY) as session:
            await session.send_client_content(turns=user_turn("Which colour?"))
            return built, await answer(session)

    built, alone = run(conversation())
    assert usage_of(built).prompt_token_count > usage_of(alone).prompt_token_count


def test_context_update_replaces_the_system_instruction(tls_server):
    server, cert = tls_server

    async def conversation() -> list[int]:
        counts = []
        config = {**GREEDY, "system_instruction": "Short."}
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_realtime_input(text="Hi")
            counts.append(usage_of(await answer(session)).prompt_token_count)
            await session.send_context_update(system_instruction="A much longer instruction than before, really.")
            await session.send_realtime_input(text="Hi")
            counts.append(usage_of(await answer(session)).prompt_token_count)
        return counts

    short, longer = run(conversation())
    assert longer > short


@pytest.mark.parametrize("barge_in", ["realtime_text", "client_content"])
def test_new_input_interrupts_a_running_answer_which_stays_in_the_history(tls_server, barge_in):
    server, cert = tls_server

    async def conversation() -> tuple[list, list]:
        config = {**GREEDY, "max_output_tokens": 400}  # greedy random weights never stop early
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=user_turn("Tell me everything."))
            iterator = session.receive().__aiter__()
            first = [await asyncio.wait_for(iterator.__anext__(), 60) for _ in range(20)]
            if barge_in == "realtime_text":
                await session.send_realtime_input(text="Stop.")
            else:
                await session.send_client_content(turns=user_turn("Stop."))
            first += [message async for message in iterator]
            return first, await answer(session)

    cut, follow_up = run(conversation())
    assert flags(cut) == ["text", "interrupted", "turn_complete"], "no generationComplete for a cut answer"
    assert 20 <= usage_of(cut).response_token_count < 400
    assert flags(follow_up)[-2:] == ["generation_complete", "turn_complete"]
    assert usage_of(follow_up).prompt_token_count > (usage_of(cut).prompt_token_count
                                                     + usage_of(cut).response_token_count), "the cut text is kept"


def test_no_interruption_lets_the_running_answer_finish_first(tls_server):
    server, cert = tls_server
    config = {**GREEDY, "max_output_tokens": 40,
              "realtime_input_config": {"activity_handling": "NO_INTERRUPTION"}}

    async def conversation() -> tuple[list, list]:
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=user_turn("Tell me everything."))
            await session.send_realtime_input(text="And then?")
            return await answer(session), await answer(session)

    first, second = run(conversation())
    assert flags(first) == ["text", "generation_complete", "turn_complete"]
    assert usage_of(first).response_token_count == 40
    assert flags(second)[-1] == "turn_complete"


def test_activity_signals_make_one_turn_and_a_new_activity_interrupts(tls_server):
    server, cert = tls_server
    config = {**GREEDY, "max_output_tokens": 400,
              "realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}

    async def conversation() -> tuple[list, list]:
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            await session.send_realtime_input(activity_start={})
            await session.send_realtime_input(text="one")
            await session.send_realtime_input(text="two")
            with pytest.raises(asyncio.TimeoutError):  # nothing is answered before the activity ends
                await asyncio.wait_for(session.receive().__anext__(), 1.0)
            await session.send_realtime_input(activity_end={})
            iterator = session.receive().__aiter__()
            cut = [await asyncio.wait_for(iterator.__anext__(), 60) for _ in range(5)]
            await session.send_realtime_input(activity_start={})
            cut += [message async for message in iterator]
            await session.send_realtime_input(text="three")
            await session.send_realtime_input(activity_end={})
            return cut, await answer(session)

    cut, next_turn = run(conversation())
    assert flags(cut) == ["text", "interrupted", "turn_complete"]
    assert flags(next_turn)[-2:] == ["generation_complete", "turn_complete"]


@pytest.mark.parametrize("config,code,named", [
    ({"response_modalities": ["TEXT", "AUDIO"]}, 1007, "responseModalities"),
    ({**GREEDY, "tools": [{"function_declarations": [{"name": "lights"}]}]}, 1008, "function calling"),
    ({**GREEDY, "temperature": 5}, 1007, "temperature"),
    ({**GREEDY, "session_resumption": {"handle": "old"}}, 1008, "resumable"),
])
def test_what_mlxd_cannot_do_is_refused_at_setup_with_a_close_code(tls_server, config, code, named):
    server, cert = tls_server

    async def conversation() -> None:
        async with client(server, cert).aio.live.connect(model=MODEL, config=config) as session:
            await answer(session)

    with pytest.raises(genai_errors.APIError) as refused:
        run(conversation())
    assert refused.value.code == code and named in str(refused.value)


@pytest.mark.slow
def test_the_embedded_chat_model_says_paris_on_both_protocols(tmp_path: Path):
    with serving_tls("smollm2-135m", tmp_path, timeout=300) as (server, cert):
        config = {"response_modalities": ["TEXT"], "temperature": 0, "max_output_tokens": 40}
        gemini = ask((server, cert), "What is the capital of France?", config)
        with connect(f"wss://127.0.0.1:{server.port}/", ssl=ssl.create_default_context(cafile=str(cert)),
                     open_timeout=30) as ws:
            send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 40})
            ws.recv(timeout=30)
            own = run_request(ws, {"type": "text_input", "content": "What is the capital of France?", "id": "q"},
                              timeout=180)
    assert "Paris" in text_of(gemini)
    assert text_of(gemini) == tokens_text(own, "q")
    assert flags(gemini) == ["text", "generation_complete", "turn_complete"], "it stops at its end-of-turn token"
