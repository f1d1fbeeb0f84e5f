"""PCM conversions shared by the audio models and the wires: pure numpy, safe on any thread.

Both vendor APIs and the original protocol carry audio as PCM16 little-endian mono; the models take float32
in [-1, 1]. VAD and STT run at 16 kHz, TTS answers at 24 kHz, so one resampler serves both directions.
"""

from __future__ import annotations

from math import gcd

import numpy as np

SPEECH_RATE = 16000  # what VAD and STT take
OUTPUT_RATE = 24000  # what TTS gives, and what both vendor APIs expect
PCM16_SCALE = 32768.0


def pcm16_to_float(data: bytes) -> np.ndarray:
    """PCM16LE mono bytes -> float32 samples in [-1, 1); an odd byte count is a broken chunk, so refuse it."""
    if len(data) % 2:
        raise ValueError(f"PCM16 audio has an even number of bytes, this chunk has {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float samples -> PCM16LE bytes, clipped so that loud synthesis saturates instead of wrapping around."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1) * PCM16_SCALE, -32768, 32767)
    return np.round(scaled).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's resample_poly) with the smallest up/down ratio; float32 out."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if from_rate == to_rate or samples.size == 0:
        return samples.copy()
    from scipy.signal import resample_poly

    step = gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // step, from_rate // step).astype(np.float32)
