"""Linux: run mlxd as a systemd user service (`systemctl --user`), started with the user's session.

Lifecycle:
  install  = write the unit, `daemon-reload`, `enable`, `restart` (restart rather than `enable --now` so
             that re-installing with new options replaces a running server).
  start/stop/restart = the systemctl verbs of the same name; `Restart=on-failure` restarts after a crash
             but never after `stop`, and systemd counts an exit by SIGTERM as clean.
  uninstall= `disable --now`, delete the unit, `daemon-reload`, `reset-failed`.
  logs     = `journalctl --user-unit mlxd.service`: journald files the lines of a system uid's (root's) user
             units in the system journal, where `journalctl --user` does not look; --user-unit finds them
             there and, for other users, in their own user journal.
A user service stops at logout unless lingering is on (`loginctl enable-linger`); install says so.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from string import Template

from mlxd.service.base import Context, ServiceError, ServiceSpec, check_text, read_template

UNIT = "mlxd.service"
LOGS_COMMAND = ("journalctl", "--user-unit", UNIT, "--quiet", "--no-pager")
TEMPLATE = "systemd.service"
RESTART_SEC = 5
TIMEOUT_STOP_SEC = 15  # SIGTERM -> SIGKILL grace on stop; same as launchd's ExitTimeOut
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def unit_dir(home: Path) -> Path:
    """Where systemd looks for user units: $XDG_CONFIG_HOME/systemd/user, else ~/.config/systemd/user."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else home / ".config"
    return base / "systemd" / "user"


def unit_path(home: Path) -> Path:
    return unit_dir(home) / UNIT


def _escape(value: str) -> str:
    """systemd's double-quoted word: C escapes for \\ and ", and %% for a literal % (specifiers)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def quote_exec_arg(arg: str) -> str:
    """Quote one ExecStart word; `$` is doubled because ExecStart expands $VAR and ${VAR}."""
    return '"' + _escape(check_text(arg, "a command-line argument")).replace("$", "$$") + '"'


def quote_executable(path: str) -> str:
    """Quote ExecStart's executable: %% escaped, but no $$ (systemd would keep it doubled in the path).

    systemd refuses an executable name holding a quote or a backslash ("Executable name contains special
    characters", fatal); `$` is refused too since argv[0] would then go through variable expansion.
    """
    check_text(path, "the interpreter path")
    bad = sorted(set(path) & set("\"'\\$"))
    if bad:
        raise ServiceError(f"systemd cannot start an interpreter whose path contains {' or '.join(bad)}: "
                           f"{path!r}; install mlxd into an environment at a plainer path")
    return '"' + _escape(path) + '"'


def environment_line(name: str, value: str) -> str:
    """One Environment= line; no $ escaping, as Environment= does not expand variables."""
    if not _ENV_NAME.match(name):
        raise ServiceError(f"not a valid environment variable name: {name!r}")
    return 'Environment="' + _escape(f"{name}={check_text(value, f'environment variable {name}')}") + '"'


def split_exec_start(value: str) -> list[str]:
    """Invert `quote_executable` + `quote_exec_arg` for an ExecStart= value written by this module."""
    executable, *args = shlex.split(value)
    return [executable.replace("%%", "%"), *(a.replace("%%", "%").replace("$$", "$") for a in args)]


def render_unit(spec: ServiceSpec) -> str:
    return Template(read_template(TEMPLATE)).substitute(
        exec_start=" ".join([quote_executable(spec.argv[0]), *(quote_exec_arg(a) for a in spec.argv[1:])]),
        environment="\n".join(environment_line(k, v) for k, v in spec.environment.items()),
        restart_sec=RESTART_SEC,
        timeout_stop_sec=TIMEOUT_STOP_SEC,
    )


class Systemd:
    name = "systemd"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.definition_path = unit_path(ctx.home)

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", "--user", *args]

    def _require_installed(self) -> None:
        if not self.definition_path.exists():
            raise ServiceError(f"mlxd is not installed as a systemd user service ({self.definition_path} is "
                               "missing): run `mlxd install` first")

    def install(self, spec: ServiceSpec) -> int:
        text = render_unit(spec)
        self.ctx.write(self.definition_path, text)
        for verb in (("daemon-reload",), ("enable", UNIT), ("restart", UNIT)):
            if not self.ctx.check(self._systemctl(*verb)):
                return 1
        print("note: a systemd user service stops when you log out; to keep mlxd running, "
              "run `loginctl enable-linger`")
        return 0

    def uninstall(self) -> int:
        self.ctx.run(self._systemctl("disable", "--now", UNIT))  # fails harmlessly when not installed
        if self.definition_path.exists() or self.ctx.dry_run:
            self.ctx.remove(self.definition_path)
        else:
            print(f"no unit file at {self.definition_path}")
        self.ctx.run(self._systemctl("daemon-reload"))
        self.ctx.run(self._systemctl("reset-failed", UNIT))  # forget a failed state; fails if there is none
        print(f"logs stay in the journal: {shlex.join(LOGS_COMMAND[:3])}")
        return 0

    def start(self) -> int:
        self._require_installed()
        return 0 if self.ctx.check(self._systemctl("start", UNIT)) else 1

    def stop(self) -> int:
        if self.definition_path.exists():
            return 0 if self.ctx.check(self._systemctl("stop", UNIT)) else 1
        self.ctx.run(self._systemctl("stop", UNIT))  # a unit whose file was deleted by hand may still run
        print(f"mlxd is not installed as a systemd user service ({self.definition_path} is missing): "
              "nothing to stop")
        return 0

    def restart(self) -> int:
        self._require_installed()
        return 0 if self.ctx.check(self._systemctl("restart", UNIT)) else 1

    def status(self) -> None:
        if not self.definition_path.exists():
            print(f"systemd user service {UNIT}: not installed ({self.definition_path} is missing)")
            return
        result = self.ctx.run(self._systemctl("status", "--no-pager", "--lines=0", UNIT))
        print((result.stdout or result.stderr).rstrip() or f"systemd user service {UNIT}: state unknown")

    def logs(self, follow: bool, lines: int) -> int:
        argv = [*LOGS_COMMAND, "-n", str(lines)]
        argv += ["-f"] if follow else []
        return self.ctx.run(argv, capture=False, timeout=None if follow else 60.0).returncode

    def installed_argv(self) -> list[str] | None:
        try:
            text = self.definition_path.read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                try:
                    return split_exec_start(line.removeprefix("ExecStart="))
                except ValueError:
                    return None
        return None
