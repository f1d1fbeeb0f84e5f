"""Text to speech: Kokoro through mlx-audio, or the system's speech engine (espeak-ng, else flite).

Kokoro takes phonemes. mlx-audio's own pipeline gets them from misaki, whose English G2P needs spaCy and a
model downloaded at run time; here espeak-ng's IPA (the same phoneme set misaki falls back to) feeds the
model directly, so Kokoro runs offline with no extra package. The system engines run as subprocesses,
bounded in text, time and output size, and their audio is resampled to 24 kHz.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import structlog

from mlxd.audio.pcm import OUTPUT_RATE, resample
from mlxd.audio.wav import read_wav
from mlxd.audio.worker import ThreadGuard

log = structlog.get_logger("mlxd.audio")

SYSTEM_ENGINES = ("espeak-ng", "flite")
SYSTEM_COMMANDS = {
    "espeak-ng": ("espeak-ng", "-v", "en-us", "-f", "{text}", "-w", "{out}"),
    "flite": ("flite", "-voice", "slt", "-f", "{text}", "-o", "{out}"),
}
MAX_TEXT_CHARS = 4000  # one call speaks a sentence or a few; longer text is cut here, not queued
MAX_OUTPUT_BYTES = 16 * 2**20  # ~6 min at 22 kHz: far beyond any sentence
SECONDS_PER_CHAR = 0.05  # engine time allowed per character, on top of BASE_TIMEOUT
BASE_TIMEOUT = 5.0
ESPEAK_VOICE = "en-us"
KOKORO_VOICE = "af_heart"
KOKORO_MAX_PHONEMES = 500  # the model's context is 512 tokens, two of them the start and end pads
# espeak-ng's IPA -> Kokoro's American phoneme set (misaki's single letters for diphthongs and affricates)
ESPEAK_TO_KOKORO = (("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("oʊ", "O"), ("dʒ", "ʤ"), ("tʃ", "ʧ"),
                    ("ɚ", "əɹ"), ("ɝ", "ɜɹ"), ("ː", ""), ("ɐ", "ə"), ("r", "ɹ"), ("x", "k"), ("ç", "k"),
                    ("ɬ", "l"), ("ʔ", "t"))


class SpeechFailed(RuntimeError):
    """The speech engine failed, ran too long, or wrote too much."""


def system_engine() -> str | None:
    """The first installed system speech engine, if any."""
    return next((name for name in SYSTEM_ENGINES if shutil.which(name)), None)


def run_engine(command: tuple[str, ...], text: str, output: bool = True) -> bytes:
    """Run a speech engine on `text` (given as a file), bounded in time and in what it writes."""
    if len(text) > MAX_TEXT_CHARS:
        log.warning("speech_text_cut", chars=len(text), spoken=MAX_TEXT_CHARS)
        text = text[:MAX_TEXT_CHARS]
    timeout = BASE_TIMEOUT + SECONDS_PER_CHAR * len(text)
    with tempfile.TemporaryDirectory(prefix="mlxd-tts-") as folder:
        source, sink = Path(folder) / "text.txt", Path(folder) / "out"
        source.write_text(text, encoding="utf-8")
        argv = [part.format(text=source, out=sink) for part in command]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SpeechFailed(f"{command[0]} took over {timeout:.0f} s") from None
        if done.returncode != 0:
            raise SpeechFailed(f"{command[0]} failed ({done.returncode}): {done.stderr[-300:]!r}")
        if not output:
            return done.stdout[:MAX_OUTPUT_BYTES]
        if not sink.is_file() or sink.stat().st_size > MAX_OUTPUT_BYTES:
            raise SpeechFailed(f"{command[0]} wrote no audio, or more than {MAX_OUTPUT_BYTES} bytes")
        return sink.read_bytes()


class SystemSpeech:
    """espeak-ng or flite, resampled to 24 kHz. Vendor voice names mean nothing to them: the default speaks."""

    def __init__(self, engine: str) -> None:
        if shutil.which(engine) is None:
            raise FileNotFoundError(f"the speech engine {engine} is not installed")
        self.guard = ThreadGuard()
        self.engine = engine

    def speak(self, text: str, voice: str | None = None) -> np.ndarray:
        self.guard.check()
        if not text.strip():
            return np.zeros(0, dtype=np.float32)
        samples, rate = read_wav(run_engine(SYSTEM_COMMANDS[self.engine], text))
        return resample(samples, rate, OUTPUT_RATE)


def phonemes(text: str) -> str:
    """American English IPA from espeak-ng, in Kokoro's phoneme set."""
    ipa = run_engine(("espeak-ng", "-q", "--ipa", "-v", ESPEAK_VOICE, "-f", "{text}"), text, output=False)
    out = " ".join(ipa.decode("utf-8", errors="replace").split())
    for espeak, kokoro in ESPEAK_TO_KOKORO:
        out = out.replace(espeak, kokoro)
    return out


class KokoroSpeech:
    """A Kokoro model (hub repo or folder, mlx-audio's layout) with the voice packs of its folder."""

    def __init__(self, name: str) -> None:
        from mlx_audio.tts.utils import get_model_path, load_model

        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError("Kokoro here takes its phonemes from espeak-ng, which is not installed")
        self.guard = ThreadGuard()
        folder = Path(get_model_path(name)) if not Path(name).expanduser().is_dir() else Path(name).expanduser()
        self.model = load_model(folder)
        self.voices = {p.stem: p for p in sorted((folder / "voices").glob("*.safetensors"))}
        if not self.voices:
            raise FileNotFoundError(f"{name} has no voices/*.safetensors")
        self.default_voice = KOKORO_VOICE if KOKORO_VOICE in self.voices else next(iter(self.voices))
        self._packs: dict[str, object] = {}

    def speak(self, text: str, voice: str | None = None) -> np.ndarray:
        import mlx.core as mx
        from mlx_audio.tts.models.kokoro.voice import load_voice_tensor

        self.guard.check()
        name = voice if voice in self.voices else self.default_voice
        if name not in self._packs:
            self._packs[name] = load_voice_tensor(str(self.voices[name]))
        pack = self._packs[name]
        pieces = []
        for chunk in _chunks(phonemes(text), KOKORO_MAX_PHONEMES):
            audio = self.model(chunk, pack[len(chunk) - 1])
            mx.eval(audio)
            pieces.append(np.array(audio, dtype=np.float32).reshape(-1))
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return resample(audio, self.model.sample_rate, OUTPUT_RATE)


def _chunks(text: str, limit: int) -> list[str]:
    """Split at spaces into pieces of at most `limit` characters (a word longer than that is cut)."""
    pieces: list[str] = []
    for word in text.split(" "):
        if pieces and len(pieces[-1]) + 1 + len(word) <= limit:
            pieces[-1] += " " + word
        elif word:
            pieces.extend(word[i:i + limit] for i in range(0, len(word), limit))
    return pieces


def load_kokoro(name: str) -> KokoroSpeech:
    return KokoroSpeech(name)
