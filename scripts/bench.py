"""Benchmark mlxd against its floor, one run, one machine, the same model each way, side by side.

Sections (all by default, or pick with --only):
  single    one stream: direct `stream_generate` in this process (the floor) against the same prompt through
            `mlxd serve` and a real WebSocket client, runs interleaved; time to first token, decode tokens/s
  batching  1, 2, 4 and 8 concurrent clients against continuous batching, and 8 clients against the same
            server with --batch-size 1 (requests served one after another): aggregate tokens/s, worst TTFT
  history   a 1,000+ token conversation: the second turn's TTFT with history on (cache reused) and off
            (the whole conversation prefilled again)
  frames    a 30 fps stream of 640x480 JPEG frames: age of each answered frame when its inference starts
            (p50/p95) and the drop count; then bytes on the wire and server CPU per frame, base64 vs binary
  gemini    Gemini Live through Google's python SDK against mlxd's own protocol, both over wss (TTFT p50/p95,
            tokens/s), and the age of the frame an answer used at 30 fps with a question every second
  peers     mlxd against mlx_lm.server (text) and mlx_vlm.server (vision) on the same model folder and BLAS,
            interleaved rounds, and against itself with the prefix cache off (scripts/peers.py says how)
  openai    (--engine openai) 1, 4 and 8 sessions three ways: mlx_lm.server alone (streamed by an HTTP client
            here: the floor), mlxd --engine openai in front of it, and mlxd local; runs interleaved. Median TTFT
            and what mlxd adds over the upstream alone, aggregate tokens/s and its ratio to the upstream alone
  realtime  OpenAI Realtime through the python SDK vs the original protocol on one server (smollm2-135m unless
            --model): TTFT and tok/s ratios, the warm second turn, the frame loop's answered-frame age
            (scripts/bench_realtime.py)
  voice     in one process on the embedded stack (SmolLM2, Silero, Whisper tiny.en, the system TTS): end of
            speech to the first audio sample, split into VAD hangover, STT, LLM first sentence and TTS (STT
            after the turn ends, and speculatively during the hangover); each model's real-time factor;
            whether the audio and engine threads overlap (scripts/bench_voice.py)

Figures are medians; compare ratios, not absolute numbers, on a machine this noisy.

    python scripts/bench.py                       # tiny random-weight models built on the fly
    python scripts/bench.py --model smollm2-135m  # the embedded chat model for `single` and `peers`
    python scripts/bench.py --only peers --model smollm2-135m
    python scripts/bench.py --engine openai       # mlxd in front of mlx_lm.server, against it alone
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine.blas import use_fast_blas

BLAS = use_fast_blas()  # the same BLAS as `mlxd serve`, so that the floor is a fair one

from mlxd.client import Client, Result
from mlxd.engine.chat_request import request_body
from mlxd.generation import GenerationConfig
from tests.helpers import ServerProcess, encoded_image
from tests.tiny_models import build_text_model, build_vision_model
from tests.upstreams import mlx_lm_server

PROMPT = "Tell me a story about a robot who learns to paint."
SECTIONS = ("single", "batching", "history", "frames", "peers", "realtime", "gemini", "voice")
UPSTREAM_SESSIONS = (1, 4, 8)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def timed_ask(client: Client, content: str) -> tuple[float, float, Result]:
    """Client-side time to first token and decode tokens/s of one answer, and its Result."""
    sent = time.perf_counter()
    reply = client.ask(content)
    first = None
    async for _ in reply:
        first = first or time.perf_counter()
    ended = time.perf_counter()
    result = await reply
    tokens = result.usage.get("completion_tokens", 0)
    first = first or ended
    return first - sent, (tokens - 1) / (ended - first) if tokens > 1 and ended > first else 0.0, result


def start(model: str | None, scratch: Path, name: str, *args: str) -> ServerProcess:
    server = ServerProcess(model, "--log-level", "warning", *args, log_path=scratch / f"{name}.log")
    server.wait_state("ready", timeout=600)
    return server


def single(model_name: str, scratch: Path, max_tokens: int, runs: int) -> None:
    from mlxd.dialogue import user_message
    from mlxd.engine.model_choice import resolve
    from mlxd.engine.models import load_model, local_path
    from mlxd.generation import GenerationConfig

    model = load_model(model_name, local_path(resolve(model_name)))
    config = GenerationConfig(temperature=0.0, max_tokens=max_tokens)

    def floor_run() -> tuple[float, float]:
        started = time.perf_counter()
        first, tokens = None, 0
        for chunk in model.generate([user_message(PROMPT)], None, [], max_tokens, config):
            first = first or time.perf_counter()
            tokens = chunk.completion_tokens
        ended = time.perf_counter()
        return first - started, (tokens - 1) / (ended - first)

    server = start(model_name, scratch, "single")
    try:
        async def interleaved() -> list[tuple[tuple[float, float], tuple[float, float]]]:
            pairs = []
            async with Client(server.ws_url()) as client:
                await client.configure(temperature=0, maxOutputTokens=max_tokens)
                for _ in range(runs + 1):
                    floor = floor_run()
                    ttft, rate, _ = await timed_ask(client, PROMPT)
                    pairs.append((floor, (ttft, rate)))
            return pairs[1:]

        pairs = asyncio.run(interleaved())
    finally:
        server.stop()
    floor_ttft, floor_rate = median([p[0][0] for p in pairs]), median([p[0][1] for p in pairs])
    ttft, rate = median([p[1][0] for p in pairs]), median([p[1][1] for p in pairs])
    print(f"\n[single] {model_name}, {max_tokens} tokens, greedy, median of {runs} interleaved runs")
    print(f"{'':8}{'TTFT ms':>10}{'tok/s':>10}")
    print(f"{'floor':8}{1000 * floor_ttft:>10.2f}{floor_rate:>10.1f}")
    print(f"{'mlxd':8}{1000 * ttft:>10.2f}{rate:>10.1f}")
    print(f"{'ratio':8}{ttft / floor_ttft:>10.2f}{rate / floor_rate:>10.2f}   (mlxd / floor)")


async def concurrent(url: str, clients: int, max_tokens: int) -> tuple[float, list[tuple[float, Result]]]:
    """Aggregate generated tokens/s, and each client-side TTFT with its Result, when `clients` ask at the same
    moment."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(Client(url)) for _ in range(clients)]
        for session in sessions:
            await session.configure(temperature=0, maxOutputTokens=max_tokens)
        started = time.perf_counter()
        results = await asyncio.gather(*(timed_ask(session, PROMPT) for session in sessions))
        elapsed = time.perf_counter() - started
    tokens = sum(result.usage["completion_tokens"] for _, _, result in results)
    return tokens / elapsed, [(ttft, result) for ttft, _, result in results]


