"""Load: clients streaming frames at 30 fps while others ask text questions, a client connecting and
disconnecting in a loop and a slow reader, against a real server.

Every text question must be answered, every frame either answered or reported dropped (exactly one terminal
message each), resident memory must come back near its baseline (and, in a long run, not drift), the event
loop must stay responsive (its own lag, mlxd_event_loop_own_lag_seconds from /metrics: how late the loop
wakes a sleeping task, less the waits for a CPU that other processes held; the lag itself is printed beside
it), and the server's open file descriptors must be back at their baseline at the end. Each client runs in
a process of its own (scripts/load_clients.py).

    python scripts/load.py                                  # 8 frame clients at 30 fps + 2 askers for 60 s
    python scripts/load.py --duration 10 --frame-clients 4  # shorter
    python scripts/load.py --model PATH --json              # a given vision model; a JSON summary at the end
    python scripts/load.py --duration 600 --server-log soak.log   # the 10-minute soak

The server is started here (`python -m mlxd serve`) on a tiny random-weight Gemma 3 unless --model is given.
Exits 1 if an invariant does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import queue
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

from scripts.load_clients import ANSWER_TIMEOUT_SECONDS, START_TIMEOUT_SECONDS, Plan, Tally, run_client
from tests.helpers import ServerProcess, rss_bytes

OWN_LAG = "mlxd_event_loop_own_lag_seconds"
LAG_METRICS = ("mlxd_event_loop_lag_seconds", OWN_LAG)
SETTLE_SECONDS = 3.0


def noise_jpeg(width: int, height: int) -> str:
    """A frame that compresses like a camera picture does (badly), as a data URI."""
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 48).convert("RGB").save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_clients(server: ServerProcess, args: argparse.Namespace, frame: str) -> tuple[Tally, Samples]:
    """Start every client in a process of its own, let them go at once, and sample the server while they run."""
    plan = Plan(server.ws_url(), args.duration, args.fps, frame)
    kinds = [("frames", args.frame_clients), ("questions", args.text_clients), ("churn", args.churn_clients),
             ("slow_reader", args.slow_readers)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(1 + sum(count for _, count in kinds))
    results = context.Queue()
    processes = [context.Process(target=run_client, args=(kind, i, plan, start, results), daemon=True)
                 for kind, count in kinds for i in range(count)]
    for process in processes:
        process.start()
    start.wait(START_TIMEOUT_SECONDS)
    began, samples, tallies = time.monotonic(), Samples(), []
    deadline = began + args.duration + 2 * ANSWER_TIMEOUT_SECONDS
    while len(tallies) < len(processes) and time.monotonic() < deadline:
        samples.take(time.monotonic() - began, server.process.pid)
        with contextlib.suppress(queue.Empty):
            tallies.append(results.get(timeout=1.0))
    samples.seconds = time.monotonic() - began
    tally = Tally()
    for each in tallies:
        tally.add(each)
    if len(tallies) < len(processes):
        tally.failures.append(f"{len(processes) - len(tallies)} client processes never reported")
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    return tally, samples


@dataclass
class Samples:
    """Taken once a second while the load runs: the server's RSS, and the machine's load average."""

    rss: list[tuple[float, int]] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)
    seconds: float = 0.0  # from the clients' start to the last one's tally

    def take(self, elapsed: float, pid: int) -> None:
        if self.rss and elapsed - self.rss[-1][0] < 1.0:
            return
        self.rss.append((elapsed, rss_bytes(pid)))
        self.load_average.append(os.getloadavg()[0])


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


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each of the server's threads has used, by name (Linux; {} elsewhere)."""
    used: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                name = "loop" if task == str(pid) else "other threads"  # the engine's, MLX's, Python's own
                used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def disconnects(metrics_url: str) -> dict[str, float]:
    """Connections the server closed itself, by reason (mlxd_disconnects_total): why a client was dropped."""
    text = httpx.get(metrics_url, timeout=10).text
    return {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "mlxd_disconnects" for sample in family.samples
            if sample.name == "mlxd_disconnects_total"}


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


async def warm_up(url: str, frame: str) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        for message in ({"type": "image_input", "image": frame, "id": "w1"},
                        {"type": "text_input", "content": "hello", "id": "w2"}):
            await ws.send(json.dumps(message))
            while json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))["type"] != "response_complete":
                pass


