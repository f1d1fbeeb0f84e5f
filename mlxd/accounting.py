"""Metrics and the per-request log line, recorded as a session's events go out to its client."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from mlxd.events import TERMINAL_EVENTS, ErrorReport, FrameDropped, ResponseCompleted, ServerEvent

if TYPE_CHECKING:
    from mlxd.session import Session

log = structlog.get_logger("mlxd.session")


def account(session: Session, event: ServerEvent) -> None:
    metrics = session.metrics
    if isinstance(event, TERMINAL_EVENTS):
        session.update_depths()
    if isinstance(event, ResponseCompleted):
        _completed(session, event)
    elif isinstance(event, FrameDropped):
        session.frames_dropped += 1
        metrics.frames_dropped.labels(reason=event.reason).inc()
    elif isinstance(event, ErrorReport):
        metrics.errors.labels(code=event.code).inc()
        if event.input_type is not None:
            metrics.requests.labels(input_type=event.input_type, outcome="error").inc()
        log.info("request_error", session=session.id, request=event.request_id, code=event.code,
                 error=event.message)


def _completed(session: Session, event: ResponseCompleted) -> None:
    metrics = session.metrics
    metrics.requests.labels(input_type=event.input_type, outcome=event.finish_reason).inc()
    metrics.prompt_tokens.inc(event.prompt_tokens)
    metrics.generated_tokens.inc(event.completion_tokens)
    metrics.inference.observe(event.inference_time)
    tokens_per_second = None
    if event.time_to_first_token is not None:
        metrics.time_to_first_token.observe(event.time_to_first_token)
        decode_seconds = event.inference_time - event.time_to_first_token
        if event.completion_tokens > 1 and decode_seconds > 0:
            tokens_per_second = round((event.completion_tokens - 1) / decode_seconds, 2)
            metrics.tokens_per_second.set(tokens_per_second)
            metrics.decode_rate.observe(tokens_per_second)
    content = {"text": event.full_text} if session.settings.log_content else {}
    log.info("request_finished", session=session.id, request=event.request_id, input_type=event.input_type,
             prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
             cached_tokens=event.cached_tokens, time_to_first_token=event.time_to_first_token,
             inference_time=round(event.inference_time, 4), tokens_per_second=tokens_per_second,
             finish_reason=event.finish_reason, text_chars=len(event.full_text), **content)
