"""A job as an OpenAI chat-completions request: its messages, its images as data: URLs, its sampling.

The messages are shaped as for the local engine's chat templates (prompts.py: one system turn, adjacent
messages of one role merged), which any upstream template accepts. Images are decoded with mlxd's own limits
(bytes, pixels, longest side) and re-encoded, so the upstream receives what the local engine would have seen,
and never a file larger than mlxd accepts.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from mlxd.dialogue import Message
from mlxd.engine.prompts import chat_messages, images_of
from mlxd.generation import GenerationConfig
from mlxd.media import decode_image
from mlxd.settings import Settings

JPEG_QUALITY = 90
CHARS_PER_TOKEN = 3  # an upstream's tokenizer is not at hand: a conservative estimate for --context-tokens
TOKENS_PER_IMAGE = 256


def image_url(data: str | bytes, settings: Settings) -> str:
    """The image, bounded as mlxd bounds it, as a JPEG data: URL (CPU work: call it off the event loop)."""
    image = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                         max_side=settings.image_max_side)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def estimated_tokens(messages: Sequence[Message]) -> int:
    return sum(len(message.text) for message in messages) // CHARS_PER_TOKEN + TOKENS_PER_IMAGE * len(
        images_of(messages))


def request_messages(messages: Sequence[Message], instructions: str | None, urls: Sequence[str]) -> list[dict]:
    """Chat messages with each image, in order, as an `image_url` part of its turn."""
    remaining = iter(urls)
    turns = chat_messages(messages, instructions, system_role=True, with_images=True)
    for turn in turns:
        if isinstance(turn["content"], list):
            turn["content"] = [{"type": "image_url", "image_url": {"url": next(remaining)}}
                               if part["type"] == "image" else part for part in turn["content"]]
    return turns


def request_body(model: str, messages: list[dict], config: GenerationConfig, max_tokens: int) -> dict[str, Any]:
    """One streaming request with the session's sampling, in the fields mlx-lm's and mlx-vlm's servers (and
    vLLM and SGLang) read."""
    return {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "presence_penalty": config.presence_penalty,
        "frequency_penalty": config.frequency_penalty,
    }
