"""Read a CTranslate2 model.bin (the faster-whisper format) into numpy arrays, without CTranslate2.

The file is: a version, the spec's name and revision, then each variable as a name, a shape, a type id and
its raw bytes, then aliases (one variable under a second name). Version 6 is what current converters write.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
BFLOAT16 = 5
OLDEST, NEWEST = 4, 6  # binary versions read here: older ones give item sizes, not types


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (length,) = self.take("H")
        raw = self.data[self.offset:self.offset + length]
        self.offset += length
        return raw.rstrip(b"\0").decode("utf-8")

    def raw(self, length: int) -> bytes:
        raw = self.data[self.offset:self.offset + length]
        if len(raw) != length:
            raise ValueError("the CTranslate2 file ends inside a variable: it is truncated")
        self.offset += length
        return raw


def read_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name (e.g. WhisperSpec) and every variable by name, aliases included."""
    reader = Reader(path.read_bytes())
    (version,) = reader.take("I")
    if not OLDEST <= version <= NEWEST:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (only {OLDEST}-{NEWEST})")
    spec = reader.string()
    reader.take("I")  # the spec's revision
    (count,) = reader.take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.string()
        (rank,) = reader.take("B")
        shape = reader.take("I" * rank) if rank else ()
        type_id, size = reader.take("BI")
        raw = reader.raw(size)
        if type_id == BFLOAT16:  # numpy has no bfloat16: widen the upper halves of float32s
            value = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif type_id in DTYPES:
            value = np.frombuffer(raw, dtype=np.dtype(DTYPES[type_id]).newbyteorder("<"))
        else:
            raise ValueError(f"variable {name} has CTranslate2 type {type_id}, which is not supported")
        variables[name] = value.reshape(shape)
    (aliases,) = reader.take("I")
    for _ in range(aliases):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return spec, variables
