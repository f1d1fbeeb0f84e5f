"""`mlxd install|uninstall|start|stop|restart|status|logs`: keep mlxd running as a per-user service.

launchd on macOS, systemd --user on Linux. The service runs this very interpreter (`sys.executable`) with
`-m mlxd serve`, so an install from a virtual environment keeps working at login.

The CLI registers the commands with `add_service_commands(subparsers)`; each parsed command carries
`func=handle`, and `handle(args) -> int` is the exit code. Tests pass `runner=` to record commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import mlxd
from mlxd.server.access import (
    StartupError,
    check_exposure,
    check_tls,
    create_token_file,
    is_loopback,
    resolve_token,
    resolve_upstream_token,
)
from mlxd.service.base import Context, Runner, ServiceError, ServiceSpec, dry_runner, run
from mlxd.service.launchd import Launchd
from mlxd.service.systemd import Systemd
from mlxd.settings import Settings, add_serve_arguments

__all__ = [
    "PLATFORMS",
    "Runner",
    "ServiceSpec",
    "add_service_commands",
    "build_spec",
    "detect_platform",
    "handle",
    "probe_health",
    "run",
    "serve_options",
    "service_environment",
]

PLATFORMS = ("launchd", "systemd")
PASSTHROUGH_ENV = ("HF_HOME", "XDG_CACHE_HOME", "MLXD_MODEL", "MLXD_CACHE_DIR", "HF_HUB_OFFLINE")
PATH_LIKE_ENV = frozenset({"HF_HOME", "XDG_CACHE_HOME", "MLXD_CACHE_DIR"})
FALLBACK_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
PATH_OPTIONS = frozenset({"token_file", "tls_cert", "tls_key", "upstream_token_file"})
TOKEN_FILE = Path(".config") / "mlxd" / "token"
HEALTH_TIMEOUT_S = 2.0

UNSUPPORTED = (
    "no supported service manager found: `mlxd {command}` needs launchd (macOS, with launchctl on PATH) "
    "or a systemd user instance (Linux, where `systemctl --user` works). "
    "Run `mlxd serve` in a terminal instead."
)


class Backend(Protocol):
    name: str
    definition_path: Path

    def install(self, spec: ServiceSpec) -> int: ...
    def uninstall(self) -> int: ...
    def start(self) -> int: ...
    def stop(self) -> int: ...
    def restart(self) -> int: ...
    def status(self) -> None: ...
    def logs(self, follow: bool, lines: int) -> int: ...
    def installed_argv(self) -> list[str] | None: ...


def detect_platform(
    sys_platform: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    runner: Runner = run,
    uid: int | None = None,
) -> str | None:
    """'launchd', 'systemd', or None when this machine has neither usable per-user service manager."""
    sys_platform = sys.platform if sys_platform is None else sys_platform
    if sys_platform == "darwin":
        return "launchd" if which("launchctl") else None
    if sys_platform.startswith("linux") and which("systemctl"):
        if runner(["systemctl", "--user", "show-environment"], timeout=5.0).returncode == 0:
            return "systemd"
        if Path(f"/run/user/{os.getuid() if uid is None else uid}/systemd").is_dir():
            return "systemd"
    return None


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register install/uninstall/start/stop/restart/status/logs, each with func=handle (-> exit code)."""
    helps = {
        "install": "install mlxd as a per-user service started at login (launchd / systemd --user)",
        "uninstall": "stop and remove the mlxd service (logs are kept)",
        "start": "start the installed mlxd service",
        "stop": "stop the mlxd service (it starts again at the next login)",
        "restart": "restart the mlxd service",
        "status": "show the service state and probe the running server's /healthz",
        "logs": "show the service logs",
    }
    for name, text in helps.items():
        parser = subparsers.add_parser(name, help=text, description=text)
        if name == "install":
            add_serve_arguments(parser)
            parser.add_argument("--create-token", action="store_true",
                                help=f"require a token: create ~/{TOKEN_FILE} with a random one (or keep the one "
                                "there) and serve with --token-file")
        if name in ("install", "uninstall"):
            parser.add_argument("--dry-run", action="store_true",
                                help="print every file it would write and command it would run; "
                                "change nothing")
        if name == "logs":
            parser.add_argument("-f", "--follow", action="store_true", help="keep printing new log lines")
            parser.add_argument("-n", "--lines", type=int, default=200,
                                help="lines to show (default: %(default)s)")
        # Hidden: lets tests (and curious users) render the other platform's service on this machine.
        parser.add_argument("--platform", choices=PLATFORMS, default=None, help=argparse.SUPPRESS)
        parser.set_defaults(func=handle, service_command=name)


