"""`mlxd ask` and `mlxd watch`: the server from a terminal, through mlxd.client.

Exit codes are part of the interface, so scripts can tell why a command failed without reading stderr:
0 answered, 1 the server said no (an `error`) or the connection was lost, 2 bad usage or input (checked
before connecting), 3 no server to talk to. Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mlxd.capture import CaptureError
from mlxd.client import DEFAULT_URL, Client, ClientError, ConnectError, ServerError
from mlxd.media import ACCEPTED_FORMATS
from mlxd.protocols.mlxws import MAX_OUTPUT_TOKENS, WIRE_TO_CONFIG
from mlxd.server.access import TOKEN_ENV
from mlxd.settings import positive_float, positive_int

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
INTERRUPTED = 130


class UsageError(Exception):
    """Bad input found before connecting: an unreadable file, a source that cannot be opened."""


def _ranged(low: float, high: float, kind: type = float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    return parse


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    low, high = WIRE_TO_CONFIG["temperature"][1:3]
    parser.add_argument("--url", default=DEFAULT_URL, help="the server's WebSocket (default: %(default)s)")
    parser.add_argument("--token-file", type=Path, metavar="F",
                        help=f"read the token from this file (else ${TOKEN_ENV})")
    parser.add_argument("--temperature", type=_ranged(low, high), metavar="T", help="0 is greedy (deterministic)")
    parser.add_argument("--max-tokens", type=_ranged(1, MAX_OUTPUT_TOKENS, int), metavar="N",
                        help="token limit of each answer (maxOutputTokens and max_tokens_image)")


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """Declare `ask` and `watch`."""
    ask = commands.add_parser("ask", help="ask a running server a question, optionally about an image")
    ask.add_argument("question", metavar="QUESTION", nargs="?", help="the question (none with --audio)")
    source = ask.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path, metavar="FILE", help="a JPEG, PNG or WebP image the question is about")
    source.add_argument("--audio", type=Path, metavar="FILE",
                        help="a spoken question: a PCM WAV file, any rate and channels (prints what was heard)")
    _add_connection_arguments(ask)
    ask.set_defaults(func=lambda args: _run("ask", args, _ask))

    watch = commands.add_parser("watch", help="stream a video, a camera or the screen and print each answer")
    source = watch.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, metavar="FILE", help="a video file, played at its own speed")
    source.add_argument("--camera", type=int, metavar="N", help="camera number N (0 is the default camera)")
    source.add_argument("--screen", action="store_true", help="the main display (macOS)")
    watch.add_argument("--fps", type=_ranged(0.01, 30), default=2.0,
                       help="frames sent a second (default: %(default)s)")
    watch.add_argument("--prompt", metavar="TEXT", help="the prompt of every frame (default: the server's)")
    watch.add_argument("--size", type=positive_int, default=640,
                       help="longest side of a frame in pixels, never upscaled (default: %(default)s)")
    watch.add_argument("--quality", type=_ranged(1, 100, int), default=80,
                       help="JPEG quality, 1 to 100 (default: %(default)s)")
    watch.add_argument("--duration", type=positive_float, metavar="S", help="stop after this many seconds")
    _add_connection_arguments(watch)
    watch.set_defaults(func=lambda args: _run("watch", args, _watch))


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        return args.token_file.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {args.token_file}: {exc}") from None


def _run(name: str, args: argparse.Namespace,
         command: Callable[[argparse.Namespace, str | None], Awaitable[int]]) -> int:
    prog = f"mlxd {name}"
    token = None
    try:
        token = _token(args)
        return asyncio.run(command(args, token))
    except (UsageError, CaptureError) as exc:
        failure, code = str(exc), USAGE
    except ConnectError as exc:
        failure, code = _unreachable(exc, token), UNREACHABLE
    except ServerError as exc:
        failure, code = f"{exc.code}: {exc.message}", FAILED
    except ClientError as exc:
        failure, code = str(exc), FAILED
    except KeyboardInterrupt:
        return INTERRUPTED
    print(f"{prog}: {failure}", file=sys.stderr)
    return code


def _unreachable(exc: ConnectError, token: str | None) -> str:
    if exc.status == 401:
        return f"{exc}: the server needs a token; pass --token-file FILE or set {TOKEN_ENV}"
    if exc.status == 403:
        return f"{exc}: the token is wrong" if token else f"{exc}: the server refuses this client"
    return f"{exc} (is `mlxd serve` running there?)"


async def configure(client: Client, args: argparse.Namespace) -> None:
    """Apply --temperature and --max-tokens to the session; an `error` reply raises ServerError."""
    fields: dict[str, float] = {}
    if args.temperature is not None:
        fields["temperature"] = args.temperature
    if args.max_tokens is not None:
        fields["maxOutputTokens"] = fields["max_tokens_image"] = args.max_tokens
    if fields:
        await client.configure(**fields)


def _read_image(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the image {path}: {exc.strerror or exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
    except (UnidentifiedImageError, OSError, ValueError):
        raise UsageError(f"{path} is not a JPEG, PNG or WebP image") from None
    if image_format not in ACCEPTED_FORMATS:
        raise UsageError(f"{path} is {image_format}; the server takes JPEG, PNG or WebP")
    return data


def _read_speech(path: Path) -> bytes:
    """A WAV file as what the server hears: 16 kHz mono PCM16."""
    from mlxd.audio.pcm import SPEECH_RATE, float_to_pcm16, resample
    from mlxd.audio.wav import read_wav

    try:
        samples, rate = read_wav(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the audio {path}: {exc.strerror or exc}") from None
    except (ValueError, struct.error) as exc:
        raise UsageError(f"{path} is not a PCM16 WAV file: {exc}") from None
    if samples.size == 0:
        raise UsageError(f"{path} holds no audio")
    return float_to_pcm16(resample(samples, rate, SPEECH_RATE))


async def _ask(args: argparse.Namespace, token: str | None) -> int:
    if (args.question is None) == (args.audio is None):
        raise UsageError("give a QUESTION, or --audio FILE, not both")
    image = None if args.image is None else _read_image(args.image)
    speech = None if args.audio is None else _read_speech(args.audio)
    async with Client(args.url, token) as client:
        await configure(client, args)
        if speech is not None:
            await client.configure(turnDetection=None)
            reply = client.ask_audio(speech)
        elif image is None:
            reply = client.ask(args.question)
        else:
            reply = client.send_image(image, prompt=args.question)
        heard = False
        async for piece in reply:
            if not heard and reply.transcript is not None:
                sys.stdout.write(f"> {reply.transcript}\n")  # what the server heard, before its answer
                heard = True
            sys.stdout.write(piece)
            sys.stdout.flush()
        result = await reply
    sys.stdout.write("\n")
    if result.finish_reason == "cancelled":
        raise ClientError("the answer was cancelled by the server (is it shutting down?)")
    return OK


async def _watch(args: argparse.Namespace, token: str | None) -> int:
    from mlxd.watch import open_source, watch

    source = open_source(args)
    try:
        async with Client(args.url, token) as client:
            await configure(client, args)
            return await watch(client, source, args)
    finally:
        source.close()
