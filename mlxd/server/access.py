"""Who may connect: browser origins, the optional token, and the refusal to expose an open server.

A server on localhost is reachable by every web page the user visits and by every local process. A browser
always says which page opened a WebSocket (the Origin header) and a page cannot forge it, so pages from
other sites are refused at the handshake, before any message is read. The Host header is not trusted to
name the server's own origin: a DNS-rebinding page controls it. A token, when set, keeps out local
processes and other machines; browsers cannot set headers on a WebSocket, so it may also come as a query
parameter or as a subprotocol, `mlxd.token.<token>` (or OpenAI's `openai-insecure-api-key.<token>`).
Google's Gemini SDKs present it as their API key, in the forms they send unchanged: `x-goog-api-key`,
`?key=`, and for ephemeral tokens `Authorization: Token` or `?access_token=`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlxd.settings import Settings

TOKEN_SUBPROTOCOL = "mlxd.token."
OPENAI_KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how OpenAI's browser client sends its api_key
TOKEN_SUBPROTOCOLS = (TOKEN_SUBPROTOCOL, OPENAI_KEY_SUBPROTOCOL)
APP_SUBPROTOCOLS = ("realtime",)  # offered by OpenAI's browser client beside its key; selected, never the key
TOKEN_QUERY_PARAMETERS = ("token", "key", "access_token")
TOKEN_AUTHORIZATION_SCHEMES = ("bearer", "token")
TOKEN_ENV = "MLXD_TOKEN"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class StartupError(Exception):
    """A setting the server refuses to start with; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token clients must present: --token, else --token-file, else $MLXD_TOKEN, else none."""
    if settings.token is not None:
        token, source = settings.token, "--token"
    elif settings.token_file is not None:
        token, source = read_token_file(Path(settings.token_file)), f"--token-file {settings.token_file}"
    elif environ.get(TOKEN_ENV):
        token, source = environ[TOKEN_ENV], TOKEN_ENV
    else:
        return None
    if not token or not all("!" <= c <= "~" for c in token):
        raise StartupError(f"the token from {source} must be printable ASCII without spaces, as it travels in a "
                           "header, a query parameter and a subprotocol name")
    return token


def resolve_upstream_token(settings: Settings) -> str | None:
    """The token sent upstream with --engine openai (never mlxd's own: that one guards mlxd, not the upstream)."""
    if settings.engine != "openai":
        return None
    if not settings.upstream or not settings.upstream.startswith(("http://", "https://")):
        raise StartupError("--engine openai needs --upstream URL, the base of an OpenAI-compatible server such as "
                           f"http://127.0.0.1:8080/v1 (got {settings.upstream!r})")
    if settings.upstream_token_file is None:
        return None
    return read_token_file(Path(settings.upstream_token_file))


def read_token_file(path: Path) -> str:
    """The token in `path`, refused unless only its owner can read it: a token others can read protects nothing."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read the token file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StartupError(f"the token file {path} has mode {stat.S_IMODE(mode):04o}: other users could read it. "
                           f"Make it private with `chmod 600 {path}`")
    return text.strip()


def create_token_file(path: Path) -> bool:
    """Write a new random token to `path`, readable by its owner only; False if a token file is already there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(32) + "\n")
    return True


def check_exposure(settings: Settings, has_token: bool) -> None:
    """Refuse to serve every machine on the network without a token, unless told to with --insecure."""
    if not has_token and not settings.insecure and not is_loopback(settings.host):
        raise StartupError(
            f"refusing to listen on {settings.host!r} without a token: any machine that can reach it could run "
            "the model and send it images. Set a token (--token-file, MLXD_TOKEN or --token), bind to 127.0.0.1, "
            "or pass --insecure if the network is trusted")


def check_tls(settings: Settings) -> None:
    """wss:// needs a readable certificate; a key alone, or a missing file, is a mistake to say plainly."""
    if settings.tls_key is not None and settings.tls_cert is None:
        raise StartupError("--tls-key needs --tls-cert")
    for option, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise StartupError(f"{option} {path}: no such readable file")


