"""macOS: run mlxd as a per-user launchd agent in the gui/<uid> domain.

Lifecycle, with the current launchctl verbs:
  install  = write the plist, `bootout` any loaded copy (its failure when nothing is loaded is expected),
             wait until it is gone, `enable`, `bootstrap` (RunAtLoad starts the server).
  start    = `bootstrap` if the agent is not loaded, else `kickstart` (a no-op when already running).
  stop     = `bootout`: launchd sends SIGTERM, then SIGKILL after ExitTimeOut. Chosen over
             `launchctl kill SIGTERM` because an unloaded agent cannot be restarted by KeepAlive whatever
             exit code the server ends with; the plist stays, so it starts again at the next login.
  restart  = `kickstart -k` (kill and start) if loaded, else `bootstrap`.
  uninstall= `bootout` and delete the plist; logs stay. No `disable`: that would persist in launchd's
             override database and make a later install silently fail to start.
"""

from __future__ import annotations

import plistlib
import sys
import time
from pathlib import Path
from string import Template
from typing import Any
from xml.sax.saxutils import escape

from mlxd.service.base import Context, ServiceError, ServiceSpec, check_text, read_template, report_failure

LABEL = "dev.mlxd.server"
TEMPLATE = "launchd.plist"
THROTTLE_INTERVAL_S = 10  # launchd's minimum spacing between two starts after a crash
EXIT_TIMEOUT_S = 15  # SIGTERM -> SIGKILL grace on stop; the server exits well within it
UNLOAD_WAIT_S = 10.0  # bootout can return before the old job is gone; bootstrap then fails with EIO


def plist_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "mlxd"


def log_paths(home: Path) -> tuple[Path, Path]:
    """(stdout, stderr) log files, where macOS users look for them (Console.app shows ~/Library/Logs)."""
    return log_dir(home) / "mlxd.out.log", log_dir(home) / "mlxd.err.log"


def plist_values(spec: ServiceSpec, home: Path) -> dict[str, Any]:
    """The agent definition as data: what the rendered template must parse back to."""
    out, err = log_paths(home)
    return {
        "Label": LABEL,
        "ProgramArguments": list(spec.argv),
        "EnvironmentVariables": dict(spec.environment),
        "WorkingDirectory": str(home),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL_S,
        "ExitTimeOut": EXIT_TIMEOUT_S,
        "StandardOutPath": str(out),
        "StandardErrorPath": str(err),
    }


def _x(value: str, what: str) -> str:
    return escape(check_text(value, what))


def render_plist(spec: ServiceSpec, home: Path) -> str:
    """Fill the shipped template with XML-escaped values, then prove it parses back to `plist_values`."""
    out, err = log_paths(home)
    args = "\n".join(f"\t\t<string>{_x(a, 'a command-line argument')}</string>" for a in spec.argv)
    env = "\n".join(
        f"\t\t<key>{_x(k, 'an environment variable name')}</key>\n"
        f"\t\t<string>{_x(v, f'environment variable {k}')}</string>"
        for k, v in spec.environment.items()
    )
    text = Template(read_template(TEMPLATE)).substitute(
        label=_x(LABEL, "the label"),
        program_arguments=args,
        environment_variables=env,
        working_directory=_x(str(home), "the home directory"),
        throttle_interval=THROTTLE_INTERVAL_S,
        exit_timeout=EXIT_TIMEOUT_S,
        stdout_path=_x(str(out), "the log path"),
        stderr_path=_x(str(err), "the log path"),
    )
    try:
        parsed = plistlib.loads(text.encode("utf-8"))
    except Exception as exc:  # a template edit broke the XML
        raise ServiceError(f"the rendered launchd plist does not parse: {exc}") from exc
    if parsed != plist_values(spec, home):
        raise ServiceError("the rendered launchd plist does not match the intended agent definition")
    return text


