"""A job as an OpenAI chat-completions request: its messages, its images as data: URLs, its sampling.

Images are decoded once with mlxd's own limits (bytes, pixels, longest side) and re-encoded, so the upstream
receives what the local engine would have seen, and never a file larger than mlxd accepts.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from mlxd.generation import GenerationConfig
from mlxd.media import decode_image
from mlxd.scheduler import Job
from mlxd.settings import Settings

JPEG_QUALITY = 90


def image_url(data: str | bytes, settings: Settings) -> str:
    """The image, bounded as mlxd bounds it, as a JPEG data: URL (CPU work: call it off the event loop)."""
    image = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                         max_side=settings.image_max_side)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def messages(job: Job, image: str | None) -> list[dict[str, Any]]:
    """The chat messages of a job: its context as the system turn, then the user turn."""
    turns: list[dict[str, Any]] = []
    if job.context:
        turns.append({"role": "system", "content": job.context})
    if image is None:
        turns.append({"role": "user", "content": job.prompt})
    else:
        turns.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                  {"type": "text", "text": job.prompt}]})
    return turns


def sampling(config: GenerationConfig, max_tokens: int) -> dict[str, Any]:
    """The session's sampling in the fields mlx-lm's and mlx-vlm's servers (and vLLM, SGLang) read."""
    return {
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "presence_penalty": config.presence_penalty,
        "frequency_penalty": config.frequency_penalty,
    }


def request_body(model: str, job: Job, image: str | None) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages(job, image),
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling(job.config, job.max_tokens),
    }