def batching(model_name: str, scratch: Path, max_tokens: int, runs: int) -> None:
    print(f"\n[batching] {model_name}, {max_tokens} tokens per client, greedy, median of {runs} runs")
    print(f"{'clients':>8}{'server':>16}{'agg tok/s':>12}{'worst TTFT ms':>15}")
    figures = {}
    for label, args in (("sequential", ("--batch-size", "1")), ("batched", ())):
        server = start(model_name, scratch, label, *args)
        try:
            for clients in ((8,) if label == "sequential" else (1, 2, 4, 8)):
                samples = [asyncio.run(concurrent(server.ws_url(), clients, max_tokens)) for _ in range(runs)]
                rate, worst = median([s[0] for s in samples]), median([max(ttft for ttft, _ in s[1]) for s in samples])
                figures[label, clients] = rate, worst
                print(f"{clients:>8}{label:>16}{rate:>12.0f}{1000 * worst:>15.1f}")
        finally:
            server.stop()
    (batched_rate, batched_ttft), (sequential_rate, sequential_ttft) = figures["batched", 8], figures["sequential", 8]
    print(f"8 clients: {batched_rate / sequential_rate:.2f}x the aggregate tokens/s of sequential serving; worst "
          f"TTFT {1000 * batched_ttft:.1f} ms batched vs {1000 * sequential_ttft:.1f} ms sequential")


def history(model_name: str, scratch: Path, runs: int) -> None:
    opening = " ".join(f"Sentence {i}: the quick brown fox jumps over the lazy dog." for i in range(90))
    server = start(model_name, scratch, "history")
    try:
        async def conversation(keep: bool) -> tuple[Result, Result]:
            async with Client(server.ws_url()) as client:
                await client.configure(temperature=0, maxOutputTokens=16, history=keep)
                first = await client.ask(opening)
                if keep:
                    return first, await client.ask("What happened next?")
                return first, await client.ask(f"{opening}\n\nYou said: {first.text}\n\nWhat happened next?")

        samples = {keep: [asyncio.run(conversation(keep)) for _ in range(runs)] for keep in (True, False)}
    finally:
        server.stop()
    print(f"\n[history] {model_name}, server-side time to first token, median of {runs} conversations")
    for keep, label in ((True, "history on"), (False, "history off")):
        first = median([s[0].time_to_first_token for s in samples[keep]])
        second = median([s[1].time_to_first_token for s in samples[keep]])
        usage = samples[keep][0][1].usage
        print(f"  {label:12} turn 1 {1000 * first:7.1f} ms   turn 2 {1000 * second:7.1f} ms "
              f"({usage['prompt_tokens']} prompt tokens, {usage['cached_tokens']} cached)   "
              f"turn 2 / turn 1 = {second / first:.2f}")


