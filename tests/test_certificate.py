"""TLS in one step: `mlxd serve --tls-self-signed` and `mlxd cert` make a localhost certificate once, keep it
private under the user's config directory, reuse it, and say how clients trust it."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from mlxd.server.certificate import ensure_certificate
from tests.gemini_sdk import wait_ready_over_tls
from tests.helpers import REPO, receive, send


def strict_trust(cert: Path) -> ssl.SSLContext:
    """What Python 3.13 clients do by default: X.509 strict checks on top of the usual verification."""
    context = ssl.create_default_context(cafile=str(cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def test_the_certificate_is_made_once_private_and_renewed_for_a_new_host(tmp_path: Path):
    made = ensure_certificate("127.0.0.1", tmp_path / "tls")
    assert made.created
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    again = ensure_certificate("localhost", tmp_path / "tls")
    assert not again.created and again.cert.read_bytes() == made.cert.read_bytes()
    other = ensure_certificate("192.168.7.7", tmp_path / "tls")
    assert other.created, "a certificate that does not name the host is replaced"
    assert not ensure_certificate("127.0.0.1", tmp_path / "tls").created, "it still names loopback"
    made.cert.write_text("not a certificate")
    assert ensure_certificate("127.0.0.1", tmp_path / "tls").created


def test_serve_tls_self_signed_prints_the_trust_line_and_serves_wss(start_server, tiny_text_model, tmp_path: Path):
    server = start_server(tiny_text_model, "--tls-self-signed", wait=None, env={"XDG_CONFIG_HOME": str(tmp_path)})
    cert = tmp_path / "mlxd" / "tls" / "localhost.pem"
    deadline = time.monotonic() + 60
    while f"SSL_CERT_FILE={cert} NODE_EXTRA_CA_CERTS={cert}" not in server.log_text():
        assert server.process.poll() is None and time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    wait_ready_over_tls(server, cert)
    trust = strict_trust(cert)
    assert httpx.get(f"https://127.0.0.1:{server.port}/readyz", verify=trust, timeout=5).status_code == 200
    # 127.0.0.1 itself: on a shared machine `localhost` may resolve to [::1] where another server has this port.
    for name in ("localhost", "127.0.0.1"):
        with connect(f"wss://127.0.0.1:{server.port}/", ssl=trust, server_hostname=name, open_timeout=30) as ws:
            send(ws, {"type": "get_status"})
            assert receive(ws)["type"] == "status"
    assert "(made;" in server.log_text()


def test_cert_reuses_what_serve_made_and_conflicting_options_are_refused(tmp_path: Path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def mlxd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlxd", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    first, second = mlxd("cert"), mlxd("cert")
    assert first.returncode == 0 and "(made;" in first.stdout, first.stderr
    assert second.returncode == 0 and "(reused;" in second.stdout
    assert f"SSL_CERT_FILE={tmp_path}/mlxd/tls/localhost.pem" in second.stdout
    refused = mlxd("serve", "--port", "1", "--tls-self-signed", "--tls-cert", str(tmp_path / "x.pem"))
    assert refused.returncode == 2 and "leave out --tls-cert" in refused.stderr
