"""The browser page at GET /: plain files shipped in the package, served with headers that keep it unframable.

The page can turn the camera on, so no other site may frame it (clickjacking): `X-Frame-Options` and CSP
`frame-ancestors` both say so. The CSP also keeps it to its own origin: scripts, styles and the WebSocket
come from this server and nowhere else, so it works offline. The files carry no token: the page asks for
one, or takes it from the URL fragment, which the browser never sends.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "media-src 'self' blob: mediastream:; img-src 'self' blob: data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/mic.js": ("mic.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


def page_routes() -> list[Route]:
    """GET routes for the page and its files; the WebSocket routes at the same paths are unaffected."""
    return [_route(path, name, media_type) for path, (name, media_type) in PAGE_FILES.items()]


def _route(path: str, name: str, media_type: str) -> Route:
    body = (files("mlxd") / "web" / name).read_bytes()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return Route(path, endpoint, methods=["GET"], name=name)
