"""Turn detection with OpenAI `server_vad` semantics, from a stream of speech probabilities.

Pure scheduling logic, no audio: it is fed one probability per VAD window (Silero's 32 ms at 16 kHz) and says
where speech began and where it stopped, in samples of the session's 16 kHz audio. Speech begins at the first
window at or above the threshold; a window counts as silence below the threshold less a hysteresis margin
(Silero's own rule, so that a word's quiet middle does not split it); speech stops once silence has lasted the
silence duration, and is placed where that silence began.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlxd.intents import TurnDetection

HYSTERESIS = 0.15


@dataclass(frozen=True)
class Boundary:
    """Speech `start`ed or `stop`ped at `sample` (16 kHz samples since the session's first audio)."""

    kind: Literal["start", "stop"]
    sample: int


class TurnDetector:
    def __init__(self, detection: TurnDetection, window: int, rate: int) -> None:
        self.detection = detection
        self.window = window
        self._silence_windows = max(1, -(-detection.silence_duration_ms * rate // (1000 * window)))
        self.speaking = False
        self._silent_since: int | None = None

    def feed(self, probability: float, sample: int) -> Boundary | None:
        """The probability of the window that begins at `sample`; a boundary when it starts or ends speech."""
        if not self.speaking:
            if probability >= self.detection.threshold:
                self.speaking = True
                self._silent_since = None
                return Boundary("start", sample)
            return None
        if probability >= self.detection.threshold - HYSTERESIS:
            self._silent_since = None
            return None
        if self._silent_since is None:
            self._silent_since = sample
        if sample + self.window - self._silent_since >= self._silence_windows * self.window:
            self.speaking = False
            stopped, self._silent_since = self._silent_since, None
            return Boundary("stop", stopped)
        return None

    def restart(self) -> None:
        """Forget any speech in progress (its turn was committed or cleared)."""
        self.speaking = False
        self._silent_since = None
