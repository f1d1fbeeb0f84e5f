"""Fuzz a live server at scale: hostile messages on several connections at once, chaos on the sockets, and a
bystander session asking normal questions the whole time.

    python scripts/fuzz.py                          # 100,000 messages on 6 connections
    python scripts/fuzz.py --messages 2000 --json   # a short run (the suite runs one); JSON summary last
    python scripts/fuzz.py --seed 7 --model PATH    # replay a run; another vision model

Messages come from tests/hostile.py (structurally valid ones with hostile values, random and truncated
JSON, wrong UTF-8, surrogates, deep nesting, huge numbers, binary frames with lying length headers, lying
images, decompression bombs, valid images, cancels of unknown ids); between them the workers run config
and cancel storms, disconnect mid-response, leave half-open sockets and read slowly. Each answer is checked
against the protocol (tests/hostile.answer_violations), and a probe after it catches a stray second
terminal message. Exits 1 on a crash, a violation, a failed bystander question, or sessions left open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import websockets
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from tests.helpers import ServerProcess, rss_bytes
from tests.hostile import FINAL_TYPES, answer_violations, random_message, websocket_close_for, wire
from tests.tiny_models import build_vision_model

ANSWER_TIMEOUT_S = 60.0
OVERDUE_GRACE_S = 120.0
CHAOS_RATE = 0.01
STORM_SIZE = 50
SMALL_CONFIG = {"type": "config", "maxOutputTokens": 3, "max_tokens_image": 2, "history": False,
                "temperature": 0.7, "id": "restore"}
SERVER_OPTIONS = ("--max-tokens", "3", "--image-max-tokens", "2", "--max-text-chars",
                  "2000", "--max-message-bytes", "1000000", "--max-messages-per-second", "10000",
                  "--message-burst", "10000")
MAX_MESSAGE_BYTES = 1_000_000
KEPT_VIOLATIONS = 30


@dataclass
class Report:
    messages: int = 0
    probes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    chaos: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    violation_examples: list[str] = field(default_factory=list)
    crashes: int = 0
    unhandled_errors: int = 0
    sessions_left: float = 0.0
    bystander_answers: int = 0
    bystander_failures: list[str] = field(default_factory=list)
    bystander_worst_s: float = 0.0
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    seconds: float = 0.0

    def violation(self, message: str | bytes, problem: str, before: tuple = ()) -> None:
        self.violations += 1
        if len(self.violation_examples) < KEPT_VIOLATIONS:
            earlier = "".join(f"\n      after {wire(m)[:120]!r}" for m in before)
            self.violation_examples.append(f"{problem} <- {wire(message)[:160]!r}{earlier}")


async def answer(ws, timeout: float = ANSWER_TIMEOUT_S) -> list[str]:
    """The replies up to the first final one."""
    replies: list[str] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        replies.append(raw if isinstance(raw, str) else repr(raw))
        try:
            if json.loads(replies[-1]).get("type") in FINAL_TYPES:
                return replies
        except (ValueError, AttributeError):
            return replies  # answer_violations says what is wrong with it


class Worker:
    """One connection sending one message at a time, checking each answer; now and then some chaos."""

    def __init__(self, url: str, rnd: random.Random, report: Report, budget: Budget) -> None:
        self.url, self.rnd, self.report, self.budget = url, rnd, report, budget
        self.ws = None
        self.recent: deque[str | bytes] = deque(maxlen=4)  # what this connection was sent before: a replay

    async def run(self) -> None:
        while self.budget.take():
            try:
                if self.ws is None:
                    self.ws = await websockets.connect(self.url, max_size=None, open_timeout=30)
                if self.rnd.random() < CHAOS_RATE:
                    await self.chaos()
                else:
                    await self.one(random_message(self.rnd))
            except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
                self.report.outcomes[f"client error {type(exc).__name__}"] += 1
                await self.drop()
        await self.drop()

    async def drop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
        self.recent.clear()

    async def one(self, message: str | bytes) -> None:
        self.report.messages += 1
        expected_close = websocket_close_for(message, MAX_MESSAGE_BYTES)
        before = tuple(self.recent)
        self.recent.append(message)
        sent = time.monotonic()
        await self.ws.send(wire(message), text=isinstance(message, str))
        try:
            replies = await answer(self.ws, self.budget.answer_timeout)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            if expected_close is None or code != expected_close:
                self.report.violation(message, f"connection closed ({code}) instead of an answer", before)
            self.report.outcomes[f"closed {code}"] += 1
            self.ws = None
            self.recent.clear()
            return
        except asyncio.TimeoutError:
            await self.overdue(message, before, sent)
            return
        if expected_close is not None:
            self.report.violation(message, f"answered, though the WebSocket layer must close with {expected_close}",
                                  before)
        for problem in answer_violations(message, replies):
            self.report.violation(message, problem, before)
        final = json.loads(replies[-1]) if replies[-1].startswith("{") else {}
        self.report.outcomes[final.get("code") or final.get("type", "?")] += 1
        if final.get("type") == "config_updated":
            await self.probe(SMALL_CONFIG, "config_updated")  # an 8192-token answer would stall this worker
        elif final.get("type") != "error" or self.rnd.random() < 0.1:
            await self.probe({"type": "get_status", "id": f"probe{self.report.probes}"}, "status")

    async def overdue(self, message: str | bytes, before: tuple, sent: float) -> None:
        """No final message within the bound: find out whether the input was lost or only late, and what its
        session says it still has pending (a status is answered by the session itself, never queued)."""
        await self.ws.send(json.dumps({"type": "get_status", "id": "overdue"}))
        status, final, deadline = None, None, time.monotonic() + OVERDUE_GRACE_S
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            while final is None:
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), deadline - time.monotonic()))
                if reply.get("id") == "overdue":
                    status = {"session": reply.get("session"), "queue": reply.get("queue")}
                elif reply.get("type") in FINAL_TYPES:
                    final = reply
        fate = (f"late: {final['type']} after {time.monotonic() - sent:.1f} s" if final is not None
                else f"lost: nothing after {time.monotonic() - sent:.0f} s")
        self.report.violation(message, f"no final message within {self.budget.answer_timeout:g} s ({fate}; "
                                       f"status then {status})", before)
        await self.drop()

    async def probe(self, message: dict, expected: str) -> None:
        """The next message must answer this one: a stray second terminal of the last input shows up here."""
        self.report.probes += 1
        await self.ws.send(json.dumps(message))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S))
        if (reply.get("type"), reply.get("id")) != (expected, message["id"]):
            self.report.violation(json.dumps(message), f"a stray message after the answer: {str(reply)[:200]}")

    async def chaos(self) -> None:
        action = self.rnd.choice([self.storm, self.disconnect_mid_response, self.half_open, self.slow_reader])
        self.report.chaos[action.__name__] += 1
        await action()

    async def storm(self) -> None:
        """Config changes or cancels of unknown ids, sent without waiting: each gets exactly one answer."""
        kind = self.rnd.choice(["config", "cancel"])
        sent = []
        for i in range(STORM_SIZE):
            body = {"temperature": self.rnd.choice([0, 0.5, 3, -1]), "topK": self.rnd.choice([0, 5, -5])} \
                if kind == "config" else {}
            sent.append(json.dumps({"type": kind, "id": f"storm{i}-{self.rnd.getrandbits(32):x}", **body}))
            await self.ws.send(sent[-1])
        self.report.messages += len(sent)
        for message in sent:
            for problem in answer_violations(message, await answer(self.ws)):
                self.report.violation(message, f"in a {kind} storm: {problem}")
        if kind == "config":
            await self.probe(SMALL_CONFIG, "config_updated")

    async def disconnect_mid_response(self) -> None:
        async with websockets.connect(self.url, max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "config", "maxOutputTokens": 500, "temperature": 0}))
            await ws.send(json.dumps({"type": "text_input", "content": "talk a lot", "id": "long"}))
            self.report.messages += 2
            streaming = ("token", *FINAL_TYPES)  # a short answer may end before its first token
            while json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S))["type"] not in streaming:
                pass
            if self.rnd.random() < 0.5:
                ws.transport.abort()  # vanish: no close frame

    async def half_open(self) -> None:
        """A TCP connection that sends part of a handshake, or a handshake and then only a FIN, and waits."""
        host, port = self.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        writer.write(request if self.rnd.random() < 0.5 else request[:self.rnd.randrange(len(request))])
        if self.rnd.random() < 0.5:
            writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(65536), self.rnd.uniform(0.5, 3))
        writer.close()

    async def slow_reader(self) -> None:
        async with websockets.connect(self.url, max_size=None, open_timeout=30, max_queue=1) as ws:
            await ws.send(json.dumps({"type": "config", "maxOutputTokens": 300, "temperature": 0}))
            await ws.send(json.dumps({"type": "text_input", "content": "a long story", "id": "slow"}))
            self.report.messages += 2
            await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)  # config_updated
            for _ in range(20):
                message = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S))
                if message["type"] in FINAL_TYPES:
                    break
                await asyncio.sleep(0.1)


class Budget:
    """The messages left to send (shared by all workers), and a stop for when the server dies."""

    def __init__(self, messages: int, report: Report, answer_timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.messages, self.report, self.stopped = messages, report, False
        self.answer_timeout = answer_timeout

    def take(self) -> bool:
        return not self.stopped and self.report.messages < self.messages


async def bystander(url: str, report: Report, stop: asyncio.Event) -> None:
    """A normal client: short questions, one after another; each must be answered."""
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        number = 0
        while not stop.is_set():
            number += 1
            request_id = f"bystander{number}"
            asked = time.monotonic()
            await ws.send(json.dumps({"type": "text_input", "content": "How are you?", "id": request_id}))
            try:
                replies = await answer(ws, timeout=120)
            except (asyncio.TimeoutError, ConnectionClosed) as exc:
                report.bystander_failures.append(f"{request_id}: {exc!r}")
                return
            final = json.loads(replies[-1])
            if final.get("type") != "response_complete" or answer_violations(replies[0], replies) != []:
                report.bystander_failures.append(f"{request_id}: {final}")
            report.bystander_answers += 1
            report.bystander_worst_s = max(report.bystander_worst_s, time.monotonic() - asked)
            await asyncio.sleep(0.2)


async def monitor(server: ServerProcess, report: Report, budget: Budget, stop: asyncio.Event) -> None:
    last = time.monotonic()
    while not stop.is_set():
        if server.process.poll() is not None:
            report.crashes += 1
            budget.stopped = True
            return
        report.rss_peak = max(report.rss_peak, await asyncio.to_thread(rss_bytes, server.process.pid))
        if time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"  {report.messages} messages, {report.violations} violations, bystander "
                  f"{report.bystander_answers} answers", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)


async def fuzz(server: ServerProcess, args: argparse.Namespace, report: Report) -> None:
    budget, stop = Budget(args.messages, report, args.answer_timeout), asyncio.Event()
    watch = asyncio.create_task(monitor(server, report, budget, stop))
    asker = asyncio.create_task(bystander(server.ws_url(), report, stop))
    workers = [Worker(server.ws_url(), random.Random(args.seed * 1000 + i), report, budget)
               for i in range(args.connections)]
    results = await asyncio.gather(*(worker.run() for worker in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            report.violation(b"", f"a worker failed: {result!r}")
    stop.set()
    await asyncio.gather(watch, asker, return_exceptions=True)


def sessions_after(server: ServerProcess, timeout: float = 20) -> float:
    """mlxd_active_sessions once every client has gone: 0 unless a session leaked."""
    deadline, value = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.http}/metrics", timeout=10).text
        value = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("mlxd_active_sessions "))
        if value == 0:
            break
        time.sleep(0.5)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", help="vision model (default: a tiny random-weight Gemma 3 built here)")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary as the last line")
    parser.add_argument("--server-log", type=Path, help="keep the server's log (JSON lines) there")
    parser.add_argument("--server-log-level", default="warning", help="(default: %(default)s)")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="run the server at this niceness: an artificial load, a server starved of CPU as on "
                             "an overloaded machine (default: %(default)s)")
    parser.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT_S,
                        help="seconds an answer may take before it counts as missing (default: %(default)s)")
    args = parser.parse_args()

    report = Report()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(build_vision_model(Path(scratch) / "tiny-gemma3"))
        server = ServerProcess(model, *SERVER_OPTIONS, "--log-level", args.server_log_level,
                               log_path=Path(scratch) / "server.log",
                               prefix=("nice", "-n", str(args.server_nice)) if args.server_nice else ())
        try:
            server.wait_state("ready", timeout=600)
            server.wait_audio(timeout=600)  # they load after the chat model: the start is the steady state
            report.rss_start = report.rss_peak = rss_bytes(server.process.pid)
            started = time.monotonic()
            asyncio.run(fuzz(server, args, report))
            report.seconds = time.monotonic() - started
            if server.process.poll() is None:
                report.sessions_left = sessions_after(server)
                report.rss_end = rss_bytes(server.process.pid)
            report.unhandled_errors = len(server.unhandled_errors())
            log_tail = server.log_text()[-3000:]
        finally:
            server.stop()
            if args.server_log:
                args.server_log.write_text(server.log_path.read_text(errors="replace"))

    problems = [f"{report.violations} protocol violations"] if report.violations else []
    problems += [f"the server crashed:\n{log_tail}"] if report.crashes else []
    problems += [f"{report.unhandled_errors} unhandled errors in the server log"] if report.unhandled_errors else []
    problems += [f"{report.sessions_left:g} sessions still open at the end"] if report.sessions_left else []
    problems += [f"bystander: {report.bystander_failures[:5]}"] if report.bystander_failures else []
    problems += ["the bystander got no answer"] if report.bystander_answers == 0 else []
    mib = 2 ** 20
    print(f"{report.messages} messages (+{report.probes} probes) on {args.connections} connections in "
          f"{report.seconds:.0f} s ({report.messages / max(report.seconds, 1e-9):.0f}/s), seed {args.seed}")
    print(f"answers: {dict(report.outcomes.most_common())}")
    print(f"chaos: {dict(report.chaos)}")
    print(f"server crashes: {report.crashes}; unhandled errors logged: {report.unhandled_errors}; "
          f"protocol violations: {report.violations}")
    for example in report.violation_examples:
        print(f"  {example}")
    print(f"bystander: {report.bystander_answers} answers, worst {report.bystander_worst_s:.2f} s, "
          f"{len(report.bystander_failures)} failures")
    print(f"RSS: start {report.rss_start / mib:.0f} MiB, peak {report.rss_peak / mib:.0f} MiB, "
          f"end {report.rss_end / mib:.0f} MiB")
    print("OK" if not problems else "FAILED:\n  " + "\n  ".join(problems))
    if args.json:
        # asdict would turn a Counter into a Counter of its (key, count) pairs
        print(json.dumps({**asdict(report), "outcomes": dict(report.outcomes), "chaos": dict(report.chaos),
                          "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
