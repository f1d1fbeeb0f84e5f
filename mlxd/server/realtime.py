"""The /v1/realtime endpoint: OpenAI Realtime's wire, told what a generic wire factory cannot know, the
served model (`session.model`) and whether the client asked for the beta interface, which is refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from mlxd.protocols.openai_realtime import RealtimeWire

if TYPE_CHECKING:
    from mlxd.server.app import Server

BETA_HEADER_VALUE = "realtime=v1"


def realtime_endpoint(server: Server) -> Callable[[WebSocket], Awaitable[None]]:
    async def serve(websocket: WebSocket) -> None:
        beta = BETA_HEADER_VALUE in websocket.headers.get("openai-beta", "").replace(" ", "").split(",")
        wire = RealtimeWire(server.settings, str(server.engine.status()["model"]), beta=beta, audio=server.audio)
        await server.websocket(websocket, wire)

    return serve
