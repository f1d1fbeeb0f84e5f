"""Benchmark: mlxd over a WebSocket against the in-process floor, and frame freshness under a 30 fps stream.

One run, one machine, the same model two ways:
  floor   mlx_lm / mlx_vlm `stream_generate` called directly in this process
  mlxd    the same prompt through `python -m mlxd serve` and a real WebSocket client
It prints time to first token and decode tokens/s for both and the ratio to the floor, then streams frames
at 30 fps to a vision model and prints the age of each answered frame when its inference starts (p50/p95)
and how many were dropped. Figures are medians of several runs; compare ratios, not absolute numbers.

    python scripts/bench.py                       # tiny random-weight models built on the fly
    python scripts/bench.py --model smollm2-135m  # the embedded chat model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.blas import use_fast_blas

BLAS = use_fast_blas()  # the same BLAS as `mlxd serve`, so that the floor is a fair one

from tests.helpers import ServerProcess, image_b64
from tests.tiny_models import build_text_model, build_vision_model

PROMPT = "Tell me a story about a robot who learns to paint."


def floor(model_name: str, max_tokens: int, runs: int) -> tuple[float, float]:
    """Median (time to first token, decode tokens/s) of direct stream_generate, greedy."""
    from mlxd.generation import GenerationConfig
    from mlxd.model_choice import resolve
    from mlxd.models import load_model, local_path

    model = load_model(model_name, local_path(resolve(model_name)))
    config = GenerationConfig(temperature=0.0, max_tokens=max_tokens)
    ttfts, rates = [], []
    for _ in range(runs + 1):
        started = time.perf_counter()
        first = None
        tokens = 0
        for chunk in model.generate(PROMPT, None, [], max_tokens, config):
            first = first or time.perf_counter()
            tokens = chunk.completion_tokens
        ended = time.perf_counter()
        ttfts.append(first - started)
        rates.append((tokens - 1) / (ended - first) if tokens > 1 else 0.0)
    return statistics.median(ttfts[1:]), statistics.median(rates[1:])


async def through_mlxd(url: str, max_tokens: int, runs: int) -> tuple[float, float]:
    ttfts, rates = [], []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "temperature": 0, "maxOutputTokens": max_tokens}))
        await ws.recv()
        for run in range(runs + 1):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "text_input", "content": PROMPT, "id": f"r{run}"}))
            first = None
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "token" and first is None:
                    first = time.perf_counter()
                if message["type"] == "response_complete":
                    ended = time.perf_counter()
                    tokens = message["usage"]["completion_tokens"]
                    break
            ttfts.append(first - sent)
            rates.append((tokens - 1) / (ended - first) if tokens > 1 else 0.0)
    return statistics.median(ttfts[1:]), statistics.median(rates[1:])


async def frame_stream(url: str, fps: float, seconds: float, max_tokens: int) -> dict[str, float]:
    """Send frames at `fps`; the age of an answered frame is its inference start minus its send time."""
    frame = image_b64(640, 480)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="text model (default: a tiny random-weight llama)")
    parser.add_argument("--vision-model", help="vision model for the frame stream (default: a tiny gemma3)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frame-tokens", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        text_model = args.model or str(build_text_model(scratch_path / "tiny-llama"))
        vision_model = args.vision_model or str(build_vision_model(scratch_path / "tiny-gemma3"))

        floor_ttft, floor_rate = floor(text_model, args.max_tokens, args.runs)
        server = ServerProcess(text_model, "--log-level", "warning", log_path=scratch_path / "text.log")
        try:
            server.wait_state("ready", timeout=600)
            served_ttft, served_rate = asyncio.run(through_mlxd(server.ws_url(), args.max_tokens, args.runs))
        finally:
            server.stop()

        server = ServerProcess(vision_model, "--log-level", "warning", log_path=scratch_path / "vision.log")
        try:
            server.wait_state("ready", timeout=600)
            frames = asyncio.run(frame_stream(server.ws_url(), args.fps, args.seconds, args.frame_tokens))
        finally:
            server.stop()

    print(f"text model: {args.model or 'tiny llama (random weights)'}, {args.max_tokens} tokens, "
          f"median of {args.runs} runs, greedy; BLAS: {BLAS or 'mlx default'}")
    print(f"{'':8}{'TTFT ms':>10}{'tok/s':>10}")
    print(f"{'floor':8}{1000 * floor_ttft:>10.2f}{floor_rate:>10.1f}")
    print(f"{'mlxd':8}{1000 * served_ttft:>10.2f}{served_rate:>10.1f}")
    print(f"{'ratio':8}{served_ttft / floor_ttft:>10.2f}{served_rate / floor_rate:>10.2f}   (mlxd / floor)")
    print(f"frames: {args.vision_model or 'tiny gemma3 (random weights)'}, 640x480 JPEG at {args.fps:g} fps for "
          f"{args.seconds:g} s, {args.frame_tokens} tokens per answer")
    print(f"  sent {frames['sent']}, answered {frames['answered']}, dropped {frames['dropped']}; age at "
          f"inference start p50 {frames['age_p50_ms']:.1f} ms, p95 {frames['age_p95_ms']:.1f} ms")


if __name__ == "__main__":
    main()
