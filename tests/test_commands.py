"""`mlxd ask` and `mlxd watch` as subprocesses against real servers: answers, every exit code, the watch loop."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlxd.watch import timestamp
from tests.helpers import REPO, encoded_image, free_port, image_b64, receive, run_request, send

TOKEN = "cli-Token_0123456789"
LINE = re.compile(r"^\[(\d\d):(\d\d\.\d)\] (.*)$")


def mlxd(*args: str, env: dict[str, str] | None = None, timeout: float = 90, **options) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MLXD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "mlxd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**environment, **(env or {})}, **options)


def write_video(path: Path, seconds: float, fps: int = 10) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    assert writer.isOpened()
    for index in range(round(seconds * fps)):
        writer.write(np.full((48, 64, 3), (index * 12) % 256, dtype=np.uint8))
    writer.release()
    return path


def direct_answer(server, message: dict, config: dict) -> str:
    with server.connect() as ws:
        send(ws, {"type": "config", **config})
        receive(ws)
        done = run_request(ws, message)[-1]
    assert done["type"] == "response_complete", done
    return done["full_text"]


def summary(stderr: str) -> tuple[int, int, int]:
    match = re.search(r"frames: sent (\d+), answered (\d+), dropped (\d+)$", stderr, re.MULTILINE)
    assert match, stderr
    return tuple(int(group) for group in match.groups())


@pytest.mark.slow
def test_ask_the_embedded_model_the_capital_of_france(start_server):
    server = start_server("smollm2-135m", wait=None)
    server.wait_state("ready", timeout=300)
    done = mlxd("ask", "What is the capital of France?", "--url", server.ws_url(), "--temperature", "0",
                "--max-tokens", "40")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and done.stdout.endswith("\n")


def test_ask_prints_the_streamed_answer_then_a_newline(text_server):
    done = mlxd("ask", "Tell me a story", "--url", text_server.ws_url(), "--temperature", "0", "--max-tokens", "10")
    assert done.returncode == 0, done.stderr
    expected = direct_answer(text_server, {"type": "text_input", "content": "Tell me a story", "id": "q"},
                             {"temperature": 0, "maxOutputTokens": 10})
    assert done.stdout == expected + "\n" and expected
    assert done.stderr == ""


def test_ask_about_an_image(vision_server, tmp_path):
    image = tmp_path / "red.jpg"
    image.write_bytes(encoded_image(64, 48))
    done = mlxd("ask", "What is this?", "--image", str(image), "--url", vision_server.ws_url("/ws"),
                "--temperature", "0", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    expected = direct_answer(vision_server, {"type": "image_input", "image": image_b64(64, 48),
                                             "prompt": "What is this?", "id": "i"},
                             {"temperature": 0, "max_tokens_image": 8})
    assert done.stdout == expected + "\n" and expected


def test_ask_exits_1_on_an_error_reply(text_server, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(encoded_image(fmt="PNG"))
    done = mlxd("ask", "What is this?", "--image", str(image), "--url", text_server.ws_url())
    assert done.returncode == 1
    assert done.stderr.startswith("mlxd ask: model_text_only: ") and "Traceback" not in done.stderr


def test_ask_exits_1_when_the_connection_is_lost(start_server, tiny_text_model):
    server = start_server(tiny_text_model)
    ask = subprocess.Popen([sys.executable, "-m", "mlxd", "ask", "Tell me everything.", "--url", server.ws_url(),
                            "--temperature", "0", "--max-tokens", "8000"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        first = threading.Thread(target=ask.stdout.read, args=(1,))
        first.start()
        first.join(timeout=60)
        assert not first.is_alive(), "the answer did not start streaming"
        server.process.send_signal(signal.SIGKILL)
        _, stderr = ask.communicate(timeout=30)
    finally:
        ask.kill()
    assert ask.returncode == 1
    assert stderr.startswith("mlxd ask: ") and "lost" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("args,message", [
    (["--max-tokens", "many"], "--max-tokens: not a number"),
    (["--max-tokens", "0"], "--max-tokens: must be between 1 and 8192"),
    (["--temperature", "5"], "--temperature: must be between 0.0 and 2.0"),
    (["--image", "/no/such/image.jpg"], "cannot read the image /no/such/image.jpg"),
    (["--image", str(REPO / "README.md")], "is not a JPEG, PNG or WebP image"),
    (["--token-file", "/no/such/token"], "cannot read the token file /no/such/token"),
])
def test_ask_exits_2_on_bad_usage_or_input(args, message):
    done = mlxd("ask", "hello", "--url", f"ws://127.0.0.1:{free_port()}", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_ask_exits_3_when_it_cannot_connect(start_server, tiny_text_model, tmp_path):
    nowhere = f"ws://127.0.0.1:{free_port()}"
    done = mlxd("ask", "hello", "--url", nowhere)
    assert done.returncode == 3 and f"mlxd ask: cannot connect to {nowhere}" in done.stderr

    server = start_server(tiny_text_model, "--max-tokens", "3", env={"MLXD_TOKEN": TOKEN})
    missing = mlxd("ask", "hello", "--url", server.ws_url())
    assert missing.returncode == 3 and "401" in missing.stderr and "needs a token" in missing.stderr
    wrong = mlxd("ask", "hello", "--url", server.ws_url(), env={"MLXD_TOKEN": "not-the-token"})
    assert wrong.returncode == 3 and "403" in wrong.stderr and "token is wrong" in wrong.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert mlxd("ask", "hello", "--url", server.ws_url(), "--token-file", str(token_file)).returncode == 0
    assert mlxd("ask", "hello", "--url", server.ws_url(), env={"MLXD_TOKEN": TOKEN}).returncode == 0
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_watch_a_video_prints_one_line_per_answered_frame(vision_server, tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=2)
    done = mlxd("watch", "--video", str(video), "--fps", "2", "--prompt", "Describe", "--max-tokens", "3",
                "--temperature", "0", "--url", vision_server.ws_url())
    assert done.returncode == 0, done.stderr
    sent, answered, dropped = summary(done.stderr)
    assert 2 <= sent <= 4 and sent == answered + dropped, "every 1/fps s of a 2 s file, each frame ended once"
    lines = done.stdout.splitlines()
    assert len(lines) == answered >= 1
    positions = []
    for line in lines:
        match = LINE.match(line)
        assert match and match.group(3).strip() and "\n" not in match.group(3), line
        positions.append(int(match.group(1)) * 60 + float(match.group(2)))
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] < 2.0
    assert all(round(position * 10) % 5 == 0 for position in positions), "frames go every 0.5 s of the file"


def test_watch_stops_at_the_duration(vision_server, tmp_path):
    video = write_video(tmp_path / "long.mp4", seconds=20)
    started = time.monotonic()
    done = mlxd("watch", "--video", str(video), "--fps", "2", "--duration", "1", "--max-tokens", "2",
                "--url", vision_server.ws_url())
    assert done.returncode == 0, done.stderr
    sent, answered, dropped = summary(done.stderr)
    assert 1 <= sent <= 2 and sent == answered + dropped
    assert time.monotonic() - started < 20, "it did not play the whole file"


def test_watch_on_ctrl_c_waits_for_answers_and_exits_0(vision_server, tmp_path):
    video = write_video(tmp_path / "long.mp4", seconds=30)
    controller, terminal = pty.openpty()
    watch = subprocess.Popen([sys.executable, "-m", "mlxd", "watch", "--video", str(video), "--fps", "4",
                              "--max-tokens", "2", "--url", vision_server.ws_url()], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    try:
        first = watch.stdout.readline()
        assert LINE.match(first), first
        watch.send_signal(signal.SIGINT)
        rest, _ = watch.communicate(timeout=30)
    finally:
        watch.kill()
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert watch.returncode == 0
    text = screen.decode()
    sent, answered, dropped = summary(text.replace("\r\n", "\n"))
    assert sent == answered + dropped and answered == 1 + len(rest.splitlines())
    assert re.search(r"\r\x1b\[Ksent \d+ · answered \d+ · dropped \d+", text), "a live status line on a terminal"
    assert "Traceback" not in text


@pytest.mark.parametrize("args,message", [
    ([], "one of the arguments --video --camera --screen is required"),
    (["--video", "/no/such/clip.mp4"], "cannot read the video /no/such/clip.mp4"),
    (["--video", str(REPO / "README.md")], "cannot read the video"),
    (["--camera", "57"], "camera 57 cannot be opened"),
    (["--screen"], "macOS only"),
    (["--video", "x.mp4", "--fps", "0"], "--fps: must be between"),
    (["--video", "x.mp4", "--quality", "101"], "--quality: must be between 1 and 100"),
])
def test_watch_exits_2_on_bad_usage_or_input(args, message):
    if args == ["--screen"] and sys.platform == "darwin":
        pytest.skip("the screen can be captured on macOS")
    done = mlxd("watch", *args, "--url", f"ws://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_watch_exit_codes_when_unreachable_or_refused(text_server, tmp_path):
    video = write_video(tmp_path / "clip.mp4", seconds=1)
    nowhere = f"ws://127.0.0.1:{free_port()}"
    unreachable = mlxd("watch", "--video", str(video), "--url", nowhere)
    assert unreachable.returncode == 3 and f"mlxd watch: cannot connect to {nowhere}" in unreachable.stderr
    refused = mlxd("watch", "--video", str(video), "--url", text_server.ws_url())
    assert refused.returncode == 1, refused.stderr
    assert "mlxd watch: model_text_only: " in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("seconds,shown", [(0, "00:00.0"), (1.5, "00:01.5"), (59.96, "01:00.0"), (754.3, "12:34.3")])
def test_watch_positions_read_minutes_seconds_and_tenths(seconds, shown):
    assert timestamp(seconds) == shown
