"""The loop of `mlxd watch`: every 1/fps seconds the current frame goes to the server, and each answer is
printed as `[MM:SS.s] answer` with the position of its frame.

Frames are paced by the clock, never by the answers: the server answers the newest frame and drops the
ones it had no time for, which this loop only counts. At the end (of the file, of --duration, or on
Ctrl-C) it waits for the answers still in flight, so the summary counts every frame sent exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from dataclasses import dataclass
from typing import TextIO

from mlxd.capture import Camera, Screen, Source, VideoFile, encode_jpeg
from mlxd.client import Client, ClientError, Response

DRAIN_TIMEOUT_SECONDS = 120.0
CLEAR_LINE = "\r\x1b[K"


def open_source(args: argparse.Namespace) -> Source:
    """The source the options name; CaptureError if it cannot be opened."""
    if args.video is not None:
        return VideoFile(args.video)
    if args.camera is not None:
        return Camera(args.camera)
    return Screen()


def timestamp(seconds: float) -> str:
    """`MM:SS.s`, rounded to a tenth of a second."""
    minutes, tenths = divmod(round(seconds * 10), 600)
    return f"{minutes:02d}:{tenths / 10:04.1f}"


@dataclass
class _Progress:
    out: TextIO
    err: TextIO
    sent: int = 0
    answered: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.live = self.err.isatty()

    def show(self) -> None:
        if self.live:
            self.err.write(f"{CLEAR_LINE}sent {self.sent} · answered {self.answered} · dropped {self.dropped}")
            self.err.flush()

    def answer(self, position: float, text: str) -> None:
        self.answered += 1
        if self.live:
            self.err.write(CLEAR_LINE)
        self.out.write(f"[{timestamp(position)}] {' '.join(text.splitlines())}\n")
        self.out.flush()
        self.show()

    def summary(self) -> None:
        if self.live:
            self.err.write(CLEAR_LINE)
        self.err.write(f"frames: sent {self.sent}, answered {self.answered}, dropped {self.dropped}\n")
        self.err.flush()


async def watch(client: Client, source: Source, args: argparse.Namespace,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Stream `source` until it ends, --duration passes or Ctrl-C; raises what ended an answer badly."""
    loop = asyncio.get_running_loop()
    progress = _Progress(out, err)
    stop = asyncio.Event()
    failures: list[ClientError] = []
    replies: set[asyncio.Task[None]] = set()

    async def report(position: float, reply: Response) -> None:
        try:
            result = await reply
        except ClientError as exc:
            failures.append(exc)
            stop.set()
            return
        if result.dropped is not None:
            progress.dropped += 1
            progress.show()
        else:
            progress.answer(position, result.text)

    loop.add_signal_handler(signal.SIGINT, stop.set)
    started = loop.time()
    interval = 1 / args.fps
    try:
        tick = 0
        while not stop.is_set():
            due = tick * interval
            if args.duration is not None and due >= args.duration:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, started + due - loop.time()))
            if stop.is_set():
                break
            elapsed = loop.time() - started
            current = await asyncio.to_thread(source.frame_at, elapsed)
            if current is None:
                break
            position, frame = current
            jpeg = await asyncio.to_thread(encode_jpeg, frame, args.size, args.quality)
            reply = client.send_frame(jpeg, prompt=args.prompt, screen=source.screen)
            progress.sent += 1
            progress.show()
            task = asyncio.create_task(report(position, reply))
            replies.add(task)
            task.add_done_callback(replies.discard)
            tick = max(tick + 1, math.floor((loop.time() - started) / interval))  # a slow tick skips, never bursts
    finally:
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C stops waiting for the answers
    if replies:
        await asyncio.wait(replies, timeout=DRAIN_TIMEOUT_SECONDS)
    progress.summary()
    if failures:
        raise failures[0]
    return 0
