"""The browser page at GET /, in real headless Chromium (Debian's) driven by playwright, on real servers.

Chromium's fake camera (mostly RGB (0, 135, 0)) and fake screen stand in for the user's; its fake media UI
grants the permissions. What the page puts on the wire is read from the browser's own WebSocket events.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import httpx
import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Page, sync_playwright

from mlxd.server.serve import listening_message
from mlxd.settings import Settings
from tests.helpers import receive, send

TOKEN = "page-Token_0123456789"
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
WAIT_MS = 60_000
# Each binary send, with when it happened: the pacing is measured where it is done, in the page.
RECORD_SENDS = """
window.binarySends = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data !== "string") window.binarySends.push(performance.now());
  return send.call(this, data);
};
"""


def launch_chromium(args: list[str]):
    """Debian's Chromium under playwright, with these arguments; skipped (failed on CI) where it is missing."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make install` installs it with apt-get")
        pytest.skip("chromium is not installed (`make install` installs it with apt-get)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium(FAKE_MEDIA)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


class Wire:
    """Every WebSocket the page opens and every message on it, as the browser saw them."""

    def __init__(self, page: Page) -> None:
        self.sockets: list = []
        self.sent: list[str | bytes] = []
        self.received: list[dict] = []
        page.on("websocket", self._opened)

    def _opened(self, websocket) -> None:
        self.sockets.append(websocket)
        websocket.on("framesent", lambda payload: self.sent.append(payload))
        websocket.on("framereceived", lambda payload: self.received.append(json.loads(payload)))

    def frames(self) -> list[tuple[dict, bytes]]:
        """The binary frames sent: (header, image bytes)."""
        frames = []
        for payload in self.sent:
            if isinstance(payload, bytes):
                length = int.from_bytes(payload[:4], "big")
                frames.append((json.loads(payload[4:4 + length]), payload[4 + length:]))
        return frames

    def texts(self) -> list[dict]:
        return [json.loads(payload) for payload in self.sent if isinstance(payload, str)]

    def terminal(self, kind: str, ids: set[str]) -> list[dict]:
        return [m for m in self.received if m["type"] == kind and m.get("id") in ids]


def number(page: Page, element_id: str) -> float:
    return float(page.text_content(f"#{element_id}"))


def wait_for(page: Page, expression: str) -> None:
    """Wait until the JavaScript `expression` is true; as a function, since the page's CSP forbids eval."""
    page.wait_for_function(f"() => {expression}", timeout=WAIT_MS)


def counters(page: Page) -> tuple[int, int, int]:
    return tuple(int(number(page, name)) for name in ("frames-sent", "frames-answered", "frames-dropped"))


def wait_on_wire(page: Page, condition) -> None:
    """Let the browser's events in (they arrive while playwright waits) until `condition()` holds."""
    for _ in range(WAIT_MS // 100):
        if condition():
            return
        page.wait_for_timeout(100)
    raise AssertionError("the wire never showed it")


def all_frames_ended(page: Page) -> None:
    wait_for(page, "(() => { const n = (id) => Number(document.getElementById(id).textContent);"
                   " return n('frames-sent') === n('frames-answered') + n('frames-dropped'); })()")


@pytest.mark.parametrize("settings,port,page_url,ask", [
    (Settings(), 8765, "http://127.0.0.1:8765/", "mlxd ask "),
    (Settings(host="0.0.0.0"), 9000, "http://127.0.0.1:9000/", "mlxd ask --url ws://127.0.0.1:9000 "),
    (Settings(host="::1", tls_cert="c.pem"), 8765, "https://[::1]:8765/", "mlxd ask --url wss://[::1]:8765 "),
])
def test_serve_says_where_the_page_is(settings, port, page_url, ask):
    assert listening_message(settings, port).startswith(f"mlxd is listening: open {page_url} in a browser, "
                                                        f"or run `{ask}")


def test_the_page_is_served_unframable_without_a_token(start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    page = httpx.get(f"{server.http}/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in ("/static/app.js", "/static/style.css"):
        asset = httpx.get(f"{server.http}{path}", timeout=5)
        assert asset.status_code == 200 and TOKEN not in asset.text
    assert TOKEN not in page.text and 'id="frame-answer"' in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", ""), "no external resources"
    rebound = httpx.get(f"{server.http}/", headers={"Host": "evil.example"}, timeout=5)
    assert rebound.status_code == 403, "the loopback Host guard covers the page"
    with server.connect("/", additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        send(ws, {"type": "get_status", "id": "s"})
        assert receive(ws)["type"] == "status", "the WebSocket at / still works beside GET /"
    assert f"open {server.http}/ in a browser" in server.log_text(), "mlxd serve says where the page is"


def test_autostart_streams_binary_frames_and_the_counters_match_the_wire(vision_server, tiny_vision_model, page):
    wire = Wire(page)
    page.add_init_script(RECORD_SENDS)
    page.goto(f"{vision_server.http}/?autostart=1&fps=4&size=200&quality=0.5&prompt=What%20is%20it%3F"
              "&max_tokens=3&temperature=0")
    wait_for(page, "Number(document.getElementById('frames-answered').textContent) >= 2")
    assert page.get_attribute("#conn", "data-state") == "open"
    assert page.text_content("#model") == str(tiny_vision_model)
    preview = Image.open(io.BytesIO(page.locator("#preview").screenshot())).convert("RGB")
    layout = page.evaluate("""() => Object.fromEntries(["preview", "counters", "frame-answer"].map((id) => {
        const box = document.getElementById(id).getBoundingClientRect();
        return [id, [box.width, box.bottom, box.right]];
    }))""")
    page.click("#stop")
    all_frames_ended(page)
    page.wait_for_timeout(1000)
    sent, answered, dropped = counters(page)

    assert wire.sockets[0].url == f"{vision_server.ws_url('/ws')}"
    assert wire.texts()[:2] == [{"type": "get_status", "id": "status"},
                                {"type": "config", "id": "config", "maxOutputTokens": 3, "max_tokens_image": 3,
                                 "temperature": 0}]
    frames = wire.frames()
    assert len(frames) == sent >= 2, "Stop ended sending: nothing was sent after it"
    ids = {header["id"] for header, _ in frames}
    assert len(ids) == sent
    assert all({key: header[key] for key in ("type", "prompt", "source")}
               == {"type": "video_frame", "prompt": "What is it?", "source": "camera"} for header, _ in frames)
    for _, jpeg in frames:
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and image.size == (200, 150), "longest side at most size"
    answers = wire.terminal("response_complete", ids)
    assert (answered, dropped) == (len(answers), len(wire.terminal("frame_dropped", ids)))
    assert page.text_content("#frame-answer") == answers[-1]["full_text"]
    assert page.eval_on_selector("#frame-answer", "e => e.children.length") == 0, "model output is plain text"
    assert number(page, "ttft") > 0 and number(page, "tps") > 0

    sends = page.evaluate("window.binarySends")
    in_a_second = max(sum(start <= t < start + 1000 for t in sends) for start in sends)
    assert len(sends) == sent and in_a_second <= 4 + 1, f"at most fps frames a second (JPEG encoding jitters): {sends}"

    red, green, blue = ImageStat.Stat(preview).median
    assert abs(red - 0) < 30 and abs(green - 135) < 30 and abs(blue - 0) < 30, "the preview shows the camera"
    assert layout["preview"][0] >= 320
    assert all(bottom <= 800 and right <= 1280 for _, bottom, right in layout.values()), layout


def test_a_typed_question_is_answered(vision_server, page):
    wire = Wire(page)
    page.goto(f"{vision_server.http}/?max_tokens=5")
    wait_for(page, "document.getElementById('conn').dataset.state === 'open'")
    page.fill("#question", "hello there")
    page.press("#question", "Enter")
    wait_on_wire(page, lambda: wire.terminal("response_complete", {"q1"}))
    page.fill("#question", "and again")
    page.click("#ask")
    wait_on_wire(page, lambda: wire.terminal("response_complete", {"q2"}))
    questions = [m for m in wire.texts() if m["type"] == "text_input"]
    assert [(m["content"], m["id"]) for m in questions] == [("hello there", "q1"), ("and again", "q2")]
    expected = wire.terminal("response_complete", {"q2"})[0]["full_text"]
    wait_for(page, f"document.getElementById('text-answer').textContent === {json.dumps(expected)}")
    assert counters(page) == (0, 0, 0) and page.text_content("#frame-answer") == ""


def test_the_token_typed_or_in_the_fragment_and_never_in_a_url(start_server, tiny_vision_model, page, browser):
    server = start_server(tiny_vision_model, "--image-max-tokens", "2", env={"MLXD_TOKEN": TOKEN})
    wire = Wire(page)
    page.goto(f"{server.http}/?autostart=1&fps=2")
    wait_for(page, "document.getElementById('conn').dataset.state === 'closed'")
    page.wait_for_timeout(1500)
    assert len(wire.sockets) == 1, "a refused handshake is not retried by itself"
    assert page.text_content("#error").startswith("connection: ") and counters(page) == (0, 0, 0)
    page.fill("#token", "not-the-token")
    page.click("#connect")
    wait_for(page, "document.getElementById('conn').dataset.state === 'closed'")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    wait_for(page, "document.getElementById('conn').dataset.state === 'open'")
    wait_for(page, "Number(document.getElementById('frames-sent').textContent) >= 1")
    assert page.text_content("#model") == str(tiny_vision_model), "autostart waited for the token"
    page.click("#stop")
    assert len(wire.sockets) == 3

    other = browser.new_context().new_page()
    requests: list[str] = []
    other.on("request", lambda request: requests.append(request.url))
    fragment_wire = Wire(other)
    other.goto(f"{server.http}/#token={TOKEN}")
    wait_for(other, "document.getElementById('conn').dataset.state === 'open'")
    wait_for(other, "document.getElementById('model').textContent !== '?'")
    other.context.close()
    urls = requests + [socket.url for socket in wire.sockets + fragment_wire.sockets]
    assert urls and not any(TOKEN in url for url in urls), "the token goes only as the subprotocol"
    assert TOKEN not in server.log_text()


def test_the_screen_as_screen_frames_never_upscaled(vision_server, page):
    wire = Wire(page)
    page.goto(f"{vision_server.http}/?source=screen&autostart=1&size=4000&max_tokens=2")
    wait_for(page, "Number(document.getElementById('frames-answered').textContent) >= 1")
    assert page.input_value("#source") == "screen"
    page.click("#stop")
    all_frames_ended(page)
    frames = wire.frames()
    assert frames and all((header["type"], header["source"]) == ("screen_frame", "screen") for header, _ in frames)
    assert all(Image.open(io.BytesIO(jpeg)).size == (1280, 720) for _, jpeg in frames), "the fake screen, as it is"


def test_a_page_of_another_origin_can_neither_connect_nor_frame_it(vision_server, page, browser):
    probe = rf"""<!doctype html><iframe src="{vision_server.http}/"></iframe><script>
      window.outcome = [];
      for (const path of ["/", "/ws"]) {{
        const ws = new WebSocket("ws://127.0.0.1:{vision_server.port}" + path);
        ws.onopen = () => window.outcome.push(path + " open");
        ws.onclose = () => window.outcome.push(path + " closed");
      }}
    </script>"""

    def attempt(page: Page) -> tuple[list[str], bool]:
        """What the probe's WebSockets did, and whether its frame rendered the page."""
        page.route("http://evil.example/", lambda route: route.fulfill(body=probe, content_type="text/html"))
        page.goto("http://evil.example/")
        wait_for(page, "window.outcome.length === 2")
        framed = next(frame for frame in page.frames if frame != page.main_frame)
        framed.wait_for_load_state()
        rendered = framed.evaluate("() => document.getElementById('conn') !== null")
        return sorted(page.evaluate("window.outcome")), rendered

    assert attempt(page)[0] == ["/ closed", "/ws closed"], "Chromium itself keeps public pages off loopback"
    # Browsers without local network access checks reach the server: then the server refuses them.
    before = httpx.get(f"{vision_server.http}/metrics", timeout=5).text
    unguarded = browser.browser_type.launch(executable_path=shutil.which("chromium"),
                                            args=["--disable-features=LocalNetworkAccessChecks"])
    try:
        outcome, framed = attempt(unguarded.new_page())
    finally:
        unguarded.close()
    after = httpx.get(f"{vision_server.http}/metrics", timeout=5).text
    assert outcome == ["/ closed", "/ws closed"]
    refused = 'mlxd_connections_refused_total{reason="origin"}'
    assert _sample(after, refused) == _sample(before, refused) + 2, "refused by the server, at the handshake"
    assert framed is False, "the frame did not render the page (X-Frame-Options, frame-ancestors)"


def _sample(metrics: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name)), 0.0)
