"""The audio models one server shares: voice activity detection, speech to text and text to speech.

`AudioModels` is built once by the app. Its models load in the background on the audio thread (the server
serves text meanwhile) and every call runs there too; the event loop awaits futures. Calls made while the
models load wait in the audio thread's queue behind the load, so an early caller is served, not refused.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from mlxd.audio.worker import AudioWorker

log = structlog.get_logger("mlxd.audio")

OFF = "none"
LOAD_POLL_SECONDS = 0.05
VAD_WINDOW = 512  # samples per Silero probability at 16 kHz (32 ms)
LOADING, READY, FAILED, DISABLED = "loading", "ready", "failed", "off"


class AudioUnavailable(RuntimeError):
    """The model a call needs is turned off or failed to load; the message says which and why."""


# Silero's streaming state, kept by each VadStream between calls: (LSTM state, or None at the start; the
# previous window's last samples, which the next window sees as context)
VadState = tuple[np.ndarray | None, np.ndarray]


@dataclass
class Choice:
    """Which model a role gets and why; `load` runs on the audio thread and returns the model wrapper."""

    model: str | None
    source: str
    reason: str
    load: Callable[[], Any] | None = None


@dataclass
class Slot:
    """One role's model and where its loading stands, as describe() reports it."""

    role: str
    choice: Choice | None = None
    state: str = LOADING
    error: str | None = None
    load_seconds: float | None = None
    backend: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        choice = self.choice
        return {"model": choice.model if choice else None, "source": choice.source if choice else None,
                "reason": choice.reason if choice else None, "state": self.state, "error": self.error,
                "load_seconds": self.load_seconds}

    def ready(self) -> Any:
        """The loaded model, or AudioUnavailable saying why there is none (on the audio thread)."""
        if self.backend is None:
            raise AudioUnavailable(self.refusal() or f"the {self.role} model has not loaded")
        return self.backend

    def refusal(self) -> str | None:
        if self.state == DISABLED:
            return self.choice.reason if self.choice else f"{self.role} is turned off"
        if self.state == FAILED:
            return f"the {self.role} model failed to load: {self.error}"
        return None


class AudioModels:
    """Every audio model of the server, owned by one audio thread."""

    def __init__(self, stt_model: str | None = None, tts_model: str | None = None,
                 cache_root: Path | None = None, worker: AudioWorker | None = None) -> None:
        from mlxd.audio import choice

        self.worker = worker or AudioWorker()
        self._choosers: dict[str, Callable[[], Choice]] = {
            "vad": lambda: choice.choose_vad(cache_root),
            "stt": lambda: choice.choose_stt(stt_model, cache_root),
            "tts": lambda: choice.choose_tts(tts_model, cache_root),
        }
        self.slots = {role: Slot(role) for role in self._choosers}
        for role, setting in (("stt", stt_model), ("tts", tts_model)):
            if setting == OFF:
                self.slots[role].choice = choice.turned_off(role)
                self.slots[role].state = DISABLED
        self._started = False
        self._closing = threading.Event()

    def start(self, after: Callable[[], bool] | None = None) -> None:
        """Start the audio thread and load the models on it, in the background, once `after()` is true.

        The app passes "the chat model has loaded": transformers' lazy imports are not thread-safe, so two
        threads importing through it at once can break either load; and text comes first.
        """
        if self._started:
            return
        self._started = True
        self.worker.start()
        self.worker.call_soon(lambda: self._load_all(after), lambda result, error: None)

    @property
    def stt_refusal(self) -> str | None:
        """None when speech input works (or is still loading); else why it is refused."""
        return self.slots["stt"].refusal() or self.slots["vad"].refusal()

    @property
    def tts_refusal(self) -> str | None:
        """None when answers can be spoken (or the model is still loading); else why not."""
        return self.slots["tts"].refusal()

    def describe(self) -> dict[str, Any]:
        return {role: slot.describe() for role, slot in self.slots.items()}

    def vad_stream(self) -> VadStream:
        """A stream of speech probabilities for one session."""
        return VadStream(self)

    async def transcribe(self, samples: np.ndarray) -> str:
        """float32 mono 16 kHz speech -> its text."""
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        return await self.worker.submit(lambda: self.slots["stt"].ready().transcribe(samples))

    async def speak(self, text: str, voice: str | None = None) -> np.ndarray:
        """Text -> float32 mono 24 kHz speech."""
        return await self.worker.submit(lambda: self.slots["tts"].ready().speak(text, voice))

    def close(self) -> None:
        """Stop the audio thread after the calls already queued."""
        self._closing.set()
        self.worker.close()

    def _load_all(self, after: Callable[[], bool] | None) -> None:
        while after is not None and not after():
            if self._closing.wait(LOAD_POLL_SECONDS):
                return
        for role, slot in self.slots.items():
            if slot.state == DISABLED:
                continue
            started = time.monotonic()
            try:
                slot.choice = self._choosers[role]()
                if slot.choice.load is None:
                    slot.state = DISABLED
                    continue
                slot.backend = slot.choice.load()
            except Exception as exc:
                slot.state, slot.error = FAILED, f"{type(exc).__name__}: {exc}"
                log.warning("audio_model_failed", role=role, error=slot.error, **_named(slot.choice))
                continue
            slot.load_seconds = round(time.monotonic() - started, 3)
            slot.state = READY
            log.info("audio_model_ready", role=role, load_seconds=slot.load_seconds, **_named(slot.choice))


def _named(choice: Choice | None) -> dict[str, Any]:
    return {} if choice is None else {"model": choice.model, "source": choice.source, "reason": choice.reason}



class VadStream:
    """One session's speech probabilities: Silero's recurrent state and the samples short of a window.

    Calls on one stream are served in order (the state of one window feeds the next); the state travels to
    the audio thread and back as numpy arrays.
    """

    def __init__(self, models: AudioModels) -> None:
        self._models = models
        self.window = VAD_WINDOW
        self._rest = np.zeros(0, dtype=np.float32)
        self._state: VadState | None = None
        self._epoch = 0  # bumped by reset(): a result computed before it is not kept
        self._lock = asyncio.Lock()
        self._closed = False

    async def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """One speech probability per full window of 16 kHz samples; the remainder waits for the next call."""
        if self._closed:
            raise AudioUnavailable("this VAD stream is closed")
        async with self._lock:
            samples = np.concatenate([self._rest, np.asarray(samples, dtype=np.float32).reshape(-1)])
            whole = samples.size - samples.size % self.window
            self._rest = samples[whole:].copy()
            if whole == 0:
                return np.zeros(0, dtype=np.float32)
            windows, state, epoch = samples[:whole], self._state, self._epoch
            slot = self._models.slots["vad"]

            def run() -> tuple[np.ndarray, VadState]:
                vad = slot.ready()
                return vad.probabilities(windows, state if state is not None else vad.initial_state())

            probabilities, state = await self._models.worker.submit(run, urgent=True)
            if epoch == self._epoch:
                self._state = state
            return probabilities

    def reset(self) -> None:
        """Forget the audio heard so far (a new turn, or a cleared buffer)."""
        self._epoch += 1
        self._rest = np.zeros(0, dtype=np.float32)
        self._state = None

    def close(self) -> None:
        self.reset()
        self._closed = True
