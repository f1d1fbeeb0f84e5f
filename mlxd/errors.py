"""Stable, machine-readable error codes and the exception that carries one to the client."""

from __future__ import annotations

INVALID_JSON = "invalid_json"
UNKNOWN_TYPE = "unknown_type"
INVALID_FIELD = "invalid_field"
TEXT_TOO_LONG = "text_too_long"
IMAGE_DECODE_FAILED = "image_decode_failed"
IMAGE_TOO_LARGE = "image_too_large"
MODEL_TEXT_ONLY = "model_text_only"
MODEL_UNAVAILABLE = "model_unavailable"
QUEUE_FULL = "queue_full"
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
ANSWER_IN_PROGRESS = "answer_in_progress"
AUDIO_UNAVAILABLE = "audio_unavailable"
INTERNAL = "internal"


class ClientError(Exception):
    """A refusal the client is told about; the connection and the session carry on. `field` names the input
    field at fault in the protocol's own terms, for a protocol whose errors say which (OpenAI's `param`)."""

    def __init__(self, code: str, message: str, request_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field


def model_text_only(model: str, request_id: str | None) -> ClientError:
    return ClientError(MODEL_TEXT_ONLY, f"the model {model} is text-only: it cannot take images or frames", request_id)


def model_unavailable(error: str | None, request_id: str | None) -> ClientError:
    return ClientError(MODEL_UNAVAILABLE, f"the model failed to load: {error}", request_id)
