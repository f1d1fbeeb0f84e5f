"""The `peers` section of bench.py: mlxd against the servers that ship with the libraries it builds on.

`mlx_lm.server` (text) or `mlx_vlm.server` (vision) runs on the same model folder with the same BLAS as
mlxd (LD_PRELOAD of the OpenBLAS mlxd loads), and the same workload goes to every server in interleaved
rounds of one run: N clients at once with distinct questions under one shared system prompt, greedy,
aggregate tokens/s over the round's wall time and worst/median time to first token (TTFT, from sending to
the first text), then a frame stream (clients at 2 fps with one frame prompt; a peer gets each frame as a
request, the newest waiting frame sent when the previous answer ends, which is what mlxd does server-side).
The first round warms every server up (model load, prompt caches) and is not counted. mlxd is driven by
`mlxd.client` (one session per client, kept open; images as binary messages), a peer by streamed chat
completions over HTTP (images as data URIs), each the way its own clients talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from mlxd.client import Client, Response, Result
from tests.helpers import ServerProcess
from tests.upstreams import UpstreamProcess, cpu_seconds, mlx_lm_server, mlx_vlm_server

SYSTEM = ("You are a meticulous assistant for a small museum of clocks and scientific instruments. "
          "Answer visitors' questions about the collection, the history of timekeeping, and how mechanical "
          "movements work. Be precise, friendly and brief, and prefer plain words to jargon. ") * 4
QUESTIONS = ["How does a pendulum keep time?", "What is an escapement?", "Who invented the marine chronometer?",
             "Why do clocks run clockwise?", "What is a tourbillon for?", "How accurate is a quartz watch?",
             "What did sundials get wrong?", "How do atomic clocks work?"]
FRAME_PROMPT = "Describe what changed on the screen."


@dataclass
class Peer:
    """`mlx_lm.server` or `mlx_vlm.server` on the model folder (tests/upstreams.py starts it), and what its
    requests name."""

    name: str
    upstream: UpstreamProcess
    model_field: dict[str, str]

    @property
    def http(self) -> str:
        return self.upstream.root

    def stop(self) -> None:
        self.upstream.stop()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


async def ask_peer(http: httpx.AsyncClient, peer: Peer, system: str | None, question: str, max_tokens: int,
                   image: bytes | None = None) -> tuple[float, int]:
    """One streamed chat completion: (TTFT, completion tokens)."""
    content: str | list = question if image is None else [
        {"type": "image_url", "image_url": {"url": data_uri(image)}}, {"type": "text", "text": question}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = {**peer.model_field, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first, pieces, usage = None, 0, None
    async with http.stream("POST", f"{peer.http}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    pieces += 1
    tokens = usage["completion_tokens"] if usage else pieces
    return (first or time.perf_counter()) - sent, tokens


async def mlxd_client(url: str, max_tokens: int) -> Client:
    """One mlxd session, configured once and kept open, as a client of a daemon does."""
    client = await Client(url).__aenter__()
    await client.configure(temperature=0, maxOutputTokens=max_tokens, max_tokens_image=max_tokens)
    return client


async def timed(reply: Response) -> tuple[float, Result]:
    """Time from now to the first text of a reply, and its Result."""
    sent, first = time.perf_counter(), None
    async for _ in reply:
        first = first or time.perf_counter()
    result = await reply
    return (first or time.perf_counter()) - sent, result


async def ask_mlxd(client: Client, system: str | None, question: str, image: bytes | None) -> tuple[float, int]:
    reply = client.ask(question, system) if image is None else client.send_image(image, question)
    ttft, result = await timed(reply)
    return ttft, result.usage["completion_tokens"]


async def round_of(target: object, clients: int, max_tokens: int, system: str | None, same_prompt: bool,
                   image: bytes | None) -> dict[str, float]:
    """`clients` requests at once against one server: aggregate tokens/s, worst and median TTFT."""
    questions = [QUESTIONS[0] if same_prompt else QUESTIONS[i % len(QUESTIONS)] for i in range(clients)]
    if isinstance(target, str):
        sessions = [await mlxd_client(target, max_tokens) for _ in range(clients)]
        started = time.perf_counter()
        results = await asyncio.gather(*(ask_mlxd(s, system, q, image) for s, q in zip(sessions, questions,
                                                                                     strict=True)))
        elapsed = time.perf_counter() - started
        for session in sessions:
            await session.close()
    else:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as http:
            started = time.perf_counter()
            results = await asyncio.gather(*(ask_peer(http, target, system, q, max_tokens, image)
                                             for q in questions))
            elapsed = time.perf_counter() - started
    ttfts = [ttft for ttft, _ in results]
    tokens = sum(count for _, count in results)
    return {"rate": tokens / elapsed, "worst": max(ttfts), "median": statistics.median(ttfts), "tokens": tokens}


def frames_jpegs(count: int) -> list[bytes]:
    """640x480 screens that differ a little from one to the next, as a screen share does."""
    jpegs = []
    for i in range(count):
        image = Image.new("RGB", (640, 480), (30, 30, 40))
        image.paste((200, 180, 40), (20 + 25 * i, 40, 120 + 25 * i, 140))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        jpegs.append(buffer.getvalue())
    return jpegs


async def frame_client(target: object, jpegs: list[bytes], fps: float, max_tokens: int) -> list[float]:
    """Latency of each answered frame: from the moment it was captured to its last token."""
    latencies: list[float] = []
    if isinstance(target, str):
        client = await mlxd_client(target, max_tokens)

        async def answered(reply: Response, at: float) -> None:
            if not (await reply).dropped:
                latencies.append(time.perf_counter() - at)

        replies = []
        for jpeg in jpegs:
            replies.append(asyncio.create_task(answered(client.send_frame(jpeg, FRAME_PROMPT), time.perf_counter())))
            await asyncio.sleep(1 / fps)
        await asyncio.wait_for(asyncio.gather(*replies), 600)
        await client.close()
        return latencies
    async with httpx.AsyncClient() as http:
        started = time.perf_counter()
        next_frame = 0
        while next_frame < len(jpegs):
            now = time.perf_counter()
            newest = min(len(jpegs) - 1, int((now - started) * fps))
            if newest < next_frame:
                await asyncio.sleep(started + next_frame / fps - now)
                continue
            await ask_peer(http, target, None, FRAME_PROMPT, max_tokens, jpegs[newest])
            latencies.append(time.perf_counter() - (started + newest / fps))
            next_frame = newest + 1
    return latencies


async def frame_round(target: object, clients: int, jpegs: list[bytes], fps: float, max_tokens: int) -> dict:
    runs = await asyncio.gather(*(frame_client(target, jpegs, fps, max_tokens) for _ in range(clients)))
    latencies = sorted(value for run in runs for value in run)
    return {"answered": len(latencies), "p50": latencies[len(latencies) // 2],
            "p95": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]}


def mlxd_server(model: str, scratch: Path, name: str, *args: str) -> ServerProcess:
    server = ServerProcess(model, "--log-level", "warning", "--max-pending", "64", *args,
                           log_path=scratch / f"{name}.log")
    server.wait_state("ready", timeout=600)
    return server


def _targets(kind: str, model: str, scratch: Path, blas: Path | None) -> dict[str, object]:
    from mlxd.engine.model_choice import resolve
    from mlxd.engine.models import local_path

    folder, env = local_path(resolve(model)), {"LD_PRELOAD": str(blas)} if blas else {}
    if kind == "text":
        peer = Peer("mlx_lm.server", mlx_lm_server(folder, scratch, env=env), {})
    else:
        peer = Peer("mlx_vlm.server", mlx_vlm_server(folder, scratch, env=env), {"model": str(folder)})
    servers = {peer.name: peer, "mlxd": mlxd_server(model, scratch, f"mlxd-{kind}"),
               "mlxd, no prefix cache": mlxd_server(model, scratch, f"mlxd-{kind}-cold", "--prefix-cache-bytes", "0")}
    peer.upstream.wait_healthy(timeout=600)
    print(f"  {peer.name}: {' '.join(peer.upstream.command[1:])}")
    return servers


def _stop(targets: dict[str, object]) -> None:
    for target in targets.values():
        target.stop()


def _url(target: object) -> object:
    return target if isinstance(target, Peer) else target.ws_url()


def _pid(target: object) -> int:
    process = target.upstream.process if isinstance(target, Peer) else target.process
    return process.pid


def _interleaved(targets: dict[str, object], rounds: int, cases: list[tuple], run) -> dict:
    """Every case against every server, round after round, the server order rotating; round 0 warms up."""
    figures: dict = {}
    names = list(targets)
    for index in range(rounds + 1):
        for case in cases:
            order = names[index % len(names):] + names[:index % len(names)]
            for name in order:
                cpu = cpu_seconds(_pid(targets[name]))
                result = asyncio.run(run(_url(targets[name]), *case))
                if "tokens" in result:
                    result["cpu_per_token"] = (cpu_seconds(_pid(targets[name])) - cpu) / max(1, result["tokens"])
                if index:
                    figures.setdefault((name, *case), []).append(result)
    return {key: {k: statistics.median(r[k] for r in results) for k in results[0]} for key, results in figures.items()}


def _print_rounds(figures: dict, peer: str, cases: list[tuple], rounds: int) -> None:
    print(f"  medians of {rounds} rounds; ratios are mlxd / {peer} (tok/s: higher is better; TTFT: lower is better),"
          " and mlxd / mlxd without the prefix cache")
    print("  CPU ms/token: the server process's user+system CPU time (every thread) per generated token")
    print(f"  {'clients':>7} {'tokens':>6} {'server':>22} {'agg tok/s':>10} {'worst TTFT':>11} {'median TTFT':>12}"
          f" {'CPU ms/token':>13}")
    for case in cases:
        clients = f"{case[2]} {case[0]}".strip()
        for name in (peer, "mlxd", "mlxd, no prefix cache"):
            f = figures[(name, *case)]
            print(f"  {clients:>7} {case[1]:>6} {name:>22} {f['rate']:>10.1f} {1000 * f['worst']:>9.1f}ms "
                  f"{1000 * f['median']:>10.1f}ms {1000 * f['cpu_per_token']:>13.2f}")
        ours, theirs, cold = figures[("mlxd", *case)], figures[(peer, *case)], figures[("mlxd, no prefix cache", *case)]
        for label, other in (("ratio vs peer", theirs), ("ratio vs no cache", cold)):
            print(f"  {'':>7} {'':>6} {label:>22} {ours['rate'] / other['rate']:>10.2f} "
                  f"{ours['worst'] / other['worst']:>11.2f} {ours['median'] / other['median']:>12.2f} "
                  f"{ours['cpu_per_token'] / other['cpu_per_token']:>13.2f}")


def text_peers(model: str, scratch: Path, blas: Path | None, rounds: int, tokens: tuple[int, ...]) -> None:
    print(f"\n[peers: text] {model}, greedy, distinct questions under one shared system prompt "
          f"({len(SYSTEM)} characters); 'new' rows: a system prompt no server has seen, new every round")
    targets = _targets("text", model, scratch, blas)
    cases = [(clients, count, "") for count in tokens for clients in (1, 4, 8)] + [(8, tokens[0], "new")]
    fresh = iter(range(10**6))

    def run(url: object, clients: int, count: int, new: str) -> object:
        system = f"Visitor group {next(fresh)}. {SYSTEM}" if new else SYSTEM
        return round_of(url, clients, count, system, False, None)

    try:
        figures = _interleaved(targets, rounds, cases, run)
    finally:
        _stop(targets)
    _print_rounds(figures, "mlx_lm.server", cases, rounds)


def vision_peers(model: str, scratch: Path, blas: Path | None, rounds: int, tokens: int, fps: float,
                 seconds: float) -> None:
    print(f"\n[peers: vision] {model}, greedy, one 640x480 JPEG, the SAME question for every client "
          "(mlx_vlm.server 0.7.10 fails concurrent image requests whose prompts differ in length)")
    targets = _targets("vision", model, scratch, blas)
    image = frames_jpegs(1)[0]
    cases = [(clients, tokens, "") for clients in (1, 4, 8)]
    jpegs = frames_jpegs(int(fps * seconds))
    try:
        figures = _interleaved(targets, rounds, cases, lambda url, clients, count, _: round_of(
            url, clients, count, None, True, image))
        stream = _interleaved(targets, rounds, [(8,)], lambda url, clients: frame_round(
            url, clients, jpegs, fps, tokens))
    finally:
        _stop(targets)
    _print_rounds(figures, "mlx_vlm.server", cases, rounds)
    print(f"  frame stream: 8 clients at {fps:g} fps for {seconds:g} s, {tokens} tokens per answer; latency from "
          "capture to the last token of an answered frame")
    for name in ("mlx_vlm.server", "mlxd", "mlxd, no prefix cache"):
        f = stream[(name, 8)]
        print(f"  {name:>22} answered {f['answered']:>5.0f}  p50 {1000 * f['p50']:8.1f} ms  "
              f"p95 {1000 * f['p95']:8.1f} ms")
    ours, theirs = stream[("mlxd", 8)], stream[("mlx_vlm.server", 8)]
    print(f"  {'ratio vs peer':>22} p50 {ours['p50'] / theirs['p50']:.2f}  p95 {ours['p95'] / theirs['p95']:.2f}")
