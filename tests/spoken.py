"""Speech for the vendor protocols' voice tests: the flite question at the API's rate, padded with silence so
that server VAD hears a beginning and an end, and cut into the chunks a microphone app would send."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlxd.audio.pcm import SPEECH_RATE, float_to_pcm16, resample
from tests.tiny_audio import flite_speech

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def spoken(text: str, folder: Path, rate: int, before: float = 0.5, after: float = 1.2) -> bytes:
    """`text` said by flite's slt voice as PCM16 mono at `rate`, with seconds of silence around it."""
    folder.mkdir(parents=True, exist_ok=True)
    voice = resample(flite_speech(text, folder), SPEECH_RATE, rate)
    return float_to_pcm16(np.concatenate([np.zeros(int(before * rate), np.float32), voice,
                                          np.zeros(int(after * rate), np.float32)]))


def chunks(pcm: bytes, rate: int, seconds: float = 0.1) -> Iterator[bytes]:
    step = 2 * int(rate * seconds)
    for start in range(0, len(pcm), step):
        yield pcm[start:start + step]
