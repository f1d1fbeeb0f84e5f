"""Server settings: one frozen object built from the command line, shared by every module.

The serve options are defined here, not in the CLI, because `mlxd install` must accept exactly the same
options and forward them to the service it writes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_tokens: int = 200
    image_max_tokens: int = 100
    image_max_side: int = 768
    log_level: str = "info"
    log_format: str = "auto"
    log_content: bool = False
    max_message_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 12 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 32_000
    max_pending: int = 16
    batch_size: int = 8
    context_tokens: int = 4096

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every `mlxd serve` option (also accepted by `mlxd install`)."""
    d = Settings()
    parser.add_argument("--model", default=d.model,
                        help="Hugging Face repo id, local model folder, or 'smollm2-135m' (the embedded model)")
    parser.add_argument("--host", default=d.host, help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="port to listen on (default: %(default)s)")
    parser.add_argument("--max-tokens", type=positive_int, default=d.max_tokens,
                        help="default maxOutputTokens for text requests (default: %(default)s)")
    parser.add_argument("--image-max-tokens", type=positive_int, default=d.image_max_tokens,
                        help="default max_tokens_image for images and frames (default: %(default)s)")
    parser.add_argument("--image-max-side", type=positive_int, default=d.image_max_side,
                        help="images are resized so their longest side is at most this (default: %(default)s)")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=["debug", "info", "warning", "error"], help="(default: %(default)s)")
    parser.add_argument("--log-format", default=d.log_format, choices=["auto", "json", "console"],
                        help="auto: console on a terminal, JSON lines otherwise (default: %(default)s)")
    parser.add_argument("--log-content", action="store_true",
                        help="log prompt and generated text (off by default: logs carry lengths only)")
    parser.add_argument("--max-message-bytes", type=positive_int, default=d.max_message_bytes,
                        help="largest WebSocket message accepted (default: %(default)s)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=d.max_image_bytes,
                        help="largest encoded image accepted (default: %(default)s)")
    parser.add_argument("--max-image-pixels", type=positive_int, default=d.max_image_pixels,
                        help="largest decoded image, in pixels (default: %(default)s)")
    parser.add_argument("--max-text-chars", type=positive_int, default=d.max_text_chars,
                        help="longest text, prompt or context accepted (default: %(default)s)")
    parser.add_argument("--max-pending", type=positive_int, default=d.max_pending,
                        help="text and image requests one session may have waiting (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                        help="sessions decoded together by a text model (default: %(default)s)")
    parser.add_argument("--context-tokens", type=positive_int, default=d.context_tokens,
                        help="token budget of a conversation with history on; older turns are dropped "
                             "past it (default: %(default)s)")
