"""Read the PCM16 WAV files that speech engines write, headers with streaming sizes included."""

from __future__ import annotations

import struct

import numpy as np

from mlxd.audio.pcm import pcm16_to_float

PCM = 1


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of a PCM16 RIFF/WAVE file (channels are averaged).

    The data chunk's declared size is trusted only up to the end of the file: engines writing to a pipe or
    a file they never seek back in leave it at 0 or 0xFFFFFFFF.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    offset, rate, channels = 12, None, 1
    while offset + 8 <= len(data):
        kind, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if kind == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if fmt != PCM or bits != 16:
                raise ValueError(f"WAV format {fmt} with {bits}-bit samples; only 16-bit PCM is read")
        elif kind == b"data":
            if rate is None:
                raise ValueError("WAV data before its format")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            pcm = data[body:end]
            samples = pcm16_to_float(pcm[:len(pcm) - len(pcm) % (2 * channels)])
            return samples.reshape(-1, channels).mean(axis=1), rate
        offset = body + size + size % 2
    raise ValueError("WAV file without a data chunk")
