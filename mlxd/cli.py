"""The `mlxd` command line: `serve`, the client commands (`ask`, `watch`) and the service commands (`install`, ...)."""

from __future__ import annotations

import argparse
import os
import sys

from mlxd import __version__
from mlxd.client_cli import add_client_commands
from mlxd.service import add_service_commands
from mlxd.settings import Settings, add_serve_arguments


def _serve(args: argparse.Namespace) -> int:
    from mlxd.server.access import StartupError, check_exposure, check_tls, resolve_token, resolve_upstream_token
    from mlxd.server.certificate import use_self_signed

    settings = Settings.from_args(args)
    try:
        token = resolve_token(settings)
        check_exposure(settings, token is not None)
        settings, certificate = use_self_signed(settings)
        check_tls(settings)
        upstream_token = resolve_upstream_token(settings)
    except StartupError as exc:
        print(f"mlxd serve: {exc}", file=sys.stderr)
        return 2
    if certificate is not None:
        print(certificate.announcement(), file=sys.stderr, flush=True)

    from mlxd.engine.blas import use_fast_blas

    blas = use_fast_blas()
    from mlxd.logs import configure_logging
    from mlxd.server.serve import serve

    configure_logging(settings.log_level, settings.log_format)
    return serve(settings, token, blas, upstream_token)


def _cert(args: argparse.Namespace) -> int:
    from mlxd.server.certificate import ensure_certificate

    try:
        certificate = ensure_certificate(args.host)
    except OSError as exc:
        print(f"mlxd cert: cannot keep the self-signed certificate: {exc}", file=sys.stderr)
        return 2
    print(certificate.announcement())
    print(f"serve with it: mlxd serve --tls-self-signed   (or --tls-cert {certificate.cert} "
          f"--tls-key {certificate.key})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxd", description="A local, real-time multimodal inference daemon.")
    parser.add_argument("--version", action="version", version=f"mlxd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the WebSocket server in the foreground")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)
    cert = commands.add_parser("cert", help="make (once) the localhost certificate of --tls-self-signed and say "
                               "how clients trust it")
    cert.add_argument("--host", default=Settings().host, help="a name or address it must cover besides localhost "
                      "(default: %(default)s)")
    cert.set_defaults(func=_cert)
    add_client_commands(commands)
    add_service_commands(commands)
    return parser


SIGPIPE_EXIT = 141  # what a shell reports for a tool killed by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`mlxd status | head -n 3`): stop quietly, as other command-line tools do.
        # Python would flush stdout again at exit and print a second BrokenPipeError; point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    return code
