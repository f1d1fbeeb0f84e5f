"""The session's recent 16 kHz audio, addressed by sample number since its first audio, and bounded."""

from __future__ import annotations

import numpy as np


class AudioRing:
    def __init__(self, limit: int) -> None:
        """Keep at most `limit` samples: older ones are forgotten as new ones arrive."""
        self.limit = limit
        self._samples = np.zeros(0, dtype=np.float32)
        self.start = 0  # the number of the oldest sample kept

    @property
    def end(self) -> int:
        """The number the next sample will get."""
        return self.start + len(self._samples)

    def append(self, samples: np.ndarray) -> None:
        self._samples = np.concatenate([self._samples, samples.astype(np.float32, copy=False)])
        excess = len(self._samples) - self.limit
        if excess > 0:
            self._samples = self._samples[excess:]
            self.start += excess

    def between(self, first: int, end: int) -> np.ndarray:
        """Samples `first` to `end` (exclusive), as far as they are still kept."""
        first, end = max(first, self.start), min(end, self.end)
        return self._samples[first - self.start:max(first, end) - self.start].copy()

    def keep_from(self, first: int) -> None:
        """Forget the samples before `first`."""
        drop = min(max(first - self.start, 0), len(self._samples))
        self._samples = self._samples[drop:]
        self.start += drop
