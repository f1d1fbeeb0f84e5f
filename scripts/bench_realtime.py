"""The `realtime` section of scripts/bench.py: OpenAI Realtime through the python SDK against the original
protocol, on the same server and model, runs interleaved.

  - TTFT and decode tokens/s of one out-of-band text response (the same prompt each run, as the original
    protocol's `text_input`), measured at the client: the overhead of the wire is the difference;
  - the warm second turn of a default-conversation exchange (its prefix is cached): TTFT and cached tokens;
  - the live loop on a vision model: frames appended at `fps`, a `response.create` (conversation none) on each
    `response.done`; the age of the answered frame when its response is created;
  - the wires' own cost in this process, which a busy machine does not blur: the server's work before the
    first token (parse the request, write what precedes the first delta) and per token, for both wires.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI

from mlxd.client import Client
from mlxd.events import ResponseStarted, TokenText
from mlxd.protocols.mlxws import MlxwsWire
from mlxd.protocols.openai_realtime import RealtimeWire
from mlxd.settings import Settings


def user_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def connect(server) -> Any:
    client = AsyncOpenAI(api_key="bench", base_url=f"{server.http}/v1")
    return client.realtime.connect(model="served-model")


async def respond(connection, response: dict[str, Any] | None = None) -> tuple[float, float, Any]:
    """Ask for one response; returns (TTFT, decode tokens/s, the done response), timed at the client."""
    sent = time.perf_counter()
    await connection.response.create(**({"response": response} if response else {}))
    first = None
    while True:
        event = await asyncio.wait_for(connection.recv(), 120)
        if event.type == "response.output_text.delta" and first is None:
            first = time.perf_counter()
        elif event.type == "error":
            raise RuntimeError(event.error.message)
        elif event.type == "response.done":
            ended = time.perf_counter()
            break
    first = first or ended
    tokens = event.response.usage.output_tokens
    return first - sent, (tokens - 1) / (ended - first) if tokens > 1 and ended > first else 0.0, event.response


def text_turns(server, timed_ask: Callable, prompt: str, max_tokens: int, runs: int) -> dict[str, float]:
    """`timed_ask(client, prompt)` times one answer of the original protocol, as scripts/bench.py does."""
    async def interleaved() -> dict[str, float]:
        samples: dict[str, list[float]] = {"ttft": [], "rate": [], "rt_ttft": [], "rt_rate": []}
        async with Client(server.ws_url()) as original, connect(server) as connection:
            await original.configure(temperature=0, maxOutputTokens=max_tokens)
            await connection.session.update(session={"type": "realtime", "max_output_tokens": max_tokens,
                                                     "temperature": 0})
            for run in range(runs + 1):
                ttft, rate, _ = await timed_ask(original, prompt)
                rt_ttft, rt_rate, _ = await respond(connection, {"conversation": "none", "input": [user_item(prompt)]})
                if run:  # the first of each warms up
                    for name, value in zip(samples, (ttft, rate, rt_ttft, rt_rate), strict=True):
                        samples[name].append(value)
        return {name: statistics.median(values) for name, values in samples.items()}

    return asyncio.run(interleaved())


def second_turns(server, prompt: str, runs: int) -> tuple[float, float, int, int]:
    async def conversation() -> tuple[float, float, int, int]:
        async with connect(server) as connection:
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 16, "temperature": 0})
            await connection.conversation.item.create(item=user_item(prompt))
            first, _, _ = await respond(connection)
            await connection.conversation.item.create(item=user_item("What happened next?"))
            second, _, done = await respond(connection)
        details = done.usage.input_token_details
        return first, second, done.usage.input_tokens, details.cached_tokens

    samples = [asyncio.run(conversation()) for _ in range(runs)]
    return (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples),
            samples[0][2], samples[0][3])


def frame_loop(server, jpeg: bytes, fps: float, seconds: float, max_tokens: int) -> dict[str, float]:
    """Frames as binary messages at `fps`; each answer's frame is the newest sent before its response.create."""
    async def loop() -> dict[str, float]:
        ages: list[float] = []
        latest_sent = [0.0]
        async with connect(server) as connection:
            await connection.session.update(session={"type": "realtime", "max_output_tokens": max_tokens})

            async def sender() -> None:
                for _ in range(int(fps * seconds)):
                    latest_sent[0] = time.perf_counter()
                    await connection.send_raw(jpeg)
                    await asyncio.sleep(1 / fps)

            send_task = asyncio.create_task(sender())
            await asyncio.sleep(1 / fps)
            while not send_task.done():
                asked_about = latest_sent[0]
                await connection.response.create(response={"conversation": "none"})
                while (event := await asyncio.wait_for(connection.recv(), 60)).type != "response.done":
                    if event.type == "response.created":
                        ages.append(time.perf_counter() - asked_about)
                    elif event.type == "error":
                        raise RuntimeError(event.error.message)
            await send_task
        ages.sort()
        return {"sent": int(fps * seconds), "answered": len(ages), "age_p50_ms": 1000 * ages[len(ages) // 2],
                "age_p95_ms": 1000 * ages[int(len(ages) * 0.95)]}

    return asyncio.run(loop())


def microseconds(work: Callable[[], object], count: int = 2000) -> float:
    """Best of five rounds: the least a busy machine adds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            work()
        rounds.append((time.perf_counter() - started) / count)
    return 1e6 * min(rounds)


def wire_cost(prompt: str) -> dict[str, float]:
    settings = Settings()
    out_of_band = {"conversation": "none", "input": [user_item(prompt)]}
    request = json.dumps({"type": "response.create", "response": out_of_band})
    original_request = json.dumps({"type": "text_input", "content": prompt, "id": "q"})

    def realtime_first() -> None:
        wire = RealtimeWire(settings, "model")
        (respond,) = wire.parse(request)
        wire.encode(ResponseStarted(respond.request_id, "text"))

    def original_first() -> None:
        wire = MlxwsWire(settings)
        wire.parse(original_request)
        wire.encode(ResponseStarted("q", "text"))

    streaming = RealtimeWire(settings, "model")
    (respond,) = streaming.parse(request)
    streaming.encode(ResponseStarted(respond.request_id, "text"))
    original = MlxwsWire(settings)
    return {"first": microseconds(realtime_first), "original_first": microseconds(original_first),
            "token": microseconds(lambda: streaming.encode(TokenText(respond.request_id, " Paris"))),
            "original_token": microseconds(lambda: original.encode(TokenText("q", " Paris")))}


def realtime(text_model: str, vision_model: str, start: Callable, timed_ask: Callable, prompt: str, max_tokens: int,
             runs: int, fps: float, seconds: float, frame_tokens: int, jpeg: bytes) -> None:
    server = start(text_model, "realtime")
    try:
        turns = text_turns(server, timed_ask, prompt, max_tokens, runs)
        first, second, prompt_tokens, cached = second_turns(server, " ".join([prompt] * 20), runs)
    finally:
        server.stop()
    print(f"\n[realtime] {text_model}, {max_tokens} tokens, greedy, median of {runs} interleaved runs, "
          "client-side timing")
    print(f"{'':20}{'TTFT ms':>10}{'tok/s':>10}")
    print(f"{'original protocol':20}{1000 * turns['ttft']:>10.2f}{turns['rate']:>10.1f}")
    print(f"{'openai realtime':20}{1000 * turns['rt_ttft']:>10.2f}{turns['rt_rate']:>10.1f}")
    print(f"  realtime / original: tok/s {turns['rt_rate'] / turns['rate']:.3f}, TTFT "
          f"{1000 * (turns['rt_ttft'] - turns['ttft']):+.2f} ms")
    cost = wire_cost(prompt)
    print(f"  wire cost in process: before the first token {cost['first']:.0f} us (original "
          f"{cost['original_first']:.0f} us), per token {cost['token']:.1f} us "
          f"(original {cost['original_token']:.1f} us)")
    print(f"  conversation: turn 1 TTFT {1000 * first:.1f} ms, warm turn 2 {1000 * second:.1f} ms "
          f"({prompt_tokens} input tokens, {cached} cached)")
    server = start(vision_model, "realtime-frames")
    try:
        stream = frame_loop(server, jpeg, fps, seconds, frame_tokens)
    finally:
        server.stop()
    print(f"  frame loop: 640x480 JPEG at {fps:g} fps for {seconds:g} s, {frame_tokens} tokens per answer: "
          f"{stream['answered']} answers to {stream['sent']} frames; answered-frame age at response.created "
          f"p50 {stream['age_p50_ms']:.1f} ms, p95 {stream['age_p95_ms']:.1f} ms")
