"""The real audio models on their thread: Silero VAD, Whisper tiny.en, the system TTS and a tiny Kokoro.

Speech is made at test time by flite; every wait is bounded. Real-time factors are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlxd.audio import AudioModels, AudioUnavailable, WrongThread
from mlxd.audio.pcm import OUTPUT_RATE, SPEECH_RATE, float_to_pcm16, pcm16_to_float, resample
from tests.tiny_audio import build_kokoro, flite_speech

QUESTION = "What is the capital of France?"
LEAD, TAIL = 1.0, 1.5  # seconds of silence around the question
LOUD = 0.02  # a sample above this is speech, for finding flite's onset and offset
WAIT = 120.0  # seconds any one audio call may take on a loaded 2-core machine


def run(coroutine, timeout: float = WAIT):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def wait_loaded(models: AudioModels, timeout: float = WAIT) -> dict:
    deadline = time.monotonic() + timeout
    while any(slot["state"] == "loading" for slot in models.describe().values()):
        assert time.monotonic() < deadline, models.describe()
        time.sleep(0.05)
    return models.describe()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    question = flite_speech(QUESTION, tmp_path_factory.mktemp("speech"))
    silence = np.zeros(int(SPEECH_RATE * LEAD), dtype=np.float32)
    return np.concatenate([silence, question, np.zeros(int(SPEECH_RATE * TAIL), dtype=np.float32)])


@pytest.fixture(scope="module")
def models() -> Iterator[AudioModels]:
    models = AudioModels()
    models.start()
    try:
        wait_loaded(models)
        yield models
    finally:
        models.close()


def test_pcm_round_trip_and_refusals() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0], dtype=np.float32)
    back = pcm16_to_float(float_to_pcm16(samples))
    assert np.allclose(back, samples, atol=1 / 32768)
    with pytest.raises(ValueError, match="even"):
        pcm16_to_float(b"\x00\x01\x02")
    assert resample(np.zeros(24000, dtype=np.float32), 24000, 16000).shape == (16000,)
    tone = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32)
    assert resample(tone, 16000, 24000).size == 24000


def test_cpu_defaults_are_described(models: AudioModels) -> None:
    described = models.describe()
    assert {role: slot["state"] for role, slot in described.items()} == {"vad": "ready", "stt": "ready",
                                                                         "tts": "ready"}
    assert described["vad"]["source"] == "silero_vad package"
    assert described["stt"]["model"] == "whisper-tiny.en" and "CPU default" in described["stt"]["reason"]
    assert described["tts"]["source"] == "system" and described["tts"]["model"] in ("espeak-ng", "flite")
    assert models.stt_refusal is None and models.tts_refusal is None


def test_silero_rises_at_onset_and_falls_after_offset(models: AudioModels, speech: np.ndarray) -> None:
    loud = np.flatnonzero(np.abs(speech) > LOUD)
    onset, offset = loud[0] / SPEECH_RATE, loud[-1] / SPEECH_RATE
    stream = models.vad_stream()

    async def feed() -> np.ndarray:
        chunks = [stream.probabilities(speech[i:i + 1000]) for i in range(0, speech.size, 1000)]
        return np.concatenate([await chunk for chunk in chunks])  # odd chunk sizes: the remainder carries over

    started = time.monotonic()
    probabilities = run(feed())
    elapsed = time.monotonic() - started
    assert probabilities.size == speech.size // stream.window
    times = np.arange(probabilities.size) * stream.window / SPEECH_RATE  # each window's start
    speaking = probabilities > 0.5
    first = times[np.argmax(speaking)]
    assert onset - 0.1 <= first <= onset + 0.25, (onset, first)
    last = times[len(speaking) - 1 - np.argmax(speaking[::-1])]
    assert offset - 0.3 <= last <= offset + 0.3, (offset, last)
    assert not speaking[times > offset + 0.4].any()
    print(f"\nVAD: onset {onset:.3f} s seen at {first:.3f} s, offset {offset:.3f} s, last speech window "
          f"{last:.3f} s; real-time factor {elapsed / (speech.size / SPEECH_RATE):.3f}")

    stream.reset()  # a new turn starts from fresh state, and the same audio gives the same answer
    assert np.allclose(run(stream.probabilities(speech[: stream.window * 40])), probabilities[:40], atol=1e-4)
    stream.close()


def test_whisper_tiny_en_transcribes_flite_exactly(models: AudioModels, speech: np.ndarray) -> None:
    started = time.monotonic()
    text = run(models.transcribe(speech))
    elapsed = time.monotonic() - started
    assert text == QUESTION
    print(f"\nSTT: {elapsed:.2f} s for {speech.size / SPEECH_RATE:.2f} s of audio "
          f"(real-time factor {elapsed / (speech.size / SPEECH_RATE):.2f})")


def test_vad_is_served_between_the_steps_of_a_transcription(models: AudioModels, speech: np.ndarray) -> None:
    stream = models.vad_stream()

    async def both() -> tuple[bool, str]:
        transcription = asyncio.ensure_future(models.transcribe(speech))
        await asyncio.sleep(0.05)  # the transcription has started on the audio thread
        await stream.probabilities(speech[:stream.window])
        return transcription.done(), await transcription

    finished_first, text = run(both())
    assert not finished_first  # turn detection and barge-in do not wait for another session's transcript
    assert text == QUESTION


def test_system_speech_speaks_at_24khz(models: AudioModels) -> None:
    started = time.monotonic()
    short = run(models.speak("Paris."))
    elapsed = time.monotonic() - started
    long = run(models.speak("The capital of France is Paris. It is a large city on the river Seine."))
    assert short.dtype == np.float32 and long.dtype == np.float32
    assert 0.2 < short.size / OUTPUT_RATE < 3 and long.size > 3 * short.size
    assert np.abs(long).max() > 0.1  # it is sound, not silence
    print(f"\nTTS (system): {elapsed:.2f} s for {short.size / OUTPUT_RATE:.2f} s of audio")


def test_models_refuse_calls_off_the_audio_thread(models: AudioModels, speech: np.ndarray) -> None:
    for role in ("vad", "stt", "tts"):
        backend = models.slots[role].backend
        with pytest.raises(WrongThread):
            if role == "vad":
                backend.probabilities(speech[:512], backend.initial_state())
            elif role == "stt":
                backend.transcribe(speech)
            else:
                backend.speak("Hello.")
    assert run(models.transcribe(speech)) == QUESTION  # and they still serve from their own thread


def test_turned_off_models_refuse_with_the_reason() -> None:
    models = AudioModels(stt_model="none", tts_model="none")
    models.start()
    try:
        assert models.stt_refusal == "speech input is turned off (--stt-model none)"
        assert models.tts_refusal == "spoken answers are turned off (--tts-model none)"
        with pytest.raises(AudioUnavailable, match="--stt-model none"):
            run(models.transcribe(np.zeros(16000, dtype=np.float32)))
        with pytest.raises(AudioUnavailable, match="--tts-model none"):
            run(models.speak("Hello."))
        described = wait_loaded(models)
        assert described["stt"]["state"] == described["tts"]["state"] == "off"
        assert described["vad"]["state"] == "ready"
    finally:
        models.close()


def test_a_missing_model_fails_clearly_and_refuses(tmp_path: Path) -> None:
    models = AudioModels(stt_model=str(tmp_path / "no-such-whisper"), tts_model="none")
    models.start()
    try:
        described = wait_loaded(models)
        assert described["stt"]["state"] == "failed" and described["stt"]["error"]
        assert models.stt_refusal is not None and "failed to load" in models.stt_refusal
    finally:
        models.close()


@pytest.mark.timeout(600)
def test_tiny_kokoro_loads_and_speech_grows_with_text(tmp_path: Path) -> None:
    folder = build_kokoro(tmp_path / "tiny-kokoro")
    models = AudioModels(stt_model="none", tts_model=str(folder))
    models.start()
    try:
        described = wait_loaded(models, timeout=300)
        assert described["tts"]["state"] == "ready", described
        assert described["tts"]["source"] == "path"
        short = run(models.speak("Hi."), timeout=300)
        long = run(models.speak("Hello there, my friend."), timeout=300)
        assert short.dtype == np.float32 and short.size > 0
        assert long.size > 2 * short.size
    finally:
        models.close()


def test_flite_speaks_when_named() -> None:
    models = AudioModels(stt_model="none", tts_model="flite")
    models.start()
    try:
        assert wait_loaded(models)["tts"] == {**models.describe()["tts"], "model": "flite", "state": "ready"}
        spoken = run(models.speak("The capital of France is Paris."))
        assert 1 < spoken.size / OUTPUT_RATE < 5 and np.abs(spoken).max() > 0.1
    finally:
        models.close()
