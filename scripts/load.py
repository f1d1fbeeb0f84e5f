"""Load: clients streaming frames at 30 fps while others ask text questions, a client connecting and
disconnecting in a loop and a slow reader, against a real server.

Every text question must be answered, every frame either answered or reported dropped (exactly one terminal
message each), resident memory must come back near its baseline (and, in a long run, not drift), the event
loop must stay responsive (its lag, mlxd_event_loop_lag_seconds: how late the loop wakes a sleeping task,
read from /metrics), and the server's open file descriptors must be back at their baseline at the end.

    python scripts/load.py                                  # 8 frame clients at 30 fps + 2 askers for 60 s
    python scripts/load.py --duration 10 --frame-clients 4  # shorter
    python scripts/load.py --model PATH --json              # a given vision model; a JSON summary at the end
    python scripts/load.py --duration 600 --max-lag-p99 0.02 --max-rss-drift 0.05   # the 10-minute soak

The server is started here (`python -m mlxd serve`) on a tiny random-weight Gemma 3 unless --model is given.
Exits 1 if an invariant does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import websockets
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import ServerProcess, rss_bytes
from tests.tiny_models import build_vision_model

LAG_METRIC = "mlxd_event_loop_lag_seconds"
SETTLE_SECONDS = 3.0
ANSWER_TIMEOUT_SECONDS = 60.0


@dataclass
class Tally:
    frames_sent: int = 0
    frames_answered: int = 0
    frames_dropped: Counter[str] = field(default_factory=Counter)
    frame_errors: list[str] = field(default_factory=list)
    duplicate_terminals: int = 0
    questions_asked: int = 0
    questions_answered: int = 0
    question_seconds: list[float] = field(default_factory=list)
    connects: int = 0
    slow_answers: int = 0
    failures: list[str] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)


def noise_jpeg(width: int, height: int) -> str:
    """A frame that compresses like a camera picture does (badly), as a data URI."""
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 48).convert("RGB").save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


async def stream_frames(url: str, client: int, frame: str, fps: float, duration: float, tally: Tally) -> None:
    terminals: dict[str, str] = {}
    sent: list[str] = []
    async with websockets.connect(url, max_size=None) as ws:

        async def send_at_fps() -> None:
            started = time.monotonic()
            for i in range(int(fps * duration)):
                await asyncio.sleep(max(0.0, started + i / fps - time.monotonic()))
                request_id = f"c{client}f{i}"
                sent.append(request_id)
                await ws.send(json.dumps({"type": "video_frame", "frame": frame, "id": request_id}))

        sender = asyncio.create_task(send_at_fps())
        try:
            await receive_terminals(ws, sender, sent, terminals, tally)
        finally:
            sender.cancel()
            tally.frames_sent += len(sent)  # those of a connection that died count as unaccounted
            await asyncio.gather(sender, return_exceptions=True)


async def receive_terminals(ws, sender: asyncio.Task, sent: list[str], terminals: dict[str, str],
                            tally: Tally) -> None:
    while not (sender.done() and len(terminals) >= len(sent)):
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else "none"
            raise RuntimeError(f"frame connection closed after {len(sent)} frames (close code {code})") from None
        if message["type"] not in ("response_complete", "frame_dropped", "error"):
            continue
        if message["id"] in terminals:
            tally.duplicate_terminals += 1
        terminals[message["id"]] = message.get("reason") or message.get("code") or message["type"]
        if message["type"] == "response_complete":
            tally.frames_answered += 1
        elif message["type"] == "frame_dropped":
            tally.frames_dropped[message["reason"]] += 1
        else:
            tally.frame_errors.append(message["code"])
    await sender


async def ask_questions(url: str, client: int, duration: float, tally: Tally) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        deadline = time.monotonic() + duration
        number = 0
        while time.monotonic() < deadline:
            request_id = f"q{client}.{number}"
            number += 1
            tally.questions_asked += 1
            asked = time.monotonic()
            await ws.send(json.dumps({"type": "text_input", "content": "What happens next?", "id": request_id}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))
                if message.get("id") == request_id and message["type"] in ("response_complete", "error"):
                    break
            if message["type"] == "response_complete":
                tally.questions_answered += 1
                tally.question_seconds.append(time.monotonic() - asked)
            else:
                tally.failures.append(f"question {request_id}: {message}")


async def churn(url: str, duration: float, tally: Tally) -> None:
    """A client that connects, asks for the status, and leaves, over and over."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "get_status", "id": "churn"}))
            if json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))["type"] != "status":
                tally.failures.append("churn: no status")
        tally.connects += 1
        await asyncio.sleep(0.05)


