"""Who may connect: browser origins, the token (header, query, subprotocol), /metrics, startup refusals, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from mlxd.server.access import Access, host_is_loopback
from mlxd.service import probe_health
from mlxd.settings import Settings
from tests.helpers import REPO, receive, run_request, send, wait_ready_over_tls

TOKEN = "s3cret-Token_0123456789"


@pytest.mark.parametrize("origin,allowed", [
    (None, True),
    ("http://localhost:3000", True),
    ("https://localhost", True),
    ("http://127.0.0.1:9", True),
    ("http://[::1]:8080", True),
    ("HTTP://LOCALHOST:3000", True),
    ("https://app.example", True),
    ("http://192.168.1.5:8765", True),
    ("http://192.168.1.5:9000", False),
    ("https://evil.example", False),
    ("http://localhost.evil.example", False),
    ("http://127.0.0.1.evil.example", False),
    ("null", False),
    ("file://", False),
    ("chrome-extension://abcdef", False),
    ("http://localhost:notaport", False),
])
def test_origin_allowlist(origin, allowed):
    access = Access(Settings(host="192.168.1.5", port=8765, allow_origins=("https://app.example/",)), None)
    assert access.origin_allowed(origin) is allowed


def test_a_wildcard_allows_any_origin():
    assert Access(Settings(allow_origins=("*",)), None).origin_allowed("https://anything.example")


def refused_status(server, **options) -> int:
    with pytest.raises(InvalidStatus) as refused:
        server.connect(**options).close()
    return refused.value.response.status_code


def test_pages_from_other_sites_are_refused_at_the_handshake(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--allow-origin", "https://app.example")
    assert refused_status(server, origin="https://evil.example") == 403
    assert refused_status(server, origin="null") == 403
    for origin in ("http://localhost:5173", "http://127.0.0.1:8000", "https://app.example", None):
        with server.connect(origin=origin) as ws:
            send(ws, {"type": "get_status", "id": "s"})
            assert receive(ws)["type"] == "status"
    metrics = httpx.get(f"{server.http}/metrics", timeout=5).text
    assert 'mlxd_connections_refused_total{reason="origin"} 2.0' in metrics


def test_a_token_is_required_in_a_header_a_query_or_a_subprotocol(start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    with pytest.raises(InvalidStatus) as missing:
        server.connect().close()
    assert missing.value.response.status_code == 401
    assert missing.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused_status(server, additional_headers={"Authorization": "Bearer wrong"}) == 403
    assert refused_status(server, subprotocols=["mlxd.token.wrong"]) == 403
    with pytest.raises(InvalidStatus):
        connect(server.ws_url(f"/?token={TOKEN[:-1]}"), open_timeout=10).close()

    with server.connect(additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        send(ws, {"type": "config", "maxOutputTokens": 2})
        receive(ws)
        assert run_request(ws, {"type": "text_input", "content": "hi", "id": "h"})[-1]["type"] == "response_complete"
    with connect(server.ws_url(f"/ws?token={TOKEN}"), open_timeout=10) as ws:
        send(ws, {"type": "get_status"})
        assert receive(ws)["type"] == "status"
    with server.connect(subprotocols=["mlxd.token." + TOKEN]) as ws:
        assert ws.subprotocol == "mlxd.token." + TOKEN, "browsers fail a handshake that does not echo it"
        send(ws, {"type": "get_status"})
        assert receive(ws)["type"] == "status"

    assert httpx.get(f"{server.http}/healthz", timeout=5).status_code == 200, "probes stay open"
    assert httpx.get(f"{server.http}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{server.http}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"{server.http}/metrics", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 403
    metrics = httpx.get(f"{server.http}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert metrics.status_code == 200
    assert 'mlxd_connections_refused_total{reason="forbidden"} 3.0' in metrics.text
    assert 'mlxd_connections_refused_total{reason="unauthorized"} 1.0' in metrics.text
    assert httpx.get(f"{server.http}/metrics?token={TOKEN}", timeout=5).status_code == 200
    time.sleep(0.2)
    assert TOKEN not in server.log_text(), "the query string is redacted from uvicorn's log lines"
    assert "token=<redacted>" in server.log_text()


def test_gemini_sdks_present_the_token_as_their_api_key(start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    accepted = [{"additional_headers": {"x-goog-api-key": TOKEN}},
                {"additional_headers": {"Authorization": f"Token {TOKEN}"}}]
    for options in accepted:
        with server.connect(**options) as ws:
            send(ws, {"type": "get_status"})
            assert receive(ws)["type"] == "status"
    for query in (f"key={TOKEN}", f"access_token={TOKEN}"):
        with connect(server.ws_url(f"/?{query}"), open_timeout=10) as ws:
            send(ws, {"type": "get_status"})
            assert receive(ws)["type"] == "status"
    assert refused_status(server, additional_headers={"x-goog-api-key": "wrong"}) == 403
    assert refused_status(server, additional_headers={"Authorization": "Token wrong"}) == 403
    assert refused_status(server, additional_headers={"Authorization": f"Basic {TOKEN}"}) == 401
    with pytest.raises(InvalidStatus) as wrong_key:
        connect(server.ws_url("/?key=wrong"), open_timeout=10).close()
    assert wrong_key.value.response.status_code == 403
    time.sleep(0.2)
    assert TOKEN not in server.log_text(), "`?key=` and `?access_token=` are redacted like `?token=`"
    assert "key=<redacted>" in server.log_text() and "access_token=<redacted>" in server.log_text()


def serve_and_fail(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `mlxd serve` with options it must refuse; return what it said. It never gets to load a model."""
    result = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--port", "1", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_a_non_loopback_address_needs_a_token_or_insecure():
    message = serve_and_fail("--host", "0.0.0.0")
    assert "without a token" in message and "--insecure" in message


