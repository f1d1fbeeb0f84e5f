"""Voice through the original protocol, on real servers with the real audio models: Silero VAD, Whisper
tiny.en and the system speech engine; the questions are spoken by flite at test time. SmolLM2 (marked slow)
gives the sensible answers; the tiny random model serves where only the mechanics matter."""

from __future__ import annotations

import base64
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from mlxd.audio.pcm import SPEECH_RATE, float_to_pcm16, resample
from tests.helpers import REPO, receive, receive_until, run_request, send, terminal_for
from tests.tiny_audio import flite_speech

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
CHUNK_MS = 100
WAIT = 300  # seconds: this CPU is shared, and a first transcription warms Whisper up
pytestmark = pytest.mark.timeout(2 * WAIT)


def spoken(text: str, folder: Path, silence: float = 1.0) -> np.ndarray:
    """flite's slt voice saying `text`, with `silence` seconds before and after: float32 at 16 kHz."""
    pad = np.zeros(int(silence * SPEECH_RATE), dtype=np.float32)
    return np.concatenate([pad, flite_speech(text, folder), pad])


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> np.ndarray:
    return spoken(QUESTION, tmp_path_factory.mktemp("speech"))


def send_audio(ws, samples: np.ndarray, prefix: str) -> list[str]:
    """The samples as 100 ms `audio_chunk`s, ids `prefix.0`, `prefix.1`, ...; the ids sent."""
    pcm = float_to_pcm16(samples)
    step = SPEECH_RATE * CHUNK_MS // 1000 * 2
    ids = []
    for number, start in enumerate(range(0, len(pcm), step)):
        ids.append(f"{prefix}.{number}")
        send(ws, {"type": "audio_chunk", "id": ids[-1], "audio": base64.b64encode(pcm[start:start + step]).decode()})
    return ids


def spoken_turn(ws, samples: np.ndarray, prefix: str) -> list[dict]:
    """Speak, and return everything up to the answer's end."""
    ids = send_audio(ws, samples, prefix)
    messages = receive_until(ws, lambda m: m["type"] == "transcript", timeout=WAIT)
    turn_id = messages[-1]["id"]
    assert turn_id in ids, "the turn carries the id of the chunk that ended it"
    return messages + receive_until(ws, terminal_for(turn_id), timeout=WAIT)


