"""`mlxd install` and friends against a real `systemd --user` and a real journald (scripts/user-systemd.sh).

The manager runs in a private mount namespace as a throwaway uid (and once as root, whose user-unit logs
journald files elsewhere); every command is what a user types, `python -m mlxd ...`, run inside that
namespace. Needs Linux, root, util-linux and systemd; skipped elsewhere with the reason.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, free_port

HARNESS = REPO / "scripts" / "user-systemd.sh"
SYSTEMD_BINARIES = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd-journald")
CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
PR_SET_PDEATHSIG = 1
STEP_TIMEOUT_S = 60


def _missing() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a systemd user instance runs only on Linux"
    if os.geteuid() != 0:
        return "needs root (a private mount namespace, cgroups, setpriv)"
    tools = [t for t in ("unshare", "setpriv", "nsenter", "systemctl", "journalctl") if shutil.which(t) is None]
    tools += [b for b in SYSTEMD_BINARIES if not os.access(b, os.X_OK)]
    return f"missing: {', '.join(tools)} (install systemd and util-linux)" if tools else None


pytestmark = [pytest.mark.systemd, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _die_with_parent() -> None:
    """If pytest is killed outright, the harness still gets SIGTERM and tears everything down."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _slices(uid: int) -> list[Path]:
    return [p for root in CGROUP_ROOTS if (p := Path(root) / "user.slice" / f"user-{uid}.slice").exists()]


def _free_uid() -> int:
    """A uid with no passwd entry and no slice: a run of this test elsewhere on the machine is left alone."""
    for uid in range(4242, 4342):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not _slices(uid):
                return uid
    pytest.skip("no free uid in 4242..4341")