def lag_stats(metrics_url: str) -> dict[str, dict[float, float]]:
    """The loop lag histograms now: the lag, and its own part (less the waits for a CPU others had)."""
    text = httpx.get(metrics_url, timeout=10).text
    return {name: {float(sample.labels["le"]): sample.value for family in text_string_to_metric_families(text)
                   if family.name == name for sample in family.samples if sample.name == name + "_bucket"}
            for name in LAG_METRICS}


def over(before: dict[float, float], after: dict[float, float], bound: float) -> float | None:
    """The fraction of observations between two scrapes above `bound`, exactly (None unless it is a bucket edge)."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    if bound not in after or total <= 0:
        return None
    return 1.0 - (after[bound] - before.get(bound, 0.0)) / total


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
    parser.add_argument("--max-lag-p99", type=float, default=0.02,
                        help="seconds, for the loop's own lag (default: %(default)s)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=200.0,
                        help="RSS after the load may exceed the baseline by this much (default: %(default)s)")
    parser.add_argument("--max-rss-drift", type=float, default=0.05,
                        help="RSS may change by this fraction from --drift-from to the end (default: %(default)s)")
    parser.add_argument("--drift-from", type=float, default=120.0,
                        help="seconds into the load where drift is measured from, once warm (default: %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="idle time before the load whose loop lag is the baseline (default: %(default)s)")
    parser.add_argument("--server-log", type=Path, help="keep the server's log (JSON lines, level info) here")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary as the last line")
    args = parser.parse_args()
    from tests.tiny_models import build_vision_model  # here: a client process, importing this file, needs no MLX

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(build_vision_model(Path(scratch) / "tiny-gemma3"))
        server = ServerProcess(model, "--log-level", "info", "--max-tokens", str(args.max_tokens),
                               "--image-max-tokens", str(args.frame_tokens),
                               log_path=args.server_log or Path(scratch) / "server.log")
        try:
            server.wait_state("ready", timeout=600)
            server.wait_audio(timeout=600)  # they load after the chat model; the idle baseline must be idle
            frame = noise_jpeg(*args.frame_size)
            asyncio.run(warm_up(server.ws_url(), frame))
            metrics_url = f"{server.http}/metrics"
            idle_from = lag_stats(metrics_url)
            time.sleep(args.idle_seconds)  # the same lag measured idle: what this machine's scheduler gives
            lag_before, rss_baseline = lag_stats(metrics_url), rss_bytes(server.process.pid)
            fds_baseline, cpu_before = open_fds(server.process.pid), thread_cpu(server.process.pid)
            tally, samples = run_clients(server, args, frame)
            wall = samples.seconds
            cpu = {name: used - cpu_before.get(name, 0.0) for name, used in thread_cpu(server.process.pid).items()}
            lag_after = lag_stats(metrics_url)  # before the settling: idle wake-ups would dilute the figure
            time.sleep(SETTLE_SECONDS)
            rss_after, fds_after = rss_bytes(server.process.pid), open_fds(server.process.pid)
            closed_by_server = disconnects(metrics_url)
            alive = server.process.poll() is None
        finally:
            server.stop()

    lag = {name: quantile(lag_before[name], lag_after[name], 0.99) for name in LAG_METRICS}
    idle = {name: quantile(idle_from[name], lag_before[name], 0.99)[0] for name in LAG_METRICS}
    lag_over = over(lag_before[OWN_LAG], lag_after[OWN_LAG], args.max_lag_p99)
    dropped = sum(tally.frames_dropped.values())
    unaccounted = tally.frames_sent - tally.frames_answered - dropped - len(tally.frame_errors)
    problems = list(tally.failures)
    problems += [f"{unaccounted} frames without a terminal message"] if unaccounted else []
    problems += [f"{tally.duplicate_terminals} frames with two terminal messages"] if tally.duplicate_terminals else []
    problems += [f"frame errors: {Counter(tally.frame_errors)}"] if tally.frame_errors else []
    if tally.questions_answered != tally.questions_asked or tally.questions_asked == 0:
        problems.append(f"{tally.questions_answered} of {tally.questions_asked} questions answered")
    rss_peak = max((rss for _, rss in samples.rss), default=rss_after)
    drift = rss_drift(samples.rss, args.drift_from)
    if drift is not None and abs(drift) > args.max_rss_drift:
        problems.append(f"RSS drifted {drift:+.1%} from {args.drift_from:g} s to the end")
    if fds_after != fds_baseline:
        problems.append(f"open file descriptors: {fds_baseline} before, {fds_after} after")
    if rss_after - rss_baseline > args.max_rss_growth_mib * 2**20:
        problems.append(f"RSS did not come back: {rss_baseline / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    if (lag_over if lag_over is not None else lag[OWN_LAG][0] > args.max_lag_p99) > 0.01:
        problems.append(f"event loop own lag p99 {lag[OWN_LAG][0] * 1000:.1f} ms is over "
                        f"{args.max_lag_p99 * 1000:.0f} ms")
    if not alive:
        problems.append("the server died")

    print(f"{args.frame_clients} frame clients at {args.fps:g} fps ({args.frame_size[0]}x{args.frame_size[1]} JPEG) "
          f"+ {args.text_clients} text clients + {args.churn_clients} churning + {args.slow_readers} slow reader, "
          f"each a process, for {args.duration:g} s (wall {wall:.1f} s)")
    print(f"machine: {os.cpu_count()} CPUs, load average during the load {figures(samples.load_average, '.1f')}")
    print(f"frames: sent {tally.frames_sent}, answered {tally.frames_answered}, dropped {dropped} "
          f"{dict(tally.frames_dropped)}, errors {len(tally.frame_errors)}; "
          f"sent to terminal message {figures(tally.frame_seconds, '.3f')} s")
    print(f"questions: asked {tally.questions_asked}, answered {tally.questions_answered}, "
          f"{figures(tally.question_seconds, '.2f')} s; slow reader answers {tally.slow_answers}; "
          f"churn connections {tally.connects}")
    print(f"clients' keepalive ping round trips: {figures(tally.ping_seconds, '.3f')} s")
    drift_text = "n/a (run too short)" if drift is None else f"{drift:+.2%} from {args.drift_from:g} s to the end"
    print(f"RSS: baseline {rss_baseline / 2**20:.0f} MiB, peak {rss_peak / 2**20:.0f} MiB, "
          f"after {rss_after / 2**20:.0f} MiB; drift {drift_text}")
    print(f"open file descriptors: {fds_baseline} before, {fds_after} after; "
          f"connections the server closed: {closed_by_server}")
    if cpu:
        print(f"server CPU during the load: the loop thread {cpu.get('loop', 0.0):.1f} s "
              f"({cpu.get('loop', 0.0) / max(tally.frames_sent, 1) * 1000:.2f} ms per frame sent, all its work "
              f"included), other threads {cpu.get('other threads', 0.0):.1f} s")
    for name, what in ((LAG_METRICS[0], "lag"), (OWN_LAG, "own lag (less waits for a CPU)")):
        p99, count = lag[name]
        print(f"event loop {what} p99: {p99 * 1000:.1f} ms over {count} samples; idle before the load "
              f"{idle[name] * 1000:.1f} ms")
    if lag_over is not None:
        print(f"own lag over {args.max_lag_p99 * 1000:g} ms: {lag_over:.2%} of the wake-ups (the target: under 1%)")
    print("OK" if not problems else "FAILED:\n  " + "\n  ".join(problems))
    if args.json:
        print(json.dumps({**asdict(tally), "frames_dropped": dict(tally.frames_dropped), "question_seconds": None,
                          "frame_seconds": None, "ping_seconds": None, "rss_drift": drift,
                          "fds_baseline": fds_baseline, "fds_after": fds_after, "wall_seconds": wall,
                          "closed_by_server": closed_by_server, "load_average": samples.load_average,
                          "rss_baseline": rss_baseline, "rss_peak": rss_peak, "rss_after": rss_after,
                          "loop_lag_p99": lag[LAG_METRICS[0]][0], "loop_own_lag_p99": lag[OWN_LAG][0],
                          "loop_own_lag_over": lag_over, "idle_loop_lag_p99": idle[LAG_METRICS[0]],
                          "loop_lag_samples": lag[OWN_LAG][1], "server_cpu_seconds": cpu, "problems": problems}))
    return 1 if problems else 0


def figures(values: list[float], spec: str) -> str:
    """median, p99 and max of some measurements, in one short phrase."""
    if not values:
        return "(none)"
    ordered = sorted(values)
    pick = [ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], ordered[-1]]
    return "median {:{s}}, p99 {:{s}}, max {:{s}}".format(*pick, s=spec)


if __name__ == "__main__":
    sys.exit(main())
