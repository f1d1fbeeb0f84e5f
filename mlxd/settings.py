"""Server settings: one frozen object built from the command line, shared by every module.

The serve options are defined here, not in the CLI, because `mlxd install` must accept exactly the same
options and forward them to the service it writes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

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
    prefix_cache_bytes: int = 256 * 1024 * 1024
    prefix_cache_entries: int = 32
    vision_cache_size: int = 32
    allow_origins: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_self_signed: bool = False
    max_connections: int = 64
    max_messages_per_second: float = 100.0
    message_burst: int = 200
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    idle_timeout: float = 600.0
    send_timeout: float = 30.0
    max_backlog: int = 10_000
    engine: str = "local"
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_modalities: str = "text"
    upstream_token_file: str | None = None
    upstream_concurrency: int = 16
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    upstream_health_interval: float = 2.0
    stt_model: str | None = None
    tts_model: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names})


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def seconds_or_off(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a positive number of seconds, got {text}")
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
                        help="requests of different sessions decoded together; 1 serves one at a time "
                             "(default: %(default)s)")
    parser.add_argument("--context-tokens", type=positive_int, default=d.context_tokens,
                        help="token budget of a conversation with history on; older turns are dropped "
                             "past it (default: %(default)s)")
    parser.add_argument("--prefix-cache-bytes", type=non_negative_int, default=d.prefix_cache_bytes,
                        help="bytes of KV cache kept for prompt prefixes shared across sessions (system prompts, "
                        "chat-template preambles, frame prompts); 0 turns it off (default: %(default)s)")
    parser.add_argument("--prefix-cache-entries", type=positive_int, default=d.prefix_cache_entries,
                        help="prompt prefixes kept at most in that cache (default: %(default)s)")
    parser.add_argument("--vision-cache-size", type=non_negative_int, default=d.vision_cache_size,
                        help="images whose vision features are kept, by pixel content, so that an image sent "
                        "again skips the vision tower; 0 turns it off (default: %(default)s)")
    _add_access_arguments(parser, d)
    _add_connection_arguments(parser, d)
    _add_upstream_arguments(parser, d)
    _add_audio_arguments(parser, d)


def _add_audio_arguments(parser: argparse.ArgumentParser, d: Settings) -> None:
    parser.add_argument("--stt-model", default=d.stt_model, metavar="MODEL",
                        help="speech-to-text model: a Whisper hub repo id or folder (MLX or CTranslate2), or "
                        "'none' to refuse speech input (default: Whisper large-v3 turbo on a GPU when cached or "
                        "reachable, else the packaged Whisper tiny.en)")
    parser.add_argument("--tts-model", default=d.tts_model, metavar="MODEL",
                        help="text-to-speech model: a Kokoro hub repo id or folder, 'espeak-ng' or 'flite' "
                        "(the system engines), or 'none' to answer in text only (default: Kokoro-82M on a GPU "
                        "when cached or reachable, else the system engine)")


def _add_access_arguments(parser: argparse.ArgumentParser, d: Settings) -> None:
    parser.add_argument("--allow-origin", dest="allow_origins", action="append", default=list(d.allow_origins),
                        metavar="ORIGIN", help="also accept WebSocket connections from this browser origin, e.g. "
                        "https://example.com (repeatable; '*' accepts any). Loopback origins are always accepted")
    parser.add_argument("--token", default=d.token,
                        help="require this token from clients (prefer --token-file or MLXD_TOKEN: a command line "
                        "is visible to other local users)")
    parser.add_argument("--token-file", default=d.token_file,
                        help="read the required token from this file, which must be mode 0600")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without a token")
    parser.add_argument("--tls-cert", default=d.tls_cert, help="certificate (PEM) to serve wss:// and https://")
    parser.add_argument("--tls-key", default=d.tls_key, help="private key (PEM) of --tls-cert")
    parser.add_argument("--tls-self-signed", action="store_true",
                        help="serve wss:// and https:// with a localhost certificate made once and kept in the "
                        "user's config directory (see `mlxd cert`)")


def _add_connection_arguments(parser: argparse.ArgumentParser, d: Settings) -> None:
    parser.add_argument("--max-connections", type=positive_int, default=d.max_connections,
                        help="open WebSockets at most; more are closed with 1013 (default: %(default)s)")
    parser.add_argument("--max-messages-per-second", type=positive_float, default=d.max_messages_per_second,
                        help="sustained messages per connection; frames over it are dropped, other messages "
                        "refused with rate_limited (default: %(default)s)")
    parser.add_argument("--message-burst", type=positive_int, default=d.message_burst,
                        help="messages a connection may send at once above that rate (default: %(default)s)")
    parser.add_argument("--ping-interval", type=seconds_or_off, default=d.ping_interval,
                        help="seconds between keepalive pings, 0 for none (default: %(default)s)")
    parser.add_argument("--ping-timeout", type=seconds_or_off, default=d.ping_timeout,
                        help="seconds to wait for a pong before closing, 0 to wait forever (default: %(default)s)")
    parser.add_argument("--idle-timeout", type=seconds_or_off, default=d.idle_timeout,
                        help="close a connection that sent nothing and has nothing in flight for this many seconds, "
                        "0 for never (default: %(default)s)")
    parser.add_argument("--send-timeout", type=positive_float, default=d.send_timeout,
                        help="disconnect a client that has not read for this many seconds (default: %(default)s)")
    parser.add_argument("--max-backlog", type=positive_int, default=d.max_backlog,
                        help="events waiting to be sent to one client; past it the client is disconnected "
                        "(default: %(default)s)")


def _add_upstream_arguments(parser: argparse.ArgumentParser, d: Settings) -> None:
    parser.add_argument("--engine", default=d.engine, choices=["local", "openai"],
                        help="local: run the model in this process; openai: send every job to an "
                        "OpenAI-compatible chat-completions server, --upstream (default: %(default)s)")
    parser.add_argument("--upstream", default=d.upstream, metavar="URL",
                        help="base URL of the upstream server with --engine openai, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--upstream-model", default=d.upstream_model, metavar="NAME",
                        help="model named in every upstream request (default: the first id of its /v1/models)")
    parser.add_argument("--upstream-modalities", default=d.upstream_modalities, choices=["text", "text,image"],
                        help="what the upstream model takes; images and frames go "
                        "only to one that takes images (default: text)")
    parser.add_argument("--upstream-token-file", default=d.upstream_token_file, metavar="PATH",
                        help="file (mode 0600) with the token sent upstream as Authorization: Bearer")
    parser.add_argument("--upstream-concurrency", type=positive_int, default=d.upstream_concurrency,
                        help="jobs in flight upstream at most (default: %(default)s)")
    parser.add_argument("--upstream-connect-timeout", type=positive_float, default=d.upstream_connect_timeout,
                        help="seconds to connect to the upstream (default: %(default)s)")
    parser.add_argument("--upstream-read-timeout", type=positive_float, default=d.upstream_read_timeout,
                        help="seconds the upstream may stay silent within a response (default: %(default)s)")
    parser.add_argument("--upstream-health-interval", type=positive_float, default=d.upstream_health_interval,
                        help="seconds between probes of the upstream's /models, which /readyz follows "
                        "(default: %(default)s)")