@dataclass(frozen=True)
class Denial:
    """Why a handshake or a request is refused: the HTTP status, a short reason (a metric label) and a message."""

    status: int
    reason: str
    message: str

    def response(self) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="mlxd"'} if self.status == 401 else None
        return PlainTextResponse(self.message + "\n", status_code=self.status, headers=headers)


class Access:
    """The origin allowlist and the token check, applied to WebSocket handshakes and to /metrics."""

    def __init__(self, settings: Settings, token: str | None) -> None:
        self._token = None if token is None else token.encode()
        self._origins = {origin.rstrip("/").lower() for origin in settings.allow_origins}
        self._own_host = None if settings.host in WILDCARD_HOSTS else settings.host.strip("[]").lower()
        self._port = settings.port

    def origin_allowed(self, origin: str | None) -> bool:
        """No Origin (not a browser), a loopback page, the server's own address, or one on the allowlist."""
        if origin is None:
            return True
        origin = origin.strip().lower()
        if "*" in self._origins or origin in self._origins:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        own = parts.hostname == self._own_host and (port or {"http": 80, "https": 443}[parts.scheme]) == self._port
        return own or is_loopback(parts.hostname)

    def websocket_denial(self, connection: HTTPConnection) -> Denial | None:
        origin = connection.headers.get("origin")
        if not self.origin_allowed(origin):
            return Denial(403, "origin", f"origin {origin!r} is not allowed (see --allow-origin)")
        return self.token_denial(connection)

    def token_denial(self, connection: HTTPConnection) -> Denial | None:
        """401 without a token, 403 with a wrong one; compared in constant time."""
        if self._token is None:
            return None
        offered = _offered_tokens(connection)
        if not offered:
            return Denial(401, "unauthorized", "a token is required: send `Authorization: Bearer <token>`, "
                          f"`?token=<token>`, the WebSocket subprotocol `{TOKEN_SUBPROTOCOL}<token>`, or "
                          "(Gemini SDKs) the token as the API key")
        expected = self._token
        if not any(hmac.compare_digest(candidate.encode("utf-8", "replace"), expected) for candidate in offered):
            return Denial(403, "forbidden", "the token is not valid")
        return None


def token_subprotocol(connection: HTTPConnection) -> str | None:
    """The subprotocol to select: a browser fails a handshake that offered some and got none back. An
    application subprotocol (`realtime`) is preferred to echoing a token; OpenAI's key is never echoed."""
    offered = connection.scope.get("subprotocols", ())
    return (next((p for p in offered if p in APP_SUBPROTOCOLS), None)
            or next((p for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None))


def _offered_tokens(connection: HTTPConnection) -> list[str]:
    offered = [key for key in connection.headers.getlist("x-goog-api-key") if key]
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() in TOKEN_AUTHORIZATION_SCHEMES and credentials.strip():
        offered.append(credentials.strip())
    offered += [value for name in TOKEN_QUERY_PARAMETERS for value in connection.query_params.getlist(name) if value]
    offered += [p[len(prefix):] for p in connection.scope.get("subprotocols", ()) for prefix in TOKEN_SUBPROTOCOLS
                if p.startswith(prefix)]
    return offered


def host_is_loopback(host_header: str | None) -> bool:
    """A request addressed to a loopback name or address (`localhost`, `*.localhost`, 127.x, [::1])."""
    if host_header is None:
        return True
    try:
        hostname = urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return False
    return hostname.endswith(".localhost") or is_loopback(hostname)


class LoopbackHostGuard:
    """ASGI middleware for a server bound to loopback: requests addressed to another name are refused.

    DNS rebinding lets a page on any site reach 127.0.0.1 under its own name; its requests then carry that
    name in their Host header. The Origin check covers WebSockets; this covers the HTTP routes as well.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not host_is_loopback(Headers(scope=scope).get("host")):
            response = PlainTextResponse("this server answers requests to localhost only\n", status_code=403)
            if scope["type"] == "websocket":
                await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
                await send({"type": "websocket.http.response.body", "body": response.body})
            else:
                await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