class Launchd:
    name = "launchd"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.domain = f"gui/{ctx.uid}"
        self.target = f"{self.domain}/{LABEL}"
        self.definition_path = plist_path(ctx.home)

    def is_loaded(self) -> bool:
        return self.ctx.run(["launchctl", "print", self.target]).returncode == 0

    def _wait_unloaded(self) -> None:
        if self.ctx.dry_run:
            return
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while self.is_loaded() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _load(self) -> int:
        if not self.ctx.check(["launchctl", "enable", self.target]):
            return 1
        bootstrap = ["launchctl", "bootstrap", self.domain, str(self.definition_path)]
        result = self.ctx.run(bootstrap)
        if result.returncode != 0 and not self.ctx.dry_run:
            time.sleep(1.0)  # a just-booted-out job may still be tearing down: one retry
            result = self.ctx.run(bootstrap)
        if result.returncode != 0:
            report_failure(result)
            print(f"hint: check the agent with `plutil -lint {self.definition_path}` and the logs in "
                  f"{log_dir(self.ctx.home)}", file=sys.stderr)
            return 1
        return 0

    def _require_installed(self) -> None:
        if not self.definition_path.exists():
            raise ServiceError(f"mlxd is not installed as a launchd agent ({self.definition_path} is "
                               "missing): run `mlxd install` first")

    def install(self, spec: ServiceSpec) -> int:
        text = render_plist(spec, self.ctx.home)
        self.ctx.mkdir(log_dir(self.ctx.home))
        self.ctx.write(self.definition_path, text)
        self.ctx.run(["launchctl", "bootout", self.target])  # replace a loaded copy; 'not loaded' is fine
        self._wait_unloaded()
        return self._load()

    def uninstall(self) -> int:
        self.ctx.run(["launchctl", "bootout", self.target])  # fails harmlessly when not loaded
        if self.definition_path.exists() or self.ctx.dry_run:
            self.ctx.remove(self.definition_path)
        else:
            print(f"no launchd agent at {self.definition_path}")
        print(f"logs kept in {log_dir(self.ctx.home)}")
        return 0

    def start(self) -> int:
        self._require_installed()
        if self.is_loaded():
            return 0 if self.ctx.check(["launchctl", "kickstart", self.target]) else 1
        return self._load()

    def stop(self) -> int:
        if not self.is_loaded():
            print("mlxd agent is not loaded (already stopped)")
            return 0
        return 0 if self.ctx.check(["launchctl", "bootout", self.target]) else 1

    def restart(self) -> int:
        self._require_installed()
        if self.is_loaded():
            return 0 if self.ctx.check(["launchctl", "kickstart", "-k", self.target]) else 1
        return self._load()

    def status(self) -> None:
        if not self.definition_path.exists():
            print(f"launchd agent {LABEL}: not installed ({self.definition_path} is missing)")
            return
        result = self.ctx.run(["launchctl", "print", self.target])
        if result.returncode != 0:
            print(f"launchd agent {LABEL}: installed, not loaded (stopped); plist {self.definition_path}")
            return
        print(f"launchd agent {LABEL}: loaded; plist {self.definition_path}")
        keys = ("state =", "pid =", "last exit code =", "runs =")
        lines = [ln.strip() for ln in result.stdout.splitlines() if ln.strip().startswith(keys)]
        for line in lines or result.stdout.splitlines():
            print(f"  {line}")

    def logs(self, follow: bool, lines: int) -> int:
        files = [str(p) for p in log_paths(self.ctx.home) if p.exists()]
        if not files:
            print(f"no log files yet in {log_dir(self.ctx.home)}")
            return 1
        argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), *files]
        return self.ctx.run(argv, capture=False, timeout=None if follow else 60.0).returncode

    def installed_argv(self) -> list[str] | None:
        try:
            with self.definition_path.open("rb") as f:
                args = plistlib.load(f).get("ProgramArguments")
        except (OSError, plistlib.InvalidFileException, ValueError):
            return None
        return [str(a) for a in args] if isinstance(args, list) else None
