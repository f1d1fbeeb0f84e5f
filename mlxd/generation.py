"""How a session wants its answers generated: the neutral form of the client's `config`."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.settings import Settings


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 200
    max_tokens_image: int = 100
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    history: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationConfig:
        return cls(max_tokens=settings.max_tokens, max_tokens_image=settings.image_max_tokens)