def make_backend(platform: str, ctx: Context) -> Backend:
    return Launchd(ctx) if platform == "launchd" else Systemd(ctx)


def handle(args: argparse.Namespace, runner: Runner | None = None) -> int:
    """Run one service command; `runner` replaces the real command runner (tests record with it)."""
    command: str = args.service_command
    platform = args.platform or detect_platform()
    if platform is None:
        print(f"mlxd {command}: " + UNSUPPORTED.format(command=command), file=sys.stderr)
        return 1
    dry_run = bool(getattr(args, "dry_run", False))
    ctx = Context(home=Path.home(), runner=dry_runner if dry_run else (runner or run), dry_run=dry_run)
    backend = make_backend(platform, ctx)
    try:
        if command == "install":
            return install(args, backend, dry_run)
        if command == "status":
            return status(backend)
        if command == "logs":
            try:
                return backend.logs(args.follow, args.lines)
            except KeyboardInterrupt:
                return 0
        return {"uninstall": backend.uninstall, "start": backend.start, "stop": backend.stop,
                "restart": backend.restart}[command]()
    except ServiceError as exc:
        print(f"mlxd {command}: {exc}", file=sys.stderr)
        return 1


def serve_options(args: argparse.Namespace) -> list[str]:
    """The `mlxd serve` options to put in the service: those whose value differs from the default.

    A local model path is made absolute, since the service does not start in the current directory.
    """
    reference = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(reference)
    options: list[str] = []
    for action in reference._actions:  # the serve options as declared, so new ones are forwarded too
        if not action.option_strings or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_const flags
            if value == action.const:
                options.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:  # repeatable options, one flag each
            if action.dest in PATH_OPTIONS or (action.dest == "model" and os.path.exists(os.path.expanduser(item))):
                item = os.path.abspath(os.path.expanduser(item))
            options += [flag, str(item)]
    return options


def _checkout_root() -> str | None:
    """The source checkout mlxd is imported from, when it is not installed in site-packages."""
    root = Path(mlxd.__file__).resolve().parent.parent
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    if any(root == Path(d).resolve() for d in site_dirs):
        return None
    return str(root)