@pytest.fixture(scope="module")
def smollm_server(tmp_path_factory):
    from tests.helpers import ServerProcess

    server = ServerProcess("smollm2-135m", log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        server.wait_state("ready", timeout=WAIT)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_a_spoken_question_is_heard_transcribed_and_answered(smollm_server, question):
    with smollm_server.connect() as ws:
        send(ws, {"type": "config", "id": "cfg", "temperature": 0, "maxOutputTokens": 40})
        assert receive(ws)["type"] == "config_updated"
        messages = spoken_turn(ws, question, "c")
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["speech_started", "speech_stopped"], kinds
    assert 900 <= messages[0]["audio_start_ms"] <= 1400, "speech starts where flite's voice does"
    transcript = next(m for m in messages if m["type"] == "transcript")
    assert transcript["text"] == QUESTION
    answer = [m for m in messages if m.get("id") == transcript["id"]]
    assert [m["type"] for m in answer[:2]] == ["transcript", "response_start"]
    assert answer[1]["input_type"] == "audio"
    assert answer[-1]["type"] == "response_complete" and answer[-1]["full_text"] == ANSWER
    assert "audio" not in kinds, "answers are spoken only when responseModalities asks for AUDIO"


@pytest.mark.slow
def test_with_audio_modality_the_answer_is_spoken_before_it_completes(smollm_server, question):
    with smollm_server.connect() as ws:
        send(ws, {"type": "config", "id": "cfg", "temperature": 0, "maxOutputTokens": 40,
                  "responseModalities": ["TEXT", "AUDIO"]})
        configured = receive(ws)
        assert configured["current_config"]["responseModalities"] == ["TEXT", "AUDIO"], configured
        messages = spoken_turn(ws, question, "c")
    transcript = next(m for m in messages if m["type"] == "transcript")
    answer = [m for m in messages if m.get("id") == transcript["id"]]
    kinds = [m["type"] for m in answer]
    assert answer[-1]["full_text"] == ANSWER
    audio = [m for m in answer if m["type"] == "audio"]
    assert audio and kinds.index("audio") > kinds.index("token"), "spoken as the text streams, after it starts"
    assert all(m["sample_rate"] == 24000 for m in audio)
    pcm = b"".join(base64.b64decode(m["audio"]) for m in audio)
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 24000 > 0.8, "a second or so of speech for one sentence"
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000, "not silence"


def test_barge_in_cuts_the_answer_and_its_speech(start_server, tiny_text_model, question, tmp_path):
    server = start_server(tiny_text_model, wait="ready")
    second = spoken("Stop. Tell me about Rome instead.", tmp_path)  # greedy, the tiny model talks long
    with server.connect() as ws:
        send(ws, {"type": "config", "id": "cfg", "maxOutputTokens": 4000, "history": True, "temperature": 0,
                  "responseModalities": ["TEXT", "AUDIO"]})
        assert receive(ws)["type"] == "config_updated"
        send_audio(ws, question, "c")
        first = receive_until(ws, lambda m: m["type"] == "audio", timeout=WAIT)
        first_id = first[-1]["id"]
        send_audio(ws, second, "d")
        rest = receive_until(ws, terminal_for(first_id), timeout=WAIT)
        after_cut = receive_until(ws, lambda m: m["type"] == "transcript", timeout=WAIT)
        send(ws, {"type": "cancel"})
        receive_until(ws, terminal_for(after_cut[-1]["id"]), timeout=WAIT)
    summary = [(m["type"], m.get("id"), m.get("finish_reason")) for m in rest if m["type"] not in ("token", "audio")]
    assert rest[-1]["type"] == "response_complete" and rest[-1]["finish_reason"] == "interrupted", summary
    assert rest[-1]["usage"]["completion_tokens"] < 4000
    assert any(m["type"] == "token" for m in rest), "speech streamed out while later tokens were generated"
    assert any(m["type"] == "speech_started" for m in rest), "the second utterance was heard during the answer"
    assert not [m for m in after_cut if m.get("id") == first_id], "nothing of the cut answer after its end"
    assert after_cut[-1]["text"].startswith("Stop"), after_cut[-1]


def test_bad_audio_is_refused_and_the_session_carries_on(text_server):
    odd = base64.b64encode(b"\x00\x01\x02").decode()
    huge = base64.b64encode(b"\x00" * (1024 * 1024 + 2)).decode()
    cases = [
        ({"type": "audio_chunk", "id": "odd", "audio": odd}, "odd"),
        ({"type": "audio_chunk", "id": "rate", "audio": "AAAAAA==", "sample_rate": 4000}, "sample rate"),
        ({"type": "audio_chunk", "id": "huge", "audio": huge}, "at most"),
        ({"type": "audio_chunk", "id": "b64", "audio": "not base64!"}, "base64"),
        ({"type": "audio_chunk", "id": "none"}, "required"),
        ({"type": "config", "id": "cfg", "turnDetection": {"silenceDurationMs": 5}}, "silenceDurationMs"),
        ({"type": "config", "id": "cfg2", "responseModalities": ["AUDIO"]}, "responseModalities"),
    ]
    with text_server.connect() as ws:
        for message, words in cases:
            send(ws, message)
            error = receive(ws)
            assert (error["type"], error["code"], error["id"]) == ("error", "invalid_field", message["id"]), error
            assert words in error["error"], error
        send(ws, {"type": "audio_end", "id": "end"})
        send(ws, {"type": "config", "id": "off", "turnDetection": None})
        assert receive(ws)["current_config"]["turnDetection"] is None
        send(ws, {"type": "audio_end", "id": "empty"})
        error = receive(ws)
        assert (error["code"], error["id"]) == ("invalid_field", "empty") and "no audio" in error["error"]
        done = run_request(ws, {"type": "text_input", "content": "still there?", "id": "q"})[-1]
    assert done["type"] == "response_complete"


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int) -> None:
    pcm = np.frombuffer(float_to_pcm16(np.repeat(samples, channels)), "<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())


@pytest.mark.slow
def test_mlxd_ask_audio_sends_a_recorded_question(smollm_server, question, tmp_path):
    path = tmp_path / "question.wav"
    write_wav(path, resample(question, SPEECH_RATE, 44100), 44100, 2)  # the converter's job: 16 kHz mono
    done = subprocess.run([sys.executable, "-m", "mlxd", "ask", "--audio", str(path), "--url", smollm_server.ws_url(),
                           "--temperature", "0", "--max-tokens", "40"], cwd=REPO, capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"> {QUESTION}\n{ANSWER}\n"


def test_audio_to_a_server_without_speech_is_refused_naming_why(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--stt-model", "none", "--tts-model", "none")
    with server.connect() as ws:
        send(ws, {"type": "audio_chunk", "id": "c1", "audio": base64.b64encode(b"\x00\x00" * 1600).decode()})
        refused = receive(ws)
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "audio_unavailable", "c1")
        assert "--stt-model none" in refused["error"], refused
        send(ws, {"type": "config", "id": "v", "responseModalities": ["TEXT", "AUDIO"], "temperature": 0})
        refused, configured = receive(ws), receive(ws)
        assert (refused["code"], refused["id"]) == ("audio_unavailable", "v") and "--tts-model none" in refused["error"]
        assert configured["current_config"]["responseModalities"] == ["TEXT"], "AUDIO did not take"
        done = run_request(ws, {"type": "text_input", "content": "still there?", "id": "q"})[-1]
    assert done["type"] == "response_complete"


@pytest.mark.parametrize("args,words", [
    ((), "give a QUESTION, or --audio FILE"),
    (("hello", "--audio", "q.wav"), "give a QUESTION, or --audio FILE"),
    (("--audio", "missing.wav"), "cannot read the audio"),
    (("--audio", "README.md"), "is not a PCM16 WAV file"),
])
def test_mlxd_ask_audio_refuses_bad_input_before_connecting(args, words):
    done = subprocess.run([sys.executable, "-m", "mlxd", "ask", *args, "--url", "ws://127.0.0.1:9"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and words in done.stderr, done.stderr
