"""`mlxd install` and friends: render into a temporary HOME, parse what was written, record the commands.

No launchd or systemd manager is touched: a recording runner stands in for launchctl/systemctl. The last
tests run the rendered command line for real, as the service manager would, against a tiny model.
"""

from __future__ import annotations

import argparse
import http.server
import inspect
import json
import os
import plistlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mlxd.service import PASSTHROUGH_ENV, PLATFORMS, add_service_commands, detect_platform, serve_options
from mlxd.service.base import read_template
from mlxd.service.systemd import quote_exec_arg, quote_executable, split_exec_start
from mlxd.settings import Settings, add_serve_arguments

REPO = Path(__file__).resolve().parent.parent
UID = os.getuid()
TARGET = f"gui/{UID}/dev.mlxd.server"


class Recorder:
    """Stands in for launchctl/systemctl: records every command and imitates launchd's loaded state."""

    def __init__(self, loaded: bool = False, fail: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.loaded = loaded
        self.fail = set(fail)

    def __call__(self, argv: Sequence[str], *, capture: bool = True,
                 timeout: float | None = 60.0) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        verb = argv[1] if argv[0] == "launchctl" else " ".join(argv[:3])
        rc, out = 0, ""
        if argv[:2] == ["launchctl", "print"]:
            rc, out = (0, "\tstate = running\n\tpid = 4242\n\tlast exit code = (never exited)\n") \
                if self.loaded else (113, "")
        elif argv[:2] == ["launchctl", "bootout"]:
            rc, self.loaded = (0 if self.loaded else 3), False
        elif argv[:2] == ["launchctl", "bootstrap"]:
            self.loaded = True
        elif argv[:3] == ["systemctl", "--user", "status"]:
            out = "* mlxd.service - mlxd local multimodal inference server\n   Active: active (running)\n"
        if verb in self.fail:
            rc = 5
        return subprocess.CompletedProcess(argv, rc, out, "simulated failure" if rc == 5 else "")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setattr(Path, "home", lambda: h)
    for name in (*PASSTHROUGH_ENV, "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return h


def cli(*argv: str, runner: Recorder | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlxd")
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args, runner=runner if runner is not None else Recorder())


def plist_file(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / "dev.mlxd.server.plist"


def unit_file(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / "mlxd.service"


def read_plist(home: Path) -> dict:
    with plist_file(home).open("rb") as f:
        return plistlib.load(f)


def directives(unit_text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive; a dict would lose repeated Environment= lines."""
    section, out = "", []
    for line in unit_text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def unit_environment(unit_text: str) -> dict[str, str]:
    env = {}
    for _, key, value in directives(unit_text):
        if key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.replace("%%", "%").partition("=")
                env[name] = val
    return env


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


# --- launchd -------------------------------------------------------------------------------------------


def test_launchd_install_writes_the_agent_and_loads_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = Recorder()
    assert cli("install", "--platform", "launchd", "--model", "mlx-community/tiny", "--port", "9123",
               "--log-content", runner=rec) == 0

    plist = read_plist(home)
    assert plist["Label"] == "dev.mlxd.server"
    assert plist["ProgramArguments"] == [sys.executable, "-m", "mlxd", "serve",
                                         "--model", "mlx-community/tiny", "--port", "9123", "--log-content"]
    assert "--host" not in plist["ProgramArguments"]  # default: stays on 127.0.0.1
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(plist["ThrottleInterval"], int) and plist["ThrottleInterval"] > 0
    logs = home / "Library" / "Logs" / "mlxd"
    assert Path(plist["StandardOutPath"]).parent == logs and Path(plist["StandardErrorPath"]).parent == logs
    assert logs.is_dir()
    env = plist["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["HF_HOME"] == str(home / "hf") and env["HF_HUB_OFFLINE"] == "1"
    assert "MLXD_MODEL" not in env and "XDG_CACHE_HOME" not in env  # only what was set
    assert env["PYTHONUNBUFFERED"] == "1"

    assert rec.calls == [
        ["launchctl", "bootout", TARGET],
        ["launchctl", "print", TARGET],  # waits until the old job is gone before bootstrapping
        ["launchctl", "enable", TARGET],
        ["launchctl", "bootstrap", f"gui/{UID}", str(plist_file(home))],
    ]


def test_launchd_values_are_xml_escaped(home: Path) -> None:
    model = """odd <model> & "quotes" 'single' ]]> été $HOME %s"""
    assert cli("install", "--platform", "launchd", "--model", model) == 0
    text = plist_file(home).read_text()
    assert "&lt;model&gt; &amp;" in text and "]]&gt;" in text
    assert read_plist(home)["ProgramArguments"][-1] == model


def test_control_characters_are_refused_with_a_clear_message(home: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    for platform in PLATFORMS:
        assert cli("install", "--platform", platform, "--model", "a\nb") == 1
        assert "control character" in capsys.readouterr().err
    assert files_under(home) == []


def test_the_launchd_template_has_one_source_of_truth() -> None:
    link = REPO / "launchd" / "dev.mlxd.server.plist.template"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "mlxd" / "templates" / "launchd.plist").resolve()
    assert link.read_text(encoding="utf-8") == read_template("launchd.plist")  # what the installer reads


def test_reinstall_replaces_the_loaded_agent(home: Path) -> None:
    rec = Recorder()
    assert cli("install", "--platform", "launchd", "--port", "9001", runner=rec) == 0
    rec.calls.clear()
    assert cli("install", "--platform", "launchd", "--port", "9002", runner=rec) == 0
    assert read_plist(home)["ProgramArguments"][-2:] == ["--port", "9002"]
    assert files_under(home / "Library" / "LaunchAgents") == [plist_file(home)]  # no temp files left
    verbs = [c[1] for c in rec.calls if c[1] != "print"]
    assert verbs == ["bootout", "enable", "bootstrap"]
    assert rec.calls[0] == ["launchctl", "bootout", TARGET]


def test_launchd_bootstrap_failure_is_reported(home: Path, capsys: pytest.CaptureFixture) -> None:
    rec = Recorder(fail=["bootstrap"])
    assert cli("install", "--platform", "launchd", runner=rec) == 1
    err = capsys.readouterr().err
    assert "launchctl bootstrap" in err and "simulated failure" in err
    assert [c[1] for c in rec.calls].count("bootstrap") == 2  # one retry


def test_launchd_uninstall_removes_the_agent_and_keeps_logs(home: Path) -> None:
    rec = Recorder()
    assert cli("install", "--platform", "launchd", runner=rec) == 0
    (home / "Library" / "Logs" / "mlxd" / "mlxd.err.log").write_text("old log\n")
    rec.calls.clear()
    assert cli("uninstall", "--platform", "launchd", runner=rec) == 0
    assert not plist_file(home).exists()
    assert files_under(home) == [home / "Library" / "Logs" / "mlxd" / "mlxd.err.log"]
    assert rec.calls == [["launchctl", "bootout", TARGET]]
    assert not rec.loaded


def test_launchd_start_stop_restart(home: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("start", "--platform", "launchd") == 1
    assert "not installed" in capsys.readouterr().err
    assert cli("install", "--platform", "launchd") == 0

    loaded = Recorder(loaded=True)
    assert cli("stop", "--platform", "launchd", runner=loaded) == 0
    assert loaded.calls == [["launchctl", "print", TARGET], ["launchctl", "bootout", TARGET]]

    stopped = Recorder(loaded=False)
    assert cli("start", "--platform", "launchd", runner=stopped) == 0
    assert stopped.calls == [["launchctl", "print", TARGET], ["launchctl", "enable", TARGET],
                             ["launchctl", "bootstrap", f"gui/{UID}", str(plist_file(home))]]

    running = Recorder(loaded=True)
    assert cli("start", "--platform", "launchd", runner=running) == 0
    assert running.calls[-1] == ["launchctl", "kickstart", TARGET]
    assert cli("restart", "--platform", "launchd", runner=running) == 0
    assert running.calls[-1] == ["launchctl", "kickstart", "-k", TARGET]

    not_loaded = Recorder(loaded=False)
    assert cli("stop", "--platform", "launchd", runner=not_loaded) == 0
    assert "bootout" not in [c[1] for c in not_loaded.calls]


def test_launchd_logs_tail_the_log_files(home: Path) -> None:
    assert cli("logs", "--platform", "launchd") == 1  # nothing logged yet
    logs = home / "Library" / "Logs" / "mlxd"
    logs.mkdir(parents=True)
    (logs / "mlxd.out.log").write_text("out\n")
    (logs / "mlxd.err.log").write_text("err\n")
    rec = Recorder()
    assert cli("logs", "--platform", "launchd", runner=rec) == 0
    assert cli("logs", "--platform", "launchd", "-f", "-n", "20", runner=rec) == 0
    assert rec.calls == [["tail", "-n", "200", str(logs / "mlxd.out.log"), str(logs / "mlxd.err.log")],
                         ["tail", "-n", "20", "-F", str(logs / "mlxd.out.log"), str(logs / "mlxd.err.log")]]


# --- systemd -------------------------------------------------------------------------------------------


def test_systemd_install_writes_the_unit_and_enables_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXD_CACHE_DIR", str(home / "cache dir"))
    rec = Recorder()
    assert cli("install", "--platform", "systemd", "--model", "mlx-community/tiny", "--max-tokens", "50",
               runner=rec) == 0
    text = unit_file(home).read_text()
    d = directives(text)
    service = {k: v for s, k, v in d if s == "Service" and k != "Environment"}
    assert split_exec_start(service["ExecStart"]) == [sys.executable, "-m", "mlxd", "serve", "--model",
                                                      "mlx-community/tiny", "--max-tokens", "50"]
    assert shlex.split(service["ExecStart"])[0] == sys.executable  # plain paths need no unescaping
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 0
    assert ("Install", "WantedBy", "default.target") in d
    env = unit_environment(text)
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["MLXD_CACHE_DIR"] == str(home / "cache dir")
    assert "HF_HOME" not in env
    assert rec.calls == [["systemctl", "--user", "daemon-reload"],
                         ["systemctl", "--user", "enable", "mlxd.service"],
                         ["systemctl", "--user", "restart", "mlxd.service"]]


def test_systemd_quoting_round_trips() -> None:
    hostile = ['a b', 'x"y', "back\\slash", "50%", "$HOME", "${X}", "it's", "$$", "%%", "é"]
    exec_start = " ".join([quote_executable("/opt/100% env/python"), *map(quote_exec_arg, hostile)])
    assert split_exec_start(exec_start) == ["/opt/100% env/python", *hostile]
    assert quote_exec_arg('50% "$HOME"') == '"50%% \\"$$HOME\\""'
    assert quote_executable("/opt/my env/100%/python") == '"/opt/my env/100%%/python"'


@pytest.mark.parametrize("path", ['/opt/q"uote/python', "/opt/it's/python", "/opt/back\\slash/python",
                                  "/opt/$X/python"])
def test_systemd_refuses_an_interpreter_path_it_cannot_start(path: str, home: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", path)
    assert cli("install", "--platform", "systemd") == 1
    assert "interpreter whose path contains" in capsys.readouterr().err
    assert files_under(home) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_unit(home: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # An interpreter path with a space and a %, to check systemd reads the executable back exactly.
    odd = tmp_path / "my env 100%" / "python"
    odd.parent.mkdir()
    odd.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(odd))
    assert cli("install", "--platform", "systemd", "--model", 'odd "model" $HOME 100%') == 0
    result = subprocess.run(["systemd-analyze", "verify", str(unit_file(home))],
                            capture_output=True, text=True, timeout=60, check=False)
    complaints = [ln for ln in (result.stdout + result.stderr).splitlines() if "mlxd.service" in ln]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_systemd_reinstall_and_uninstall(home: Path) -> None:
    assert cli("install", "--platform", "systemd", "--port", "9001") == 0
    assert cli("install", "--platform", "systemd", "--port", "9002") == 0
    exec_start = next(v for _, k, v in directives(unit_file(home).read_text()) if k == "ExecStart")
    assert split_exec_start(exec_start)[-2:] == ["--port", "9002"]
    assert files_under(home) == [unit_file(home)]
    rec = Recorder()
    assert cli("uninstall", "--platform", "systemd", runner=rec) == 0
    assert files_under(home) == []
    assert rec.calls == [["systemctl", "--user", "disable", "--now", "mlxd.service"],
                         ["systemctl", "--user", "daemon-reload"],
                         ["systemctl", "--user", "reset-failed", "mlxd.service"]]


def test_systemd_start_stop_restart_logs(home: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("start", "--platform", "systemd") == 1
    assert "not installed" in capsys.readouterr().err
    assert cli("install", "--platform", "systemd") == 0
    rec = Recorder()
    for command in ("start", "stop", "restart"):
        assert cli(command, "--platform", "systemd", runner=rec) == 0
    assert cli("logs", "--platform", "systemd", runner=rec) == 0
    assert cli("logs", "--platform", "systemd", "-f", runner=rec) == 0
    assert rec.calls == [
        ["systemctl", "--user", "start", "mlxd.service"],
        ["systemctl", "--user", "stop", "mlxd.service"],
        ["systemctl", "--user", "restart", "mlxd.service"],
        # --user-unit, not --user: root's user-unit lines are in the system journal (seen under a real systemd).
        ["journalctl", "--user-unit", "mlxd.service", "--quiet", "--no-pager", "-n", "200"],
        ["journalctl", "--user-unit", "mlxd.service", "--quiet", "--no-pager", "-n", "200", "-f"],
    ]
    assert cli("stop", "--platform", "systemd", runner=Recorder(fail=["systemctl --user stop"])) == 1
    assert "systemctl --user stop mlxd.service" in capsys.readouterr().err


# --- both ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_dry_run_prints_everything_and_changes_nothing(platform: str, home: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    rec = Recorder()
    assert cli("install", "--platform", platform, "--model", "m", "--dry-run", runner=rec) == 0
    printed = capsys.readouterr().out
    assert files_under(home) == [] and list(home.iterdir()) == []
    assert rec.calls == []  # dry-run never reaches the real runner

    assert cli("install", "--platform", platform, "--model", "m", runner=rec) == 0
    written = plist_file(home) if platform == "launchd" else unit_file(home)
    assert f"would write {written}:\n{written.read_text()}" in printed  # the full content
    for call in rec.calls:
        if call[:2] != ["launchctl", "print"]:
            assert f"would run: {shlex.join(call)}" in printed

    rec.calls.clear()
    assert cli("uninstall", "--platform", platform, "--dry-run", runner=rec) == 0
    assert written.exists() and rec.calls == []
    assert f"would remove {written}" in capsys.readouterr().out


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "model": "tiny"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_status_shows_the_service_and_probes_healthz(platform: str, home: Path, health_server: int,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert cli("install", "--platform", platform, "--port", str(health_server)) == 0
    capsys.readouterr()
    rec = Recorder(loaded=True)
    assert cli("status", "--platform", platform, runner=rec) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{health_server}/healthz: HTTP 200" in out and '"status": "ok"' in out
    assert ("state = running" in out) if platform == "launchd" else ("Active: active (running)" in out)
    assert rec.calls[0] == (["launchctl", "print", TARGET] if platform == "launchd"
                            else ["systemctl", "--user", "status", "--no-pager", "--lines=0", "mlxd.service"])


def test_status_when_nothing_listens(home: Path, capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    assert cli("install", "--platform", "launchd", "--port", str(port)) == 0
    capsys.readouterr()
    assert cli("status", "--platform", "launchd", runner=Recorder(loaded=False)) == 1
    out = capsys.readouterr().out
    assert "installed, not loaded" in out and f"127.0.0.1:{port}/healthz: not reachable" in out


@pytest.mark.parametrize("platform", PLATFORMS)
def test_status_without_a_service_probes_no_port(platform: str, home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """After an uninstall, whatever answers on the default port is not ours: say so, exit non-zero."""
    probed: list[tuple] = []
    monkeypatch.setattr("mlxd.service.probe_health", lambda *args, **kwargs: probed.append(args) or (True, "ok"))
    assert cli("install", "--platform", platform) == 0
    assert cli("uninstall", "--platform", platform) == 0
    capsys.readouterr()
    assert cli("status", "--platform", platform, runner=Recorder(loaded=False)) == 1
    assert "not installed" in capsys.readouterr().out
    assert probed == []


def test_systemd_stop_without_a_unit_says_so(home: Path, capsys: pytest.CaptureFixture) -> None:
    rec = Recorder(fail=["systemctl --user stop"])  # a real systemd: "Unit mlxd.service not loaded", exit 5
    assert cli("stop", "--platform", "systemd", runner=rec) == 0
    assert "not installed" in capsys.readouterr().out
    assert rec.calls == [["systemctl", "--user", "stop", "mlxd.service"]]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`mlxd status | head -n 1`: no BrokenPipeError traceback, the exit code a shell gives SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("XDG_CONFIG_HOME", None)
    try:
        result = subprocess.run([sys.executable, "-m", "mlxd", "status", "--platform", "systemd"], cwd=REPO,
                                env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                                check=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_unsupported_platform_exits_non_zero_with_a_clear_message(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    rec = Recorder()
    for command in ("install", "status", "logs"):
        assert cli(command, runner=rec) == 1
        err = capsys.readouterr().err
        assert "no supported service manager" in err and "launchd" in err and "systemd" in err
    assert rec.calls == [] and files_under(home) == []


def test_detect_platform() -> None:
    def which_all(name: str) -> str:
        return f"/usr/bin/{name}"

    def which_none(name: str) -> None:
        return None

    ok, failing = Recorder(), Recorder(fail=["systemctl --user show-environment"])
    assert detect_platform("darwin", which_all) == "launchd"
    assert detect_platform("darwin", which_none) is None
    assert detect_platform("linux", which_all, ok) == "systemd"
    assert ok.calls == [["systemctl", "--user", "show-environment"]]
    assert detect_platform("linux", which_all, failing, uid=2**31 - 2) is None  # no /run/user/<uid>/systemd
    assert detect_platform("linux", which_none, ok) is None
    assert detect_platform("win32", which_all, ok) is None


def test_only_non_default_serve_options_are_forwarded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_options(parser.parse_args([])) == []
    assert serve_options(parser.parse_args(["--port", "8765", "--log-level", "info"])) == []
    given = ["--host", "0.0.0.0", "--max-pending", "3", "--log-content", "--log-format", "json", "--insecure",
             "--allow-origin", "https://a.example", "--allow-origin", "https://b.example", "--idle-timeout", "90.5",
             "--max-messages-per-second", "12.5"]
    forwarded = serve_options(parser.parse_args(given))
    assert sorted(forwarded) == sorted(given)
    # What the service runs means the same settings as what install was given.
    assert Settings.from_args(parser.parse_args(forwarded)) == Settings.from_args(parser.parse_args(given))
    # A local model folder becomes absolute: the service does not start in this directory.
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    local = parser.parse_args(["--model", "models/tiny"])
    assert serve_options(local) == ["--model", str(tmp_path / "models" / "tiny")]
    files = parser.parse_args(["--token-file", "token", "--tls-cert", "~/cert.pem"])
    assert serve_options(files) == ["--token-file", str(tmp_path / "token"),
                                    "--tls-cert", str(Path("~/cert.pem").expanduser())]
    assert serve_options(parser.parse_args(["--model", "org/repo"])) == ["--model", "org/repo"]


def test_non_local_host_needs_a_token_or_insecure(home: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("install", "--platform", "launchd", "--host", "0.0.0.0") == 1
    assert "without a token" in capsys.readouterr().err
    assert not plist_file(home).exists(), "a service that would refuse to start is not installed"
    assert cli("install", "--platform", "launchd", "--host", "0.0.0.0", "--insecure") == 0
    assert "warning" in capsys.readouterr().err
    assert read_plist(home)["ProgramArguments"][-3:] == ["--host", "0.0.0.0", "--insecure"]


def test_create_token_writes_a_private_token_file_once(home: Path, capsys: pytest.CaptureFixture) -> None:
    token_file = home / ".config" / "mlxd" / "token"
    assert cli("install", "--platform", "systemd", "--create-token", "--dry-run") == 0
    assert not token_file.exists() and "would create" in capsys.readouterr().out
    assert cli("install", "--platform", "launchd", "--create-token", "--host", "0.0.0.0") == 0
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token not in plist_file(home).read_text()
    assert read_plist(home)["ProgramArguments"][-4:] == ["--host", "0.0.0.0", "--token-file", str(token_file)]
    assert cli("install", "--platform", "launchd", "--create-token") == 0
    assert token_file.read_text().strip() == token, "a reinstall keeps the token clients already have"
    token_file.chmod(0o644)
    assert cli("install", "--platform", "launchd", "--create-token") == 1
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize(("script", "command"), [("install-agent.sh", "install"),
                                                 ("uninstall-agent.sh", "uninstall")])
def test_scripts_call_python_m_mlxd(script: str, command: str, tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["sh", str(REPO / "scripts" / script), "--dry-run", "a b"], env=env,
                            capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(REPO), "-m", "mlxd", command, "--dry-run", "a b"]
    assert os.access(REPO / "scripts" / script, os.X_OK)


# --- end to end: run exactly what launchd / systemd would run -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_command(platform: str, home: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment the service manager would start, read back from the file."""
    if platform == "launchd":
        plist = read_plist(home)
        return plist["ProgramArguments"], plist["EnvironmentVariables"]
    text = unit_file(home).read_text()
    exec_start = next(v for _, k, v in directives(text) if k == "ExecStart")
    return shlex.split(exec_start), unit_environment(text)


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before /healthz answered:\n"
                        f"{log.read_text()[-4000:]}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"/healthz did not answer 200 within {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def service_model(request: pytest.FixtureRequest) -> Path:
    """The core's tiny model; looked up lazily so this file runs before `mlxd.cli` and conftest exist."""
    pytest.importorskip("mlxd.cli")
    return Path(request.getfixturevalue("tiny_text_model"))


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_service_command_line_serves_and_stops_cleanly(platform: str, home: Path, tmp_path: Path,
                                                           service_model: Path) -> None:
    from websockets.sync.client import connect

    port = free_port()
    assert cli("install", "--platform", platform, "--model", str(service_model), "--port", str(port)) == 0
    argv, env = service_command(platform, home)
    assert argv[:4] == [sys.executable, "-m", "mlxd", "serve"]
    # launchd and systemd start jobs with little more than these plus what the definition sets.
    user = os.environ.get("USER", "mlxd")
    base = {"HOME": str(home), "USER": user, "LOGNAME": user, "SHELL": "/bin/sh",
            "TMPDIR": tempfile.gettempdir()}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**base, **env}, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, port, log, timeout=90)
        # websockets>=15 would otherwise honour a proxy from the environment, even for 127.0.0.1.
        no_proxy = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=10, close_timeout=5, **no_proxy) as ws:
            ws.send(json.dumps({"type": "get_status"}))
            for _ in range(20):
                message = json.loads(ws.recv(timeout=10))
                if message.get("type") == "status":
                    break
            else:
                pytest.fail("no status message in the first 20 messages")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit code {code} after SIGTERM:\n{log.read_text()[-4000:]}"
        assert elapsed < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
