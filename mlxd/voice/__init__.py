"""The session's voice layer: listening (turns from microphone audio) and speaking (answers as audio)."""

from mlxd.voice.voice import Voice, VoiceHooks, VoiceIntent, audio_refusal

__all__ = ["Voice", "VoiceHooks", "VoiceIntent", "audio_refusal"]