async def frame_stream(url: str, fps: float, seconds: float, max_tokens: int) -> dict[str, float]:
    """Send frames at `fps`; the age of an answered frame is its inference start minus its send time."""
    frame = "data:image/jpeg;base64," + base64.b64encode(encoded_image(640, 480)).decode()
    sent_at: dict[str, float] = {}
    ages: list[float] = []
    dropped = answered = 0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "max_tokens_image": max_tokens}))
        await ws.recv()

        async def sender() -> None:
            for i in range(int(fps * seconds)):
                sent_at[f"f{i}"] = time.time()
                await ws.send(json.dumps({"type": "video_frame", "frame": frame, "id": f"f{i}"}))
                await asyncio.sleep(1 / fps)

        send_task = asyncio.create_task(sender())
        total = int(fps * seconds)
        while dropped + answered < total:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if message["type"] == "response_start":
                ages.append(message["timestamp"] - sent_at[message["id"]])
            elif message["type"] == "response_complete":
                answered += 1
            elif message["type"] == "frame_dropped":
                dropped += 1
        await send_task
    ages.sort()
    return {"sent": total, "answered": answered, "dropped": dropped,
            "age_p50_ms": 1000 * ages[len(ages) // 2], "age_p95_ms": 1000 * ages[int(len(ages) * 0.95)]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


async def wire_cost(url: str, pid: int, binary: bool, count: int) -> tuple[float, float]:
    """Bytes per frame message, and server CPU seconds per frame (one at a time, one token each)."""
    jpeg = encoded_image(640, 480)
    header = json.dumps({"type": "video_frame", "id": "w"}).encode()
    message: str | bytes = (len(header).to_bytes(4, "big") + header + jpeg if binary else
                            json.dumps({"type": "video_frame", "id": "w",
                                        "frame": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}))
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", "max_tokens_image": 1}))
        await ws.recv()
        before = cpu_seconds(pid)
        for _ in range(count):
            await ws.send(message)
            while json.loads(await ws.recv())["type"] not in ("response_complete", "error", "frame_dropped"):
                pass
        spent = cpu_seconds(pid) - before
    return len(message), spent / count


def frames(model_name: str, scratch: Path, fps: float, seconds: float, tokens: int, count: int) -> None:
    server = start(model_name, scratch, "frames")
    try:
        stream = asyncio.run(frame_stream(server.ws_url(), fps, seconds, tokens))
        costs = {binary: asyncio.run(wire_cost(server.ws_url(), server.process.pid, binary, count))
                 for binary in (False, True)}
    finally:
        server.stop()
    print(f"\n[frames] {model_name}, 640x480 JPEG at {fps:g} fps for {seconds:g} s, {tokens} tokens per answer")
    print(f"  sent {stream['sent']}, answered {stream['answered']}, dropped {stream['dropped']}; age at inference "
          f"start p50 {stream['age_p50_ms']:.1f} ms, p95 {stream['age_p95_ms']:.1f} ms")
    for binary, label in ((False, "base64 JSON"), (True, "binary")):
        size, cpu = costs[binary]
        print(f"  {label:12} {size:>8} bytes per frame, server CPU {1000 * cpu:6.2f} ms per frame "
              f"(decode + 1-token answer, {count} frames)")


async def ask_upstream(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> tuple[float, int]:
    """One streamed answer straight from the upstream: (TTFT, completion tokens)."""
    body = request_body(model, [{"role": "user", "content": PROMPT}], GenerationConfig(temperature=0), max_tokens)
    sent = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                first = time.perf_counter()
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    return (first or time.perf_counter()) - sent, tokens


async def upstream_round(url: str, model: str, sessions: int, max_tokens: int) -> tuple[float, float, float]:
    """(median TTFT, aggregate tokens/s, 0) of `sessions` direct streams started together."""
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(ask_upstream(client, url, model, max_tokens) for _ in range(sessions)))
        elapsed = time.perf_counter() - started
    return median([ttft for ttft, _ in results]), sum(tokens for _, tokens in results) / elapsed, 0.0


async def mlxd_round(ws_url: str, sessions: int, max_tokens: int) -> tuple[float, float, float]:
    """The same through mlxd, and mlxd's own share of the TTFT: the client's TTFT less the server's own
    (from the engine starting the job to its first token: for the openai engine, the upstream's first byte)."""
    rate, results = await concurrent(ws_url, sessions, max_tokens)
    return (median([ttft for ttft, _ in results]), rate,
            median([ttft - (result.time_to_first_token or 0.0) for ttft, result in results]))


def upstream_comparison(model: str, scratch: Path, max_tokens: int, runs: int) -> None:
    upstream = mlx_lm_server(Path(model), scratch / "upstream")
    front = local = None
    try:
        upstream.wait_healthy()
        front = start(None, scratch, "front", "--engine", "openai", "--upstream", upstream.url,
                      "--upstream-model", str(Path(model).resolve()))
        local = start(model, scratch, "local")
        figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for sessions in UPSTREAM_SESSIONS:
            for _ in range(runs + 1):  # the first of each is a warm-up, left out
                for label, round_ in (
                        ("upstream", upstream_round(upstream.url, str(Path(model).resolve()), sessions, max_tokens)),
                        ("front", mlxd_round(front.ws_url(), sessions, max_tokens)),
                        ("local", mlxd_round(local.ws_url(), sessions, max_tokens))):
                    figures.setdefault((label, sessions), []).append(asyncio.run(round_))
    finally:
        for server in (front, local):
            if server is not None:
                server.stop()
        upstream.stop()
    print(f"\n[openai] tiny llama, {max_tokens} tokens per session, greedy, median of {runs} interleaved runs;"
          " added TTFT and the tok/s ratio are medians of the per-run differences and ratios")
    print(f"{'sessions':>8}{'path':>10}{'TTFT ms':>10}{'agg tok/s':>11}{'own ms':>8}   vs upstream alone "
          "(own: the TTFT less the server's own time to first token)")
    for sessions in UPSTREAM_SESSIONS:
        floor = figures["upstream", sessions][1:]
        for label in ("upstream", "front", "local"):
            measured = figures[label, sessions][1:]
            ttft, rate, own = (median([run[i] for run in measured]) for i in range(3))
            added = median([run[0] - base[0] for run, base in zip(measured, floor, strict=True)])
            ratio = median([run[1] / base[1] for run, base in zip(measured, floor, strict=True)])
            versus = "" if label == "upstream" else f"TTFT {1000 * added:+.2f} ms, tok/s x{ratio:.3f}"
            print(f"{sessions:>8}{label:>10}{1000 * ttft:>10.2f}{rate:>11.0f}{1000 * own:>8.2f}   {versus}")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="text model for `single` (default: a tiny random-weight llama)")
    parser.add_argument("--vision-model", help="vision model for `frames` (default: a tiny gemma3)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frame-tokens", type=int, default=16)
    parser.add_argument("--wire-frames", type=int, default=100)
    parser.add_argument("--gemini-runs", type=int, default=20, help="runs of each protocol in `gemini`")
    parser.add_argument("--peer-rounds", type=int, default=3, help="counted rounds of `peers` (after one warm-up)")
    parser.add_argument("--peer-tokens", type=int, nargs="+", default=[64, 256], help="tokens per answer in `peers`")
    parser.add_argument("--peer-fps", type=float, default=2.0, help="frames per second per client in `peers`")
    parser.add_argument("--voice-runs", type=int, default=3, help="cascades timed in `voice` (after a warm-up)")
    parser.add_argument("--engine", choices=["local", "openai"], default="local",
                        help="openai: only the `openai` section (mlxd in front of mlx_lm.server)")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    print(f"BLAS: {BLAS or 'mlx default'}")
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        tiny_text = str(build_text_model(scratch / "tiny-llama"))
        if args.engine == "openai":
            upstream_comparison(tiny_text, scratch, args.max_tokens, args.runs)
            return
        vision = args.vision_model or str(build_vision_model(scratch / "tiny-gemma3"))
        if "single" in sections:
            single(args.model or tiny_text, scratch, args.max_tokens, args.runs)
        if "batching" in sections:
            batching(tiny_text, scratch, args.max_tokens, args.runs)
        if "history" in sections:
            history(tiny_text, scratch, args.runs)
        if "frames" in sections:
            frames(vision, scratch, args.fps, args.seconds, args.frame_tokens, args.wire_frames)
        if "peers" in sections:
            from scripts.peers import text_peers, vision_peers

            print(f"load before `peers`: {os.getloadavg()}")
            text_peers(args.model or tiny_text, scratch, BLAS, args.peer_rounds, tuple(args.peer_tokens))
            vision_peers(vision, scratch, BLAS, args.peer_rounds, args.peer_tokens[0], args.peer_fps, args.seconds)
            print(f"load after `peers`: {os.getloadavg()}")
        if "realtime" in sections:
            from bench_realtime import realtime

            realtime(args.model or "smollm2-135m", vision, lambda model, name: start(model, scratch, name), timed_ask,
                     PROMPT, args.max_tokens, args.runs, args.fps, args.seconds, args.frame_tokens,
                     encoded_image(640, 480))
        if "gemini" in sections:
            from scripts.bench_gemini import gemini

            gemini(args.model or tiny_text, vision, scratch, args.max_tokens, args.gemini_runs, args.fps,
                   args.seconds, args.frame_tokens)
        if "voice" in sections:
            from scripts.bench_voice import voice

            voice(args.voice_runs, args.max_tokens)


if __name__ == "__main__":
    main()