def _namespace_holders(namespace: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns" / "mnt") == namespace:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@dataclass
class UserSystemd:
    """A running harness: `mlxd(...)` runs `python -m mlxd ...` as its user, inside its namespace."""

    uid: int
    harness: subprocess.Popen
    pid: int
    home: Path
    runtime: Path
    namespace: str

    def run(self, *argv: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
               "USER": "mlxdtest", "LOGNAME": "mlxdtest", "LANG": "C.UTF-8"}
        as_user = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", f"--wd={REPO}", *as_user, *argv], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def mlxd(self, *argv: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        # Run in this checkout (setns() would leave us in /): `-m mlxd` imports it and install puts it in
        # the unit's PYTHONPATH, rather than the editable install of the shared venv.
        return self.run(sys.executable, "-m", "mlxd", *argv, timeout=timeout)

    def show(self, prop: str) -> str:
        return self.run("systemctl", "--user", "show", "-p", prop, "--value", "mlxd.service").stdout.strip()

    def stop(self) -> None:
        """Stop as `timeout` or a Ctrl-C would; then nothing of it may be left: process, cgroup or mount."""
        if self.harness.poll() is None:
            self.harness.send_signal(signal.SIGTERM)
        try:
            self.harness.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.harness.kill()
            self.harness.wait(timeout=10)
            pytest.fail("the harness did not stop within 60 s of SIGTERM")
        deadline = time.monotonic() + 10
        while _namespace_holders(self.namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _namespace_holders(self.namespace) == [], "processes still hold the private mount namespace"
        assert _slices(self.uid) == [], "cgroups left behind"
        assert not self.home.parent.exists(), "the scratch directory is left behind"
        assert not Path("/run/systemd/system").exists(), "sd_booted() must stay false outside the namespace"


def start_user_systemd(uid: int) -> UserSystemd:
    # What the unit runs must be readable by the uid, also where it lives under root's mode-700 home.
    expose = {"/root/.pyenv", str(REPO), str(Path(os.path.realpath(sys.executable)).parent.parent)}
    env = {**os.environ, "SD_UID": str(uid), "SD_EXPOSE": " ".join(sorted(expose))}
    harness = subprocess.Popen([str(HARNESS), "sleep", "600"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and harness.poll() is None and not line:
        if select.select([harness.stdout], [], [], 0.5)[0]:
            line = harness.stdout.readline()
    ready = re.match(r"user-systemd: ready pid=(\d+) home=(\S+) runtime=(\S+)", line)
    if not ready:
        harness.terminate()
        _, err = harness.communicate(timeout=60)
        pytest.fail(f"the harness did not come up (exit {harness.returncode}): {line!r} {err[-2000:]}")
    pid = int(ready[1])
    return UserSystemd(uid, harness, pid, Path(ready[2]), Path(ready[3]), os.readlink(f"/proc/{pid}/ns/mnt"))


@pytest.fixture
def readable_model(tiny_text_model: Path) -> Iterator[Path]:
    """pytest's tmp dirs are mode 700: the throwaway uid gets its own readable copy of the model."""
    scratch = Path(tempfile.mkdtemp(prefix="mlxd-sd-model."))
    try:
        scratch.chmod(0o755)
        model = Path(shutil.copytree(tiny_text_model, scratch / "tiny-llama"))
        for path in (model, *model.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def wait_ready(port: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            if health.get("state") == "ready":
                return health
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    pytest.fail(f"the service on port {port} was not ready within {timeout} s")


def reachable(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.25)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[-3:]} exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def install_and_check_logs(sd: UserSystemd, model: Path, port: int) -> None:
    out = ok(sd.mlxd("install", "--model", str(model), "--port", str(port)))
    assert "installed systemd service" in out
    wait_ready(port)
    status = sd.mlxd("status")
    assert status.returncode == 0 and "Active: active (running)" in status.stdout, status.stdout + status.stderr
    assert '"state": "ready"' in status.stdout
    unit = (sd.home / ".config" / "systemd" / "user" / "mlxd.service").read_text()
    assert f'Environment="PYTHONPATH={REPO}"' in unit, "the unit runs this checkout's mlxd"
    wait_until(lambda: '"event": "model_loaded"' in sd.mlxd("logs", "-n", "100").stdout,
               "the server's own JSON lines in `mlxd logs`", timeout=20)


def test_the_service_lifecycle_under_a_real_systemd(readable_model: Path) -> None:
    sd = start_user_systemd(_free_uid())
    try:
        port = free_port()
        install_and_check_logs(sd, readable_model, port)

        piped = sd.run("sh", "-c", f"{sys.executable} -m mlxd status | true")
        assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr

        killed = int(sd.show("MainPID"))
        os.kill(killed, signal.SIGKILL)  # a crash: Restart=on-failure brings it back after RestartSec
        wait_until(lambda: sd.show("NRestarts") == "1" and sd.show("MainPID") not in ("0", str(killed)),
                   "a restart after SIGKILL")
        wait_ready(port)

        ok(sd.mlxd("stop"))
        assert sd.show("ActiveState") == "inactive" and not reachable(port)
        stopped = sd.mlxd("status")
        assert stopped.returncode == 1 and "inactive" in stopped.stdout and "not reachable" in stopped.stdout

        ok(sd.mlxd("start"))
        wait_ready(port)
        before = sd.show("MainPID")
        ok(sd.mlxd("restart"))
        assert sd.show("MainPID") not in ("0", before)
        wait_ready(port)

        ok(sd.mlxd("uninstall"))
        assert not reachable(port)
        assert not (sd.home / ".config" / "systemd" / "user" / "mlxd.service").exists()
        assert sd.show("LoadState") == "not-found"
        after = sd.mlxd("status")
        assert after.returncode == 1 and "not installed" in after.stdout and "health" not in after.stdout
    finally:
        sd.stop()


def test_root_reads_its_service_logs_too(readable_model: Path) -> None:
    """journald puts a system uid's user-unit lines in the system journal: `mlxd logs` must find them."""
    sd = start_user_systemd(0)
    try:
        port = free_port()
        install_and_check_logs(sd, readable_model, port)
        ok(sd.mlxd("uninstall"))
    finally:
        sd.stop()


def test_a_killed_harness_leaves_nothing_behind(readable_model: Path) -> None:
    """What `timeout` does to a run that takes too long: SIGTERM while the service is serving."""
    sd = start_user_systemd(_free_uid())
    port = free_port()
    try:
        ok(sd.mlxd("install", "--model", str(readable_model), "--port", str(port)))
        wait_ready(port)
    finally:
        sd.stop()
    assert not reachable(port)
