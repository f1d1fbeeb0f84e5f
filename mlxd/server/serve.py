"""Running the application under uvicorn, with a shutdown that ends responses properly.

On SIGTERM (how launchd and systemd stop a service) uvicorn would fail every WebSocket with 1012 at
once. mlxd first stops accepting, ends in-flight work with `finish_reason: cancelled`, lets those last
messages out, and closes each socket with 1001 (going away); then uvicorn finishes its own shutdown.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from mlxd.server.access import WILDCARD_HOSTS
from mlxd.server.app import Server, create_app
from mlxd.settings import DEFAULT_PORT, Settings

log = structlog.get_logger("mlxd.server")

SHUTDOWN_GRACE_SECONDS = 2.0


class _GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: Server) -> None:
        super().__init__(config)
        self.mlxd = server

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # a newcomer's first question is where to go: say it once it is true
            port = self.servers[0].sockets[0].getsockname()[1]
            print(listening_message(self.mlxd.settings, port), flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listener in self.servers:
            listener.close()
        await self.mlxd.drain(SHUTDOWN_GRACE_SECONDS)
        await super().shutdown(sockets)


def listening_message(settings: Settings, port: int) -> str:
    """Where the page is and how to ask from a terminal; a wildcard bind is reached on loopback."""
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host.strip("[]")
    host = f"[{host}]" if ":" in host else host
    secure = "s" if settings.tls_cert else ""
    url = "" if (port, host, secure) == (DEFAULT_PORT, "127.0.0.1", "") else f" --url ws{secure}://{host}:{port}"
    return (f"mlxd is listening: open http{secure}://{host}:{port}/ in a browser, "
            f"or run `mlxd ask{url} \"What is the capital of France?\"`")


def _stopped_by_signal(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the stop signal after its graceful shutdown; a requested stop is a clean exit, so
    that launchd (KeepAlive SuccessfulExit=false) and systemd (Restart=on-failure) do not restart us."""
    raise SystemExit(0)


def listen(host: str, port: int) -> socket.socket:
    """Bind the port before anything else: a second `mlxd serve` on it then exits at once and says why,
    instead of loading its model first and leaving only uvicorn's bind error in the log."""
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # response's first two small writes (response_start, the first token) waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = (": another mlxd, or another server, is listening there; stop it or choose another --port"
                if exc.errno == errno.EADDRINUSE else "")
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def serve(settings: Settings, token: str | None = None, blas: Path | None = None,
          upstream_token: str | None = None) -> int:
    try:
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        print(f"mlxd serve: {exc.strerror}", file=sys.stderr)
        return 2
    server = Server(settings, token, upstream_token)
    engine = server.engine.status()
    config = uvicorn.Config(
        create_app(server),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ping_interval or None,
        ws_ping_timeout=settings.ping_timeout or None,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS + 3,
    )
    log.info("starting", host=settings.host, port=settings.port, engine=settings.engine, model=engine["model"],
             model_reason=engine["model_reason"],
             tls=settings.tls_cert is not None, token=token is not None, blas=str(blas) if blas else "mlx default")
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _stopped_by_signal)
    code = 0
    try:
        _GracefulServer(config, server).run(sockets=[listener])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if server.engine.busy:
        log.warning("stopped", reason="the engine is still loading the model or generating: exiting without "
                    "waiting for it")
    else:
        log.info("stopped")
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Leave at once, skipping the interpreter's finalization: beside MLX's native threads it can abort the
    process (std::terminate), even once the engine thread has ended (seen after a model load that finished
    during the shutdown)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