def test_a_token_file_others_can_read_is_refused(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    message = serve_and_fail("--token-file", str(token_file))
    assert "0644" in message and "chmod 600" in message
    assert "printable ASCII" in serve_and_fail("--token", "two words")
    assert "--tls-cert" in serve_and_fail("--tls-key", str(token_file))


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_serves_wss_and_https(start_server, tiny_text_model, tmp_path: Path):
    cert, key = self_signed_certificate(tmp_path)
    server = start_server(tiny_text_model, "--tls-cert", str(cert), "--tls-key", str(key), wait=None)
    trust = wait_ready_over_tls(server, cert)
    with connect(f"wss://127.0.0.1:{server.port}/", ssl=trust, open_timeout=10) as ws:
        send(ws, {"type": "config", "maxOutputTokens": 2})
        receive(ws)
        assert run_request(ws, {"type": "text_input", "content": "hi", "id": "t"})[-1]["type"] == "response_complete"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert probe_health("127.0.0.1", server.port, tls=True)[0], "`mlxd status` probes a TLS server too"


@pytest.mark.parametrize("host,allowed", [
    (None, True), ("localhost:8765", True), ("127.0.0.1", True), ("[::1]:8765", True), ("app.localhost", True),
    ("evil.example:8765", False), ("localhost.evil.example", False), ("127.0.0.1.nip.io", False), ("[bad", False),
])
def test_host_names_a_loopback_server_answers(host, allowed):
    assert host_is_loopback(host) is allowed


def test_a_dns_rebinding_page_cannot_reach_a_loopback_server(start_server, tiny_text_model):
    server = start_server(tiny_text_model)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{server.http}{path}", headers={"Host": f"evil.example:{server.port}"},
                         timeout=5).status_code == 403
    assert httpx.get(f"{server.http}/healthz", headers={"Host": f"localhost:{server.port}"}, timeout=5).is_success
    handshake = (f"GET / HTTP/1.1\r\nHost: evil.example:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(handshake.encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 403")
