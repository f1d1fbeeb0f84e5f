"""OpenAI Realtime's refusals and the checks that raise them: every bad field names its `param`.

A refusal is a ClientError carrying OpenAI's own error code; `param` is the dotted path of the field at
fault (`session.max_output_tokens`), as OpenAI reports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlxd.errors import ClientError
from mlxd.protocols.base import valid_unicode

INVALID_JSON = "invalid_json"
INVALID_VALUE = "invalid_value"
MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
UNKNOWN_PARAMETER = "unknown_parameter"
UNSUPPORTED_FEATURE = "unsupported_feature"
ITEM_NOT_FOUND = "item_not_found"
ACTIVE_RESPONSE = "conversation_already_has_active_response"
CANCEL_NOT_ACTIVE = "response_cancel_not_active"
BETA_DISABLED = "beta_api_shape_disabled"

MAX_ID_CHARS = 256


def refuse(code: str, message: str, param: str | None, event_id: str | None) -> ClientError:
    return ClientError(code, message, event_id, field=param)


class Fields:
    """Reads one client object (an event, a session, an item) at the dotted path `where`, refusing what
    is missing, unknown, mistyped or out of range; `event_id` is echoed in every refusal."""

    def __init__(self, value: Any, where: str, event_id: str | None, allowed: Iterable[str],
                 ignored: Iterable[str] = ()) -> None:
        if not isinstance(value, dict):
            raise refuse(INVALID_VALUE, f"{where or 'the event'}: must be an object", where or None, event_id)
        self.value = value
        self.where = where
        self.event_id = event_id
        allowed = set(allowed)
        ignored = set(ignored)
        for name in value:
            if name not in allowed and name not in ignored:
                raise refuse(UNKNOWN_PARAMETER, f"unknown parameter: {self.path(name)[:128]!r}",
                             self.path(name)[:128], event_id)

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return self.value.get(name) is not None

    def get(self, name: str) -> Any:
        return self.value.get(name)

    def error(self, code: str, name: str, message: str) -> ClientError:
        return refuse(code, f"{self.path(name)}: {message}", self.path(name), self.event_id)

    def required(self, name: str) -> Any:
        if not self.has(name):
            raise self.error(MISSING_REQUIRED_PARAMETER, name, "required")
        return self.value[name]

    def text(self, name: str, limit: int, required: bool = False) -> str | None:
        value = self.required(name) if required else self.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(INVALID_VALUE, name, "must be a string")
        if not valid_unicode(value):
            raise self.error(INVALID_VALUE, name, "not valid Unicode (a lone surrogate escape)")
        if len(value) > limit:
            raise self.error(INVALID_VALUE, name, f"{len(value)} characters, the limit is {limit}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.get(name)
        if value is not None and value not in choices:
            raise self.error(INVALID_VALUE, name, f"must be one of {', '.join(choices)}")
        return value

    def number(self, name: str, low: float, high: float, integer: bool = False) -> float | int | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(INVALID_VALUE, name, "must be a finite number")
        if integer:
            if isinstance(value, float) and not value.is_integer():
                raise self.error(INVALID_VALUE, name, "must be an integer")
            value = int(value)
        if not low <= value <= high:
            raise self.error(INVALID_VALUE, name, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.get(name)
        if value is not None and not isinstance(value, bool):
            raise self.error(INVALID_VALUE, name, "must be true or false")
        return value

    def identifier(self, name: str, required: bool = False) -> str | None:
        value = self.required(name) if required else self.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or not valid_unicode(value):
            raise self.error(INVALID_VALUE, name, f"must be a string of 1 to {MAX_ID_CHARS} characters")
        return value

    def listed(self, name: str) -> list[Any] | None:
        value = self.get(name)
        if value is not None and not isinstance(value, list):
            raise self.error(INVALID_VALUE, name, "must be an array")
        return value
