"""The voice layer's scheduling logic alone, with scripted probabilities and stand-ins for the audio models:
turn detection, sentences, the ring, the order of spoken answers' events and barge-in. The models themselves,
and the feature end to end, are tested with the real ones (tests/test_voice_server.py)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from mlxd.audio.pcm import float_to_pcm16
from mlxd.events import (
    AudioCommitted,
    AudioOut,
    ResponseCompleted,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import AudioInput, AudioMark, TurnDetection
from mlxd.scheduler import Job
from mlxd.voice.listening import Listener
from mlxd.voice.ring import AudioRing
from mlxd.voice.sentences import SentenceSplitter
from mlxd.voice.speaking import Speaker, _Answer
from mlxd.voice.turns import TurnDetector

WINDOW = 512


def feed(detector: TurnDetector, probabilities: list[float]) -> list[tuple[str, int]]:
    boundaries = [detector.feed(p, index * WINDOW) for index, p in enumerate(probabilities)]
    return [(b.kind, b.sample) for b in boundaries if b is not None]


def test_speech_starts_at_the_first_loud_window_and_stops_after_the_silence_duration():
    detector = TurnDetector(TurnDetection(), WINDOW, 16000)
    silence_windows = 16  # 500 ms at 32 ms a window, rounded up
    script = [0.1] * 10 + [0.9] * 20 + [0.05] * (silence_windows - 1)
    assert feed(detector, script) == [("start", 10 * WINDOW)]
    assert detector.feed(0.05, len(script) * WINDOW).sample == 30 * WINDOW  # placed where the silence began


def test_a_quiet_window_within_speech_is_not_silence():
    detector = TurnDetector(TurnDetection(silence_duration_ms=100), WINDOW, 16000)
    script = [0.9] * 5 + [0.4] * 20 + [0.9] * 3 + [0.1] * 4
    assert feed(detector, script) == [("start", 0), ("stop", 28 * WINDOW)]


def test_a_higher_threshold_ignores_murmur():
    detector = TurnDetector(TurnDetection(threshold=0.8), WINDOW, 16000)
    assert feed(detector, [0.7] * 50) == []


def test_sentences_end_at_punctuation_followed_by_space():
    splitter = SentenceSplitter()
    assert splitter.add("The capital of") == []
    assert splitter.add(" France is Paris.") == []
    assert splitter.add(" Pi is 3.14 or so! Yes") == ["The capital of France is Paris. ", "Pi is 3.14 or so! "]
    assert splitter.flush() == "Yes"


def test_a_run_on_sentence_is_cut_at_a_space():
    splitter = SentenceSplitter(max_chars=20)
    parts = splitter.add("word " * 10)
    assert parts and all(len(part) <= 20 and part.endswith(" ") for part in parts)
    assert "".join(parts) + splitter.flush() == "word " * 10


def test_the_ring_is_bounded_and_addressed_by_sample_number():
    ring = AudioRing(limit=100)
    ring.append(np.arange(80, dtype=np.float32))
    ring.append(np.arange(80, 160, dtype=np.float32))
    assert (ring.start, ring.end) == (60, 160)
    assert ring.between(150, 155).tolist() == [150, 151, 152, 153, 154]
    ring.keep_from(150)
    assert ring.between(0, 1000).tolist() == list(range(150, 160))


def test_the_text_heard_follows_each_sentence_s_audio_length():
    answer = _Answer("r", "a", None, spoken=[("One two three. ", 24000), ("Four five six seven. ", 48000)])
    assert answer.text_heard(1000) == "One two three. "
    assert answer.text_heard(2000) == "One two three. Four five"
    assert answer.text_heard(500) == "One two"
    assert answer.audio_ms == 3000


class Collect:
    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)


def job(request_id: str) -> Job:
    return Job("s", request_id, "text", False, (), None, 10, GenerationConfig(), lambda event: None)


async def settle(condition, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run_engine(job_: Job, events: list) -> None:
    """The engine's side: the job's events, from another thread, as the engine emits them."""
    thread = threading.Thread(target=lambda: [job_.emit(event) for event in events])
    thread.start()
    thread.join(5)


def test_a_spoken_answer_streams_audio_sentence_by_sentence_before_its_completion():
    async def scenario() -> list:
        spoken: list[str] = []

        async def speak(text: str, voice: str | None) -> np.ndarray:
            spoken.append(text)
            await asyncio.sleep(0.01)
            return np.full(2400 * len(text.split()), 0.1, dtype=np.float32)

        out, cuts = Collect(), []
        speaker = Speaker(speak, out, lambda message_id, text: cuts.append(text) or True)
        answer = job("q")
        speaker.tap(answer, None)
        run_engine(answer, [ResponseStarted("q", "text"), TokenText("q", "Hello there. "), TokenText("q", "Bye"),
                            ResponseCompleted("q", "text", "Hello there. Bye", "stop", 1, 2, 0.1, 0.01)])
        await settle(lambda: any(isinstance(event, ResponseCompleted) for event in out.events))
        assert spoken == ["Hello there.", "Bye"]
        assert cuts == []
        return out.events

    events = asyncio.run(scenario())
    kinds = [type(event).__name__ for event in events]
    assert kinds[:3] == ["ResponseStarted", "TokenText", "TokenText"]
    assert kinds[-1] == "ResponseCompleted" and events[-1].finish_reason == "stop"
    audio = b"".join(event.pcm for event in events if isinstance(event, AudioOut))
    assert len(audio) == 2 * 2400 * 3


def test_barge_in_drops_unspoken_sentences_and_cuts_the_conversation_to_what_was_sent():
    async def scenario() -> tuple[list, list]:
        release = asyncio.Event()

        async def speak(text: str, voice: str | None) -> np.ndarray:
            if text.startswith("Second"):
                await release.wait()
            return np.zeros(2400, dtype=np.float32) + 0.1

        out, cuts = Collect(), []
        speaker = Speaker(speak, out, lambda message_id, text: cuts.append(text) or True)
        answer = job("q")
        speaker.tap(answer, None)
        run_engine(answer, [ResponseStarted("q", "text"), TokenText("q", "First one. Second one. Third one. "),
                            ResponseCompleted("q", "text", "First one. Second one. Third one.", "stop", 1, 2, .1, .01)])
        await settle(lambda: any(isinstance(event, AudioOut) for event in out.events))
        speaker.interrupt()
        release.set()
        await settle(lambda: any(isinstance(event, ResponseCompleted) for event in out.events))
        await asyncio.sleep(0.05)
        return out.events, cuts

    events, cuts = asyncio.run(scenario())
    assert isinstance(events[-1], ResponseCompleted) and events[-1].finish_reason == "interrupted"
    assert sum(isinstance(event, AudioOut) for event in events) == 1
    assert cuts == ["First one. "]


class ScriptedVad:
    """Stands in for a VadStream: loud samples are speech."""

    window = WINDOW

    def __init__(self) -> None:
        self._rest = np.zeros(0, dtype=np.float32)

    async def probabilities(self, samples: np.ndarray) -> np.ndarray:
        samples = np.concatenate([self._rest, samples])
        whole = len(samples) - len(samples) % WINDOW
        self._rest = samples[whole:]
        return np.abs(samples[:whole]).reshape(-1, WINDOW).max(axis=1)

    def reset(self) -> None:
        self._rest = np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        pass


def pcm(seconds: float, loud: bool) -> bytes:
    return float_to_pcm16(np.full(int(seconds * 16000), 0.9 if loud else 0.0, dtype=np.float32))


@pytest.mark.parametrize("detection", [TurnDetection(), None])
def test_a_turn_is_heard_with_its_pre_roll_and_transcribed(detection):
    async def scenario() -> tuple[list, list]:
        heard: list = []

        async def transcribe(samples: np.ndarray) -> str:
            heard.append(len(samples))
            return "hello"

        out, turns, starts = Collect(), [], []
        listener = Listener(ScriptedVad, transcribe, out, lambda: starts.append(1),
                            lambda turn, text: turns.append((turn.request_id, text)), detection)
        for index, (seconds, loud) in enumerate([(1.0, False), (1.0, True), (1.0, False)]):
            for part in range(10):
                listener.put(AudioInput(pcm(seconds / 10, loud), 16000, f"c{index}.{part}"))
        if detection is None:
            listener.put(AudioMark("commit", "end"))
        await settle(lambda: turns)
        listener.close()
        return out.events, turns, heard, starts

    events, turns, heard, starts = asyncio.run(scenario())
    if detection is None:
        assert [type(event) for event in events] == [AudioCommitted]
        assert turns == [("end", "hello")] and heard == [48000]
        return
    kinds = [type(event) for event in events]
    assert kinds == [SpeechStarted, SpeechStopped, AudioCommitted] and starts == [1]
    assert abs(events[0].audio_start_ms - 1000) <= 32 and abs(events[1].audio_end_ms - 2000) <= 32
    assert turns[0][1] == "hello" and turns[0][0].startswith("c2.")  # the chunk that ended the turn
    assert abs(heard[0] - 16000 * (0.3 + 1.0 + 0.5)) <= 2 * WINDOW  # pre-roll, speech, the silence heard