async def read_slowly(url: str, duration: float, tally: Tally) -> None:
    """A client that asks for long answers and reads them at a trickle; each must still end normally."""
    deadline = time.monotonic() + duration
    async with websockets.connect(url, max_size=None, max_queue=1) as ws:
        await ws.send(json.dumps({"type": "config", "maxOutputTokens": 64}))
        await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS)
        number = 0
        while time.monotonic() < deadline:
            number += 1
            await ws.send(json.dumps({"type": "text_input", "content": "A long story, please.", "id": f"s{number}"}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))
                await asyncio.sleep(0.2)
                if message["type"] in ("response_complete", "error"):
                    break
            if message["type"] != "response_complete":
                tally.failures.append(f"slow reader: {message}")
            tally.slow_answers += 1


async def sample_rss(pid: int, stop: asyncio.Event, tally: Tally) -> None:
    started = time.monotonic()
    while not stop.is_set():
        tally.rss_samples.append((time.monotonic() - started, await asyncio.to_thread(rss_bytes, pid)))
        await asyncio.sleep(1.0)


def rss_drift(samples: list[tuple[float, int]], start: float, window: float = 10.0) -> float | None:
    """Relative change of RSS from `start` seconds to the end of the load (means over `window` s at each)."""
    first = [rss for t, rss in samples if start <= t < start + window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window] if samples else []
    if not first or not last or samples[-1][0] < start + 2 * window:
        return None
    return (sum(last) / len(last)) / (sum(first) / len(first)) - 1.0


def open_fds(pid: int) -> int | None:
    """How many files the server holds open (Linux; None where /proc is missing)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def disconnects(metrics_url: str) -> dict[str, float]:
    """Connections the server closed itself, by reason (mlxd_disconnects_total): why a client was dropped."""
    text = httpx.get(metrics_url, timeout=10).text
    return {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "mlxd_disconnects" for sample in family.samples
            if sample.name == "mlxd_disconnects_total"}


def lag_buckets(metrics_url: str) -> dict[float, float]:
    text = httpx.get(metrics_url, timeout=10).text
    return {float(sample.labels["le"]): sample.value for family in text_string_to_metric_families(text)
            if family.name == LAG_METRIC for sample in family.samples if sample.name == LAG_METRIC + "_bucket"}


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, int]:
    """The q-quantile of the observations between two scrapes, interpolated in its bucket like PromQL does."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return 0.0, 0
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= q * total:
            if bound == float("inf"):
                return lower, int(total)
            in_bucket = cumulative - below
            return lower + (bound - lower) * ((q * total - below) / in_bucket if in_bucket else 1.0), int(total)
        lower, below = bound, cumulative
    return lower, int(total)


async def run_load(server: ServerProcess, args: argparse.Namespace) -> Tally:
    tally = Tally()
    frame = noise_jpeg(*args.frame_size)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server.process.pid, stop, tally))
    url = server.ws_url()
    clients = [stream_frames(url, i, frame, args.fps, args.duration, tally) for i in range(args.frame_clients)]
    clients += [ask_questions(url, i, args.duration, tally) for i in range(args.text_clients)]
    clients += [churn(url, args.duration, tally) for _ in range(args.churn_clients)]
    clients += [read_slowly(url, args.duration, tally) for _ in range(args.slow_readers)]
    results = await asyncio.gather(*clients, return_exceptions=True)
    tally.failures += [f"client failed: {result!r}" for result in results if isinstance(result, BaseException)]
    stop.set()
    await sampler
    return tally


