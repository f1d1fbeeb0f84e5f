"""`scripts/bench.py --only gemini`: Gemini Live through Google's python SDK against mlxd's own protocol, one
server, one model, both over wss, runs interleaved; then the age of the frame an answer used while frames
stream at 30 fps and a question comes every second.

TTFT is measured by the client from sending the turn to its first text; decode tokens/s from the first text
to the end of the answer. mlxd's protocol runs with history on, so that both answers take the engine's
conversation path and the difference is the wire's. Each run opens its own connection (outside the timing)
so that no run reuses another's conversation.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import time
from pathlib import Path

import websockets
from google.genai import types

from tests.gemini_sdk import MODEL, client, serving_tls, user_turn
from tests.helpers import encoded_image

PROMPT = "Tell me a story about a robot who learns to paint."


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def mlxd_run(url: str, trust: ssl.SSLContext, max_tokens: int) -> tuple[float, float]:
    async with websockets.connect(url, ssl=trust, max_size=None) as ws:
        # history on: a conversation answer, served by the engine as every Gemini Live answer is
        await ws.send(json.dumps({"type": "config", "temperature": 0, "maxOutputTokens": max_tokens, "history": True}))
        await ws.recv()
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "text_input", "content": PROMPT, "id": "q"}))
        first = None
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message["type"] == "token" and first is None:
                first = time.perf_counter()
            if message["type"] in ("response_complete", "error"):
                return _timings(sent, first, time.perf_counter(), message.get("usage", {}).get("completion_tokens", 0))


async def gemini_run(sdk, max_tokens: int) -> tuple[float, float]:
    config = {"response_modalities": ["TEXT"], "temperature": 0, "max_output_tokens": max_tokens}
    async with sdk.aio.live.connect(model=MODEL, config=config) as session:
        sent = time.perf_counter()
        await session.send_client_content(turns=user_turn(PROMPT))
        first, tokens = None, 0
        async for message in session.receive():
            if message.text and first is None:
                first = time.perf_counter()
            if message.usage_metadata is not None:
                tokens = message.usage_metadata.response_token_count or 0
        return _timings(sent, first, time.perf_counter(), tokens)


def _timings(sent: float, first: float | None, ended: float, tokens: int) -> tuple[float, float]:
    first = first or ended
    return first - sent, (tokens - 1) / (ended - first) if tokens > 1 and ended > first else 0.0


async def frame_ages(sdk, fps: float, seconds: float, max_tokens: int) -> tuple[list[float], int]:
    """Ages (first text of an answer minus the send time of the newest frame before its question)."""
    frame = types.Blob(data=encoded_image(640, 480), mime_type="image/jpeg")
    config = {"response_modalities": ["TEXT"], "temperature": 0, "max_output_tokens": max_tokens}
    newest_at: list[float] = []
    async with sdk.aio.live.connect(model=MODEL, config=config) as session:
        stop = asyncio.Event()

        async def stream() -> int:
            sent = 0
            while not stop.is_set():
                await session.send_realtime_input(video=frame)
                newest = time.perf_counter()
                sent += 1
                if sent % round(fps) == 0:  # a question every second, right after a frame
                    newest_at.append(newest)
                    await session.send_realtime_input(text="What do you see now?")
                await asyncio.sleep(1 / fps)
            return sent

        streamer = asyncio.create_task(stream())
        ages = []
        for index in range(int(seconds)):
            first = None
            async for message in session.receive():
                if message.text and first is None:
                    first = time.perf_counter()
            ages.append((first or time.perf_counter()) - newest_at[index])
        stop.set()
        return ages, await streamer


def gemini(model_name: str, vision_model: str, scratch: Path, max_tokens: int, runs: int, fps: float,
           seconds: float, frame_tokens: int) -> None:
    with serving_tls(model_name, scratch / "gemini-text", "--log-level", "warning", timeout=600) as (server, cert):
        trust, sdk = ssl.create_default_context(cafile=str(cert)), client(server, cert)
        url = f"wss://127.0.0.1:{server.port}/"

        async def interleaved() -> list[tuple[tuple[float, float], tuple[float, float]]]:
            pairs = []
            for run in range(runs + 1):  # the order alternates, so that a drift in load favours neither
                if run % 2:
                    gemini_first = await gemini_run(sdk, max_tokens)
                    pairs.append((await mlxd_run(url, trust, max_tokens), gemini_first))
                else:
                    pairs.append((await mlxd_run(url, trust, max_tokens), await gemini_run(sdk, max_tokens)))
            return pairs[1:]

        pairs = asyncio.run(interleaved())
    print(f"\n[gemini] {model_name}, {max_tokens} tokens, greedy, {runs} interleaved runs, both over wss")
    print(f"{'':22}{'TTFT p50 ms':>12}{'TTFT p95 ms':>12}{'tok/s p50':>11}")
    figures = {}
    for index, label in ((0, "mlxd protocol"), (1, "Gemini Live (SDK)")):
        ttfts, rates = [p[index][0] for p in pairs], [p[index][1] for p in pairs]
        figures[index] = statistics.median(ttfts), statistics.median(rates)
        print(f"{label:22}{1000 * figures[index][0]:>12.2f}{1000 * percentile(ttfts, 0.95):>12.2f}"
              f"{figures[index][1]:>11.1f}")
    (base_ttft, base_rate), (ttft, rate) = figures[0], figures[1]
    print(f"Gemini - mlxd: TTFT p50 {1000 * (ttft - base_ttft):+.2f} ms (goal <= +2 ms); tok/s "
          f"{100 * rate / base_rate:.1f}% (goal >= 97%)")
    frames_through_gemini(vision_model, scratch, fps, seconds, frame_tokens)


def frames_through_gemini(vision_model: str, scratch: Path, fps: float, seconds: float, tokens: int) -> None:
    with serving_tls(vision_model, scratch / "gemini-vision", "--log-level", "warning", timeout=600) as (server, cert):
        ages, sent = asyncio.run(frame_ages(client(server, cert), fps, seconds, tokens))
    print(f"[gemini frames] {vision_model}, 640x480 JPEG at {fps:g} fps, a question every second for "
          f"{seconds:g} s, {tokens} tokens per answer: {sent} frames sent")
    print(f"  age of the frame an answer used, at its first token: p50 {1000 * statistics.median(ages):.1f} ms, "
          f"p95 {1000 * percentile(ages, 0.95):.1f} ms")
