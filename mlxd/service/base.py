"""Pieces shared by the launchd and systemd backends: the command runner, the service spec, file effects.

Every side effect (writing a file, running launchctl/systemctl) goes through `Context`, so `--dry-run` and
the tests see exactly what a real install would do without doing it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

COMMAND_TIMEOUT_S = 60.0


class Runner(Protocol):
    def __call__(
        self, argv: Sequence[str], *, capture: bool = True, timeout: float | None = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]: ...


def run(
    argv: Sequence[str], *, capture: bool = True, timeout: float | None = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command and never raise: each caller decides which failures matter."""
    args = list(argv)
    try:
        return subprocess.run(args, capture_output=capture, text=True, check=False, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(args, 127, "", f"{args[0]}: command not found\n")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"{shlex.join(args)}: timed out after {timeout}s\n")


def dry_runner(
    argv: Sequence[str], *, capture: bool = True, timeout: float | None = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Print the command instead of running it, and pretend it succeeded."""
    print(f"would run: {shlex.join(argv)}")
    return subprocess.CompletedProcess(list(argv), 0, "", "")


class ServiceError(Exception):
    """A problem the user can fix; its message is printed without a traceback."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: the full command line, its environment, and where it will listen."""

    argv: tuple[str, ...]
    environment: dict[str, str]
    host: str
    port: int


def check_text(value: str, what: str) -> str:
    """Refuse control characters: neither a plist nor a unit file can carry them faithfully."""
    bad = [c for c in value if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise ServiceError(f"{what} contains a control character ({bad[0]!r}), which a service "
                           f"definition cannot carry: {value!r}")
    return value


def read_template(name: str) -> str:
    """Read a template shipped as package data, so it is found from a checkout and from a wheel alike."""
    return resources.files("mlxd").joinpath("templates", name).read_text(encoding="utf-8")


@dataclass
class Context:
    """Where and how the backends act: the home directory, the command runner, and dry-run."""

    home: Path
    runner: Runner = run
    dry_run: bool = False
    uid: int = field(default_factory=os.getuid)

    def run(self, argv: Sequence[str], *, capture: bool = True,
            timeout: float | None = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return self.runner(argv, capture=capture, timeout=timeout)

    def check(self, argv: Sequence[str]) -> bool:
        """Run a command whose failure stops the operation; say what failed and why."""
        result = self.run(argv)
        if result.returncode != 0:
            report_failure(result)
            return False
        return True

    def write(self, path: Path, text: str) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a half-written definition."""
        if self.dry_run:
            print(f"would write {path}:")
            print(text, end="" if text.endswith("\n") else "\n")
            print(f"(end of {path})")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def mkdir(self, path: Path) -> None:
        if self.dry_run:
            if not path.is_dir():
                print(f"would create directory {path}")
            return
        path.mkdir(parents=True, exist_ok=True)

    def remove(self, path: Path) -> None:
        if self.dry_run:
            print(f"would remove {path}")
            return
        path.unlink(missing_ok=True)


def report_failure(result: subprocess.CompletedProcess[str]) -> None:
    detail = (result.stderr or result.stdout or "").strip()
    argv = result.args if isinstance(result.args, list) else [str(result.args)]
    suffix = f": {detail}" if detail else ""
    print(f"error: `{shlex.join(argv)}` failed (exit {result.returncode}){suffix}", file=sys.stderr)
