"""The Starlette application: the WebSocket endpoints, health, readiness and metrics.

The engine starts with the application and loads the model in the background, so the server listens at
once: sessions opened while the model loads queue their work and are served when it is ready.
Handshakes are checked (origin, token, capacity) before any message is read. /healthz and /readyz stay
open for service managers' probes and carry no secrets; /metrics needs the token when one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from mlxd import __version__
from mlxd.audio import AudioModels
from mlxd.engine import create_engine
from mlxd.engine.base import LOADING, READY
from mlxd.metrics import Metrics
from mlxd.outbox import Outbox
from mlxd.protocols.base import Wire
from mlxd.protocols.gemini_live import PATHS as GEMINI_PATHS
from mlxd.protocols.gemini_live import GeminiLiveWire
from mlxd.protocols.mlxws import MlxwsWire
from mlxd.scheduler import WorkQueue
from mlxd.server.access import Access, LoopbackHostGuard, is_loopback, token_subprotocol
from mlxd.server.connection import Connection
from mlxd.server.loop_lag import watch_loop_lag
from mlxd.server.page import page_routes
from mlxd.server.realtime import realtime_endpoint
from mlxd.session import Session
from mlxd.settings import Settings

log = structlog.get_logger("mlxd.server.app")

TRY_AGAIN_LATER = 1013


class Server:
    """Everything one running server shares: settings, engine, queue, metrics and open connections."""

    def __init__(self, settings: Settings, token: str | None = None, upstream_token: str | None = None) -> None:
        self.settings = settings
        self.access = Access(settings, token)
        self.metrics = Metrics()
        self.queue = WorkQueue(settings.max_pending)
        self.engine = create_engine(settings, self.metrics, self.queue, upstream_token)
        self.audio = AudioModels(settings.stt_model, settings.tts_model)
        self.connections: set[Connection] = set()
        self.started = time.monotonic()

    def status(self) -> dict[str, object]:
        return {**self.engine.status(), "sessions": len(self.connections), "audio": self.audio.describe()}

    def endpoint(self, make_wire: Callable[[Settings], Wire]) -> Callable[[WebSocket], Awaitable[None]]:
        """The WebSocket endpoint of one wire format."""
        async def serve(websocket: WebSocket) -> None:
            await self.websocket(websocket, make_wire(self.settings))

        return serve

    async def websocket(self, websocket: WebSocket, wire: Wire) -> None:
        denial = self.access.websocket_denial(websocket)
        if denial is not None:
            self.metrics.refused.labels(reason=denial.reason).inc()
            log.info("connection_refused", reason=denial.reason, client=str(websocket.client),
                     origin=websocket.headers.get("origin"))
            await websocket.send_denial_response(denial.response())
            return
        subprotocol = token_subprotocol(websocket)
        if len(self.connections) >= self.settings.max_connections:
            self.metrics.refused.labels(reason="capacity").inc()
            log.info("connection_refused", reason="capacity", client=str(websocket.client))
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):  # the client may be gone
                await websocket.accept(subprotocol)
                await websocket.close(TRY_AGAIN_LATER, f"too many connections (the limit is "
                                                       f"{self.settings.max_connections}); try again later")
            return
        session = Session(self.settings, self.queue, self.metrics, self.status, self.engine.forget,
                          Outbox(asyncio.get_running_loop(), self.settings.max_backlog), self.audio)
        connection = Connection(websocket, session, wire)
        self.connections.add(connection)  # counted before the first await, so the limit holds under a rush
        try:
            await websocket.accept(subprotocol)
            self.metrics.connections.inc()
            self.metrics.active_sessions.set(len(self.connections))
            log.info("connection_opened", session=session.id, client=str(websocket.client))
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.metrics.active_sessions.set(len(self.connections))

    async def drain(self, grace: float) -> None:
        """Shutting down: end all work with `cancelled`, let the last events out, close with 1001."""
        connections = list(self.connections)
        for connection in connections:
            connection.session.cancel_all()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(c.flushed() for c in connections):
            await asyncio.sleep(0.02)
        await asyncio.gather(*(c.close() for c in connections))

    async def healthz(self, request: Request) -> JSONResponse:
        status = self.engine.status()
        return JSONResponse({**status, "audio": self.audio.describe(), "version": __version__,
                             "uptime_seconds": round(time.monotonic() - self.started, 3)})

    async def readyz(self, request: Request) -> JSONResponse:
        status = self.engine.status()
        return JSONResponse(status, status_code=200 if status["state"] == READY else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        denial = self.access.token_denial(request)
        if denial is not None:
            return denial.response()
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.engine.start()
        self.audio.start(after=lambda: self.engine.status()["state"] != LOADING)
        lag_watcher = asyncio.create_task(watch_loop_lag(self.metrics.loop_lag, self.metrics.loop_own_lag))
        try:
            yield
        finally:
            lag_watcher.cancel()
            await asyncio.gather(asyncio.to_thread(self.engine.stop), asyncio.to_thread(self.audio.close))


def create_app(server: Server) -> Starlette:
    routes = [
        WebSocketRoute("/", server.endpoint(MlxwsWire)),
        WebSocketRoute("/ws", server.endpoint(MlxwsWire)),
        WebSocketRoute("/v1/realtime", realtime_endpoint(server)),
        *(WebSocketRoute(path, server.endpoint(lambda settings: GeminiLiveWire(settings, server.audio)))
          for path in GEMINI_PATHS),
        Route("/healthz", server.healthz),
        Route("/readyz", server.readyz),
        Route("/metrics", server.metrics_endpoint),
        *page_routes(),
    ]
    middleware = [Middleware(LoopbackHostGuard)] if is_loopback(server.settings.host) else []
    return Starlette(routes=routes, middleware=middleware, lifespan=server.lifespan)
