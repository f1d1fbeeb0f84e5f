"""The clients of scripts/load.py: frame streamers, askers, a churning client and a slow reader.

Each client runs in a process of its own, as real clients do: one starved or busy client process then
delays only itself, and a generator that shares one event loop among all its clients cannot be what makes
connections miss their keepalive pings. Each process sends its tally back to load.py at the end.

This module imports no model code (no MLX), so that spawning a process for each client stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field, fields

import websockets
from websockets.exceptions import ConnectionClosed

ANSWER_TIMEOUT_SECONDS = 60.0
START_TIMEOUT_SECONDS = 300.0
TERMINAL_TYPES = ("response_complete", "frame_dropped", "error")


@dataclass
class Tally:
    frames_sent: int = 0
    frames_answered: int = 0
    frames_dropped: Counter[str] = field(default_factory=Counter)
    frame_errors: list[str] = field(default_factory=list)
    frame_seconds: list[float] = field(default_factory=list)
    duplicate_terminals: int = 0
    questions_asked: int = 0
    questions_answered: int = 0
    question_seconds: list[float] = field(default_factory=list)
    connects: int = 0
    slow_answers: int = 0
    ping_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        """Fold another process's tally into this one."""
        for item in fields(self):
            mine = getattr(self, item.name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, item.name))
            elif isinstance(mine, list):
                mine.extend(getattr(other, item.name))
            else:
                setattr(self, item.name, mine + getattr(other, item.name))


@dataclass(frozen=True)
class Plan:
    """What every client is told: where the server is, for how long, and how."""

    url: str
    duration: float
    fps: float
    frame: str


def lost(what: str, exc: BaseException) -> RuntimeError:
    """A connection that ended under a client, with who closed it and how (websockets says both ends' codes)."""
    detail = str(exc) if isinstance(exc, ConnectionClosed) else repr(exc)
    return RuntimeError(f"{what}: {detail}")


async def stream_frames(plan: Plan, client: int, tally: Tally) -> None:
    """Send a frame every 1/fps s, catching up when late, and wait for one terminal message for each."""
    sent_at: dict[str, float] = {}
    terminals: set[str] = set()
    prefix = b'{"type":"video_frame","frame":' + json.dumps(plan.frame).encode() + b',"id":"'
    async with websockets.connect(plan.url, max_size=None) as ws:

        async def send_at_fps() -> None:
            started = time.monotonic()
            for i in range(int(plan.fps * plan.duration)):
                await asyncio.sleep(max(0.0, started + i / plan.fps - time.monotonic()))
                request_id = f"c{client}f{i}"
                sent_at[request_id] = time.monotonic()
                await ws.send(prefix + request_id.encode() + b'"}', text=True)

        sender = asyncio.create_task(send_at_fps())
        try:
            while not (sender.done() and len(terminals) >= len(sent_at)):
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))
                except (ConnectionClosed, OSError) as exc:
                    raise lost(f"frame client {client} after {len(sent_at)} frames", exc) from None
                if message["type"] in TERMINAL_TYPES:
                    _frame_ended(message, sent_at, terminals, tally)
                _note_ping(ws, tally)
            await sender
        finally:
            sender.cancel()
            tally.frames_sent += len(sent_at)  # those of a connection that died count as unaccounted
            await asyncio.gather(sender, return_exceptions=True)


def _frame_ended(message: dict, sent_at: dict[str, float], terminals: set[str], tally: Tally) -> None:
    request_id = message["id"]
    if request_id in terminals:
        tally.duplicate_terminals += 1
    terminals.add(request_id)
    tally.frame_seconds.append(time.monotonic() - sent_at[request_id])
    if message["type"] == "response_complete":
        tally.frames_answered += 1
    elif message["type"] == "frame_dropped":
        tally.frames_dropped[message["reason"]] += 1
    else:
        tally.frame_errors.append(message["code"])


def _note_ping(ws: websockets.ClientConnection, tally: Tally) -> None:
    """The round trip of the client's last keepalive ping, once per ping: how far behind the server reads."""
    if ws.latency and (not tally.ping_seconds or tally.ping_seconds[-1] != ws.latency):
        tally.ping_seconds.append(ws.latency)


async def ask_questions(plan: Plan, client: int, tally: Tally) -> None:
    async with websockets.connect(plan.url, max_size=None) as ws:
        deadline = time.monotonic() + plan.duration
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
            _note_ping(ws, tally)


async def churn(plan: Plan, client: int, tally: Tally) -> None:
    """A client that connects, asks for the status, and leaves, over and over."""
    deadline = time.monotonic() + plan.duration
    while time.monotonic() < deadline:
        async with websockets.connect(plan.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "get_status", "id": "churn"}))
            if json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_SECONDS))["type"] != "status":
                tally.failures.append("churn: no status")
        tally.connects += 1
        await asyncio.sleep(0.05)


async def read_slowly(plan: Plan, client: int, tally: Tally) -> None:
    """A client that asks for long answers and reads them at a trickle; each must still end normally."""
    deadline = time.monotonic() + plan.duration
    async with websockets.connect(plan.url, max_size=None, max_queue=1) as ws:
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


CLIENTS = {"frames": stream_frames, "questions": ask_questions, "churn": churn, "slow_reader": read_slowly}


def run_client(kind: str, client: int, plan: Plan, start, results) -> None:
    """A child process's whole life: wait until every client is ready, run one client, send back its tally.
    `start` is a multiprocessing Barrier shared with load.py, `results` a multiprocessing Queue."""
    tally = Tally()
    start.wait(START_TIMEOUT_SECONDS)
    try:
        asyncio.run(CLIENTS[kind](plan, client, tally))
    except Exception as exc:  # any failure of a client is a finding, reported with the rest
        tally.failures.append(f"{kind} client {client} failed: {exc}")
    results.put(tally)
