"""Frame sources for `mlxd watch`: a video file played at its own speed, a camera, or the screen (macOS).

Each source answers one question, "which frame is current `seconds` after the start?", so the caller
paces in real time and a slow model never makes a file play slower: frames in between are skipped, not
queued. opencv (installed with mlx-vlm) decodes; it is imported only when a command needs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FALLBACK_FILE_FPS = 25.0
SCREENCAPTURE_TIMEOUT_SECONDS = 10


class CaptureError(Exception):
    """The source cannot be used: the message says which and why."""


class Source:
    """A source of frames; `frame_at` returns (position in seconds, BGR image) or None once it has ended."""

    screen = False

    def frame_at(self, seconds: float) -> tuple[float, Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""


def _cv2() -> Any:
    import cv2

    # opencv logs every backend it tried for a missing camera or a bad file; the CaptureError says it in one line
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


class VideoFile(Source):
    """Frames of a file by their timestamps: seeking forward grabs (without decoding) the frames it skips."""

    def __init__(self, path: Path) -> None:
        cv2 = _cv2()
        self._capture = cv2.VideoCapture(str(path))
        ok, frame = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self._capture.release()
            raise CaptureError(f"cannot read the video {path}: not a video file opencv can decode")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else FALLBACK_FILE_FPS
        self._index, self._frame, self._decoded = 0, frame, True

    def frame_at(self, seconds: float) -> tuple[float, Any] | None:
        target = int(seconds * self.fps)
        while self._index < target:
            if not self._capture.grab():
                return None
            self._index += 1
            self._decoded = False
        if not self._decoded:
            ok, self._frame = self._capture.retrieve()
            if not ok:
                return None
            self._decoded = True
        return self._index / self.fps, self._frame

    def close(self) -> None:
        self._capture.release()


class Camera(Source):
    def __init__(self, index: int) -> None:
        self._capture = _cv2().VideoCapture(index)
        ok = self._capture.isOpened() and self._capture.read()[0]
        if not ok:
            self._capture.release()
            raise CaptureError(f"camera {index} cannot be opened")

    def frame_at(self, seconds: float) -> tuple[float, Any] | None:
        ok, frame = self._capture.read()
        return (seconds, frame) if ok else None

    def close(self) -> None:
        self._capture.release()


class Screen(Source):
    """The main display through macOS's `screencapture`: one still per frame, so a few frames a second."""

    screen = True

    def __init__(self) -> None:
        if sys.platform != "darwin" or shutil.which("screencapture") is None:
            raise CaptureError("--screen captures the screen on macOS only (with screencapture); "
                               "use --camera N or --video FILE here")
        self._folder = tempfile.TemporaryDirectory(prefix="mlxd-screen-")
        self._path = Path(self._folder.name) / "screen.png"
        if self._grab() is None:
            self.close()
            raise CaptureError("screencapture took no picture: allow Screen Recording for this terminal in "
                               "System Settings > Privacy & Security")

    def _grab(self) -> Any:
        try:
            subprocess.run(["screencapture", "-x", "-t", "png", str(self._path)], check=True,
                           timeout=SCREENCAPTURE_TIMEOUT_SECONDS, capture_output=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return _cv2().imread(str(self._path))

    def frame_at(self, seconds: float) -> tuple[float, Any] | None:
        frame = self._grab()
        return None if frame is None else (seconds, frame)

    def close(self) -> None:
        self._folder.cleanup()


def encode_jpeg(frame: Any, size: int, quality: int) -> bytes:
    """A JPEG of `frame` whose longest side is at most `size` (never upscaled), at `quality` (1 to 100)."""
    cv2 = _cv2()
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CaptureError("opencv could not encode a frame as JPEG")
    return encoded.tobytes()
