"""Audio for voice sessions: the models (VAD, speech to text, text to speech) and the thread that owns them."""

from mlxd.audio.models import AudioModels, AudioUnavailable, VadStream
from mlxd.audio.worker import AudioBusy, WrongThread

__all__ = ["AudioBusy", "AudioModels", "AudioUnavailable", "VadStream", "WrongThread"]
