"""The page's microphone and spoken answers, in real headless Chromium on a real server with the real audio
models: Chromium's fake microphone plays a question flite spoke (once), the page's AudioWorklet sends it at
16 kHz, the server hears and answers it, and the page plays the answer's audio."""

from __future__ import annotations

import base64
import wave

import numpy as np
import pytest

from mlxd.audio.pcm import float_to_pcm16
from tests.test_page import FAKE_MEDIA, Wire, launch_chromium, number, wait_for, wait_on_wire
from tests.test_voice_server import QUESTION, spoken

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def microphone_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mic")
    path = folder / "question.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(float_to_pcm16(spoken(QUESTION, folder)))
    return str(path)


@pytest.fixture(scope="module")
def browser(microphone_file):
    yield from launch_chromium([*FAKE_MEDIA, f"--use-file-for-fake-audio-capture={microphone_file}%noloop",
                                "--autoplay-policy=no-user-gesture-required"])


def test_the_microphone_asks_and_the_answer_is_played(browser, start_server, tiny_text_model):
    server = start_server(tiny_text_model)
    page = browser.new_context().new_page()
    wire = Wire(page)
    page.goto(f"{server.http}/?speak=1&max_tokens=30")
    wait_for(page, "document.getElementById('conn').dataset.state === 'open'")
    page.click("#mic")
    wait_for(page, "document.getElementById('mic').getAttribute('aria-pressed') === 'true'")
    wait_on_wire(page, lambda: any(m["type"] == "transcript" for m in wire.received))
    transcript = next(m for m in wire.received if m["type"] == "transcript")
    wait_on_wire(page, lambda: any(m["type"] == "response_complete" and m.get("id") == transcript["id"]
                                   for m in wire.received))
    page.click("#mic")
    page.wait_for_timeout(300)

    assert transcript["text"] == QUESTION
    assert page.text_content("#heard") == QUESTION
    texts = wire.texts()
    assert {"type": "config", "id": "voice", "responseModalities": ["TEXT", "AUDIO"]} in texts
    chunks = [m for m in texts if m["type"] == "audio_chunk"]
    assert len(chunks) >= 30, "the question (about 4 s) went out in 100 ms chunks"
    pcm = [base64.b64decode(m["audio"]) for m in chunks]
    assert {len(chunk) for chunk in pcm} == {3200}, "1600 samples of PCM16 at 16 kHz each"
    loudest = max(np.abs(np.frombuffer(chunk, "<i2")).max() for chunk in pcm)
    assert loudest > 1000, "the microphone's speech, not silence"
    answer = [m for m in wire.received if m.get("id") == transcript["id"]]
    assert any(m["type"] == "audio" for m in answer), "the answer was spoken"
    assert number(page, "spoken") > 0, "and the page played it"
    assert page.text_content("#text-answer") == answer[-1]["full_text"]
    page.context.close()