async def warm_up(url: str, frame: str) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        for message in ({"type": "image_input", "image": frame, "id": "w1"},
                        {"type": "text_input", "content": "hello", "id": "w2"}):
            await ws.send(json.dumps(message))
            while json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))["type"] != "response_complete":
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="vision model (default: a tiny random-weight Gemma 3 built here)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--frame-clients", type=int, default=8)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(640, 480), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--text-clients", type=int, default=2)
    parser.add_argument("--churn-clients", type=int, default=1, help="clients connecting and leaving in a loop")
    parser.add_argument("--slow-readers", type=int, default=1, help="clients reading their answers slowly")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per text answer")
    parser.add_argument("--frame-tokens", type=int, default=8, help="tokens per frame answer")
    parser.add_argument("--max-lag-p99", type=float, default=0.25, help="seconds (default: %(default)s)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=200.0,
                        help="RSS after the load may exceed the baseline by this much (default: %(default)s)")
    parser.add_argument("--max-rss-drift", type=float, default=0.05,
                        help="RSS may change by this fraction from --drift-from to the end (default: %(default)s)")
    parser.add_argument("--drift-from", type=float, default=120.0,
                        help="seconds into the load where drift is measured from, once warm (default: %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="idle time before the load whose loop lag is the baseline (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary as the last line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(build_vision_model(Path(scratch) / "tiny-gemma3"))
        server = ServerProcess(model, "--log-level", "warning", "--max-tokens", str(args.max_tokens),
                               "--image-max-tokens", str(args.frame_tokens), log_path=Path(scratch) / "server.log")
        try:
            server.wait_state("ready", timeout=600)
            asyncio.run(warm_up(server.ws_url(), noise_jpeg(*args.frame_size)))
            metrics_url = f"{server.http}/metrics"
            idle_from = lag_buckets(metrics_url)
            time.sleep(args.idle_seconds)  # the same lag measured idle: what this machine's scheduler gives
            lag_before, rss_baseline = lag_buckets(metrics_url), rss_bytes(server.process.pid)
            idle_p99, _ = quantile(idle_from, lag_before, 0.99)
            fds_baseline = open_fds(server.process.pid)
            started = time.monotonic()
            tally = asyncio.run(run_load(server, args))
            wall = time.monotonic() - started
            time.sleep(SETTLE_SECONDS)
            lag_p99, lag_samples = quantile(lag_before, lag_buckets(metrics_url), 0.99)
            rss_after, fds_after = rss_bytes(server.process.pid), open_fds(server.process.pid)
            closed_by_server = disconnects(metrics_url)
            alive = server.process.poll() is None
        finally:
            server.stop()

    dropped = sum(tally.frames_dropped.values())
    unaccounted = tally.frames_sent - tally.frames_answered - dropped - len(tally.frame_errors)
    problems = list(tally.failures)
    problems += [f"{unaccounted} frames without a terminal message"] if unaccounted else []
    problems += [f"{tally.duplicate_terminals} frames with two terminal messages"] if tally.duplicate_terminals else []
    problems += [f"frame errors: {Counter(tally.frame_errors)}"] if tally.frame_errors else []
    if tally.questions_answered != tally.questions_asked or tally.questions_asked == 0:
        problems.append(f"{tally.questions_answered} of {tally.questions_asked} questions answered")
    rss_peak = max((rss for _, rss in tally.rss_samples), default=rss_after)
    drift = rss_drift(tally.rss_samples, args.drift_from)
    if drift is not None and abs(drift) > args.max_rss_drift:
        problems.append(f"RSS drifted {drift:+.1%} from {args.drift_from:g} s to the end")
    if fds_after != fds_baseline:
        problems.append(f"open file descriptors: {fds_baseline} before, {fds_after} after")
    if rss_after - rss_baseline > args.max_rss_growth_mib * 2**20:
        problems.append(f"RSS did not come back: {rss_baseline / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    if lag_p99 > args.max_lag_p99:
        problems.append(f"event loop lag p99 {lag_p99 * 1000:.1f} ms is over {args.max_lag_p99 * 1000:.0f} ms")
    if not alive:
        problems.append("the server died")

    slowest = max(tally.question_seconds, default=0.0)
    print(f"{args.frame_clients} frame clients at {args.fps:g} fps ({args.frame_size[0]}x{args.frame_size[1]} JPEG) "
          f"+ {args.text_clients} text clients for {args.duration:g} s (wall {wall:.1f} s)")
    print(f"frames: sent {tally.frames_sent}, answered {tally.frames_answered}, dropped {dropped} "
          f"{dict(tally.frames_dropped)}, errors {len(tally.frame_errors)}")
    print(f"questions: asked {tally.questions_asked}, answered {tally.questions_answered}, slowest {slowest:.2f} s; "
          f"slow reader answers {tally.slow_answers}; churn connections {tally.connects}")
    drift_text = "n/a (run too short)" if drift is None else f"{drift:+.2%} from {args.drift_from:g} s to the end"
    print(f"RSS: baseline {rss_baseline / 2**20:.0f} MiB, peak {rss_peak / 2**20:.0f} MiB, "
          f"after {rss_after / 2**20:.0f} MiB; drift {drift_text}")
    print(f"open file descriptors: {fds_baseline} before, {fds_after} after; "
          f"connections the server closed: {closed_by_server}")
    print(f"event loop lag p99: {lag_p99 * 1000:.1f} ms over {lag_samples} samples; idle before the load "
          f"{idle_p99 * 1000:.1f} ms (ratio {lag_p99 / idle_p99 if idle_p99 else float('inf'):.1f})")
    print("OK" if not problems else "FAILED:\n  " + "\n  ".join(problems))
    if args.json:
        print(json.dumps({**asdict(tally), "frames_dropped": dict(tally.frames_dropped), "question_seconds": None,
                          "rss_samples": None, "rss_drift": drift, "fds_baseline": fds_baseline,
                          "fds_after": fds_after, "wall_seconds": wall, "closed_by_server": closed_by_server,
                          "rss_baseline": rss_baseline, "rss_peak": rss_peak, "rss_after": rss_after,
                          "loop_lag_p99": lag_p99, "idle_loop_lag_p99": idle_p99, "loop_lag_samples": lag_samples,
                          "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
