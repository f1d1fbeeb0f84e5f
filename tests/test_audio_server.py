"""The audio models as a real server reports them: /healthz, get_status and the startup log say what loaded
and why; `--stt-model none` turns speech input off with a reason the protocols can name; the audio thread's
queue is bounded."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mlxd.audio.worker import AudioBusy, AudioWorker
from tests.helpers import receive_until, send


def test_health_status_and_log_name_the_audio_models(start_server, tiny_text_model):
    server = start_server(tiny_text_model)  # text is served while the audio models load
    audio = server.wait_audio()
    assert {role: slot["state"] for role, slot in audio.items()} == {"vad": "ready", "stt": "ready", "tts": "ready"}
    assert audio["stt"]["model"] == "whisper-tiny.en" and audio["stt"]["reason"]
    with server.connect() as ws:
        send(ws, {"type": "get_status", "id": "st"})
        status = receive_until(ws, lambda m: m["type"] == "status")[-1]
    assert status["audio"]["vad"]["model"] == "silero-vad-16k"
    ready = {line["role"]: line for line in server.log_lines() if line.get("event") == "audio_model_ready"}
    assert set(ready) == {"vad", "stt", "tts"} and all(line["reason"] for line in ready.values())


def test_stt_none_turns_speech_input_off(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--stt-model", "none", "--tts-model", "none")
    audio = server.wait_audio()
    assert audio["stt"] == {**audio["stt"], "state": "off", "reason": "speech input is turned off (--stt-model none)"}
    assert audio["tts"]["state"] == "off"


def test_the_audio_queue_is_bounded_and_the_thread_carries_on():
    worker = AudioWorker(max_jobs=2)
    worker.start()
    gate, done = threading.Event(), []
    worker.call_soon(lambda: gate.wait(10), lambda result, error: done.append(result))
    time.sleep(0.1)  # the first call is running: two more fill the queue
    worker.call_soon(lambda: 1, lambda result, error: done.append(result))
    worker.call_soon(lambda: 1 / 0, lambda result, error: done.append(type(error)))
    with pytest.raises(AudioBusy):
        worker.call_soon(lambda: 3, lambda result, error: None)
    gate.set()
    worker.close()
    assert done == [True, 1, ZeroDivisionError]
    assert not worker.thread.is_alive()


def test_a_call_cancelled_before_it_starts_is_skipped():
    worker = AudioWorker()
    worker.start()
    gate, ran = threading.Event(), []

    async def scenario() -> None:
        blocker = worker.submit(lambda: gate.wait(10))
        queued = worker.submit(lambda: ran.append("queued"))
        queued.cancel()  # e.g. a sentence waiting for speech when the user barges in
        gate.set()
        time.sleep(0.2)  # the loop does not turn meanwhile: the skip must not wait for the future's callbacks
        assert await asyncio.wait_for(blocker, 10) is True
        assert await asyncio.wait_for(worker.submit(lambda: "after"), 10) == "after"

    asyncio.run(scenario())
    worker.close()
    assert ran == []


def test_gpu_defaults_fall_back_to_the_packaged_models_when_the_hub_models_cannot_be_had(monkeypatch):
    from mlxd.audio import choice

    monkeypatch.setattr(choice, "on_gpu", lambda: True)
    monkeypatch.setattr(choice, "hub_reachable", lambda repo: False)
    stt, tts = choice.choose_stt(None, None), choice.choose_tts(None, None)
    assert stt.model == "whisper-tiny.en" and choice.GPU_STT in stt.reason
    assert tts.source == "system" and choice.GPU_TTS in tts.reason
    monkeypatch.setattr(choice, "hub_reachable", lambda repo: True)
    assert choice.choose_stt(None, None).model == choice.GPU_STT
    assert choice.choose_tts(None, None).model == choice.GPU_TTS
    assert choice.choose_stt("none", None).load is None and choice.choose_tts("espeak-ng", None).source == "system"