def service_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the server needs under launchd/systemd, whose environments are nearly empty."""
    environ = os.environ if environ is None else environ
    paths = [os.path.dirname(sys.executable), *(environ.get("PATH") or FALLBACK_PATH).split(os.pathsep)]
    env = {
        "PATH": os.pathsep.join(dict.fromkeys(p for p in paths if p)),
        "PYTHONUNBUFFERED": "1",  # stdout to a log file is block-buffered otherwise
    }
    checkout = _checkout_root()
    if checkout:  # running from a checkout (or editable install): make `-m mlxd` importable at login
        env["PYTHONPATH"] = checkout
    for name in PASSTHROUGH_ENV:
        value = environ.get(name)
        if value:
            env[name] = os.path.abspath(os.path.expanduser(value)) if name in PATH_LIKE_ENV else value
    return env


def build_spec(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServiceSpec:
    if not sys.executable:
        raise ServiceError("cannot tell which Python interpreter is running (sys.executable is empty)")
    settings = Settings.from_args(args)
    argv = (sys.executable, "-m", "mlxd", "serve", *serve_options(args))
    return ServiceSpec(argv=argv, environment=service_environment(environ), host=settings.host,
                       port=settings.port)


def _prepare_token(args: argparse.Namespace, dry_run: bool) -> None:
    """--create-token: make the token file (once) and serve with it."""
    if args.token is not None:
        print("warning: --token is written into the service definition, where other local users may read it; "
              "prefer --create-token or --token-file", file=sys.stderr)
    if not args.create_token or args.token is not None or args.token_file is not None:
        return
    path = Path.home() / TOKEN_FILE
    args.token_file = str(path)
    if dry_run:
        print(f"would create {path} with a random token (mode 0600), unless it exists")
    elif create_token_file(path):
        print(f"created {path}: clients send its token as `Authorization: Bearer <token>`, `?token=<token>` or "
              "the WebSocket subprotocol `mlxd.token.<token>`")


def _check_startup(args: argparse.Namespace, dry_run: bool) -> None:
    """Refuse to install a server that would refuse to start: launchd and systemd would restart it in a loop."""
    settings = Settings.from_args(args)
    try:
        if not (dry_run and args.create_token):  # in a dry run the token file may not exist yet
            resolve_token(settings, environ={})
        check_exposure(settings, settings.token is not None or settings.token_file is not None)
        check_tls(settings)
        resolve_upstream_token(settings)
    except StartupError as exc:
        raise ServiceError(str(exc)) from None


def install(args: argparse.Namespace, backend: Backend, dry_run: bool) -> int:
    _prepare_token(args, dry_run)
    _check_startup(args, dry_run)
    spec = build_spec(args)
    if not is_loopback(spec.host):
        print(f"warning: the service will listen on {spec.host}, reachable from other machines; "
              "the default 127.0.0.1 keeps it local", file=sys.stderr)
    rc = backend.install(spec)
    if rc == 0 and not dry_run:
        print(f"installed {backend.name} service: {backend.definition_path}")
        print(f"it serves ws://{_url_host(spec.host)}:{spec.port}/ ; check it with `mlxd status`, "
              "read its logs with `mlxd logs`")
    return rc


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _option(argv: list[str], flag: str) -> str | None:
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word[len(flag) + 1:]
    return None


def probe_health(host: str, port: int, timeout: float = HEALTH_TIMEOUT_S, tls: bool = False) -> tuple[bool, str]:
    """GET /healthz directly (no proxy): (True, its JSON) on HTTP 200, else (False, what went wrong).

    Over TLS the certificate is not verified: this asks our own server on this machine whether it is up,
    and its certificate is often self-signed.
    """
    url = f"{'https' if tls else 'http'}://{_url_host(host)}:{port}/healthz"
    handlers = [urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl._create_unverified_context())]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: not reachable ({reason})"
    try:
        text = json.dumps(json.loads(body), indent=2)
    except ValueError:
        text = body.decode("utf-8", "replace")
    return code == 200, f"{url}: HTTP {code}\n{text}"


def status(backend: Backend) -> int:
    """Print the service manager's view, then the server's own: exit 0 only if /healthz answers 200.

    With no service definition there is no port of ours to probe: whatever answers on the default port
    would be some other server, so it is not asked.
    """
    backend.status()
    argv = backend.installed_argv()
    if argv is None:
        if backend.definition_path.exists():
            print(f"health: not probed, no command line could be read from {backend.definition_path}")
        return 1
    host = _option(argv, "--host") or Settings().host
    try:
        port = int(_option(argv, "--port") or Settings().port)
    except ValueError:
        port = Settings().port
    tls = _option(argv, "--tls-cert") is not None or "--tls-self-signed" in argv
    healthy, text = probe_health(host, port, tls=tls)
    print(f"health {text}")
    return 0 if healthy else 1
