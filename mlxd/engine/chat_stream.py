"""One job, one streaming chat-completions request: server-sent events in, mlxd's events out.

Deltas become `TokenText`; `finish_reason` and `usage` (with `prompt_tokens_details.cached_tokens`) become the
`ResponseCompleted`. Faults keep the upstream's own reason: an upstream that cannot be reached or answers an
HTTP error ends the job with `model_unavailable`, a stream cut halfway with `internal`. Cancelling the task
that runs `run` closes the stream at once, which is how an upstream learns that nobody is listening.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlxd import errors
from mlxd.events import ErrorReport, ResponseCompleted, ResponseStarted, ServerEvent, TokenText
from mlxd.metrics import Metrics
from mlxd.scheduler import Job

ERROR_BODY_CHARS = 500
FINISH_REASONS = {"stop": "stop", "length": "length"}


class UpstreamFault(Exception):
    """The request failed: `code` is what the client is told, `reason` the metric label."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class ChatStream:
    """The state of one streamed answer, so that a cancel at any moment still completes it properly."""

    job: Job
    metrics: Metrics
    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    accepted: bool = False

    async def run(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        """Send the request and relay the answer; raises UpstreamFault, or CancelledError when cancelled."""
        try:
            async with client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code >= 400:
                    raise UpstreamFault(errors.MODEL_UNAVAILABLE, f"http_{response.status_code}",
                                        f"the upstream answered HTTP {response.status_code}: "
                                        f"{await error_text(response)}")
                self.accepted = True
                self.job.emit(ResponseStarted(self.job.request_id, self.job.input_type, self.job.answer_id))
                async for line in response.aiter_lines():
                    if line.startswith("data:") and self._receive(line[5:].strip()):
                        break
        except httpx.TimeoutException as exc:
            waited = "connect to" if isinstance(exc, httpx.ConnectTimeout) else "hear from"
            code = errors.INTERNAL if self.accepted else errors.MODEL_UNAVAILABLE
            raise UpstreamFault(code, "timeout", f"timed out waiting to {waited} the upstream "
                                f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            if self.accepted:
                raise UpstreamFault(errors.INTERNAL, "stream_cut",
                                    f"the upstream stream was cut: {_describe(exc)}") from None
            raise UpstreamFault(errors.MODEL_UNAVAILABLE, "unreachable",
                                f"cannot reach the upstream: {_describe(exc)}") from None
        if self.finish_reason is None:
            raise UpstreamFault(errors.INTERNAL, "stream_cut",
                                "the upstream stream was cut: it ended without a finish_reason")

    def _receive(self, data: str) -> bool:
        """One `data:` payload; True at the end of the stream."""
        if data == "[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamFault(errors.INTERNAL, "bad_chunk", f"the upstream sent a chunk that is not JSON: "
                                f"{data[:ERROR_BODY_CHARS]!r}") from None
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                self._token(text)
            if choice.get("finish_reason"):
                self.finish_reason = FINISH_REASONS.get(choice["finish_reason"], "stop")
        return False

    def _token(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.metrics.upstream_first_byte.observe(self.first_token_at - self.started)
        self.parts.append(text)
        self.job.emit(TokenText(self.job.request_id, text))

    def completed(self, finish_reason: str) -> ResponseCompleted:
        usage = self.usage
        details = usage.get("prompt_tokens_details") or {}
        return ResponseCompleted(
            request_id=self.job.request_id,
            input_type=self.job.input_type,
            full_text="".join(self.parts),
            finish_reason=finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or len(self.parts)),
            inference_time=time.monotonic() - self.started,
            time_to_first_token=None if self.first_token_at is None else self.first_token_at - self.started,
            cached_tokens=int(details.get("cached_tokens") or 0),
        )

    def failed(self, fault: UpstreamFault) -> ServerEvent:
        return ErrorReport(fault.code, fault.message, self.job.request_id, self.job.input_type)


async def error_text(response: httpx.Response) -> str:
    """The upstream's reason, from its error body: OpenAI's {"error": {"message"}}, or whatever it sent."""
    raw = b""
    async for piece in response.aiter_bytes():
        raw += piece
        if len(raw) > 4 * ERROR_BODY_CHARS:
            break
    text = raw.decode(errors="replace").strip()
    try:
        error = json.loads(text).get("error", text)
        text = error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        pass
    return text[:ERROR_BODY_CHARS] or response.reason_phrase


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
