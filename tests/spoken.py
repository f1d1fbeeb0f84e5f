"""The flite question for the vendor protocols' voice tests: PCM16 at the API's rate, cut into the chunks a
microphone app sends (the speech itself is tests.test_voice_server's, silence around it for server VAD)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlxd.audio.pcm import SPEECH_RATE, float_to_pcm16, resample
from tests.test_voice_server import ANSWER, QUESTION, spoken

__all__ = ["ANSWER", "QUESTION", "chunks", "spoken_pcm"]


def spoken_pcm(text: str, folder: Path, rate: int) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    return float_to_pcm16(resample(spoken(text, folder), SPEECH_RATE, rate))


def chunks(pcm: bytes, rate: int, seconds: float = 0.1) -> Iterator[bytes]:
    step = 2 * int(rate * seconds)
    for start in range(0, len(pcm), step):
        yield pcm[start:start + step]
