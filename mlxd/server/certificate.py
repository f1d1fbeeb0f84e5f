"""A self-signed localhost certificate for `wss://`, made once and reused: TLS in one step.

Google's python SDK always connects with `wss://`, so serving it locally needs a certificate the client
trusts. `mlxd cert` and `mlxd serve --tls-self-signed` keep one under the user's config directory (the key
readable by its owner only) and say which environment variables make python and node trust it. It is
replaced when it nears its end or does not name the host being served.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlxd.server.access import WILDCARD_HOSTS, StartupError
from mlxd.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
RENEW_DAYS = 30


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    created: bool

    def trust_line(self) -> str:
        """The shell line that makes python (SSL_CERT_FILE) and node (NODE_EXTRA_CA_CERTS) clients trust it."""
        return f"export SSL_CERT_FILE={self.cert} NODE_EXTRA_CA_CERTS={self.cert}"

    def announcement(self) -> str:
        made = "made" if self.created else "reused"
        return (f"TLS certificate (self-signed): {self.cert} ({made}; its key {self.key} is mode 0600).\n"
                f"Clients trust it with:\n  {self.trust_line()}")


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/mlxd, else ~/.config/mlxd (where `mlxd install --create-token` keeps the token too)."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # the XDG spec ignores relative paths
    return base / "mlxd"


def ensure_certificate(host: str, folder: Path | None = None) -> Certificate:
    """The certificate in `folder` (default: <config dir>/tls) if it is still good for `host`, else a new one."""
    folder = folder or config_dir() / "tls"
    cert_path, key_path = folder / "localhost.pem", folder / "localhost-key.pem"
    names = _names(host)
    if key_path.exists() and _still_good(cert_path, names):
        return Certificate(cert_path, key_path, created=False)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_path, _build(key, names).public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_path, 0o644)  # the certificate is public: clients read it to trust the server
    return Certificate(cert_path, key_path, created=True)


def _names(host: str) -> tuple[str, ...]:
    host = host.strip("[]").lower()
    return LOOPBACK_NAMES if host in (*WILDCARD_HOSTS, *LOOPBACK_NAMES) else (*LOOPBACK_NAMES, host)


def _subject_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


def _build(key: ec.EllipticCurvePrivateKey, names: tuple[str, ...]) -> x509.Certificate:
    """Self-signed, with the extensions strict verifiers (Python 3.13's default, node) insist on."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlxd localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _still_good(cert_path: Path, names: tuple[str, ...]) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left > datetime.timedelta(days=RENEW_DAYS) and set(_subject_names(names)) <= set(alternative)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner can read, whole or not at all (never a half-written key)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def use_self_signed(settings: Settings) -> tuple[Settings, Certificate | None]:
    """With --tls-self-signed: the settings serving the kept certificate (made now if needed), and it."""
    if not settings.tls_self_signed:
        return settings, None
    if settings.tls_cert is not None or settings.tls_key is not None:
        raise StartupError("--tls-self-signed makes its own certificate: leave out --tls-cert and --tls-key")
    try:
        certificate = ensure_certificate(settings.host)
    except OSError as exc:
        raise StartupError(f"cannot keep the self-signed certificate: {exc}") from None
    return replace(settings, tls_cert=str(certificate.cert), tls_key=str(certificate.key)), certificate
