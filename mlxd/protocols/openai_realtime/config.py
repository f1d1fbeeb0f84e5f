"""`session.update` and `response.create` parameters: validated whole before anything changes.

The session is tool-free until mlxd has function calling: asking for tools is refused as
`unsupported_feature`; its audio is `audio`'s, the include, tracing and truncation settings are ignored.
`temperature` is mlxd's addition (0 to 2), on the session and on each response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxd.dialogue import Message
from mlxd.protocols.base import AudioSupport, valid_unicode
from mlxd.protocols.openai_realtime.audio import TEXT_ONLY, AudioConfig, parse_audio, parse_modalities
from mlxd.protocols.openai_realtime.fields import (
    INVALID_VALUE,
    UNSUPPORTED_FEATURE,
    Fields,
)
from mlxd.protocols.openai_realtime.items import Limits, parse_item

MAX_OUTPUT_TOKENS = 8192
UNLIMITED = "inf"
TOOL_CHOICES = ("auto", "none")
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
IGNORED_SESSION_FIELDS = ("include", "tracing", "truncation", "model", "object", "id", "expires_at")


@dataclass(frozen=True)
class SessionView:
    """What `session.updated` reports beside the generation settings the session keeps."""

    instructions: str = ""
    max_output_tokens: int | str = 0
    tool_choice: str = "auto"


@dataclass(frozen=True)
class SessionChanges:
    instructions: str | None = None
    max_output_tokens: int | str | None = None
    temperature: float | None = None
    tool_choice: str | None = None
    audio: AudioConfig = TEXT_ONLY


@dataclass(frozen=True)
class ResponseParams:
    out_of_band: bool = False
    input: tuple[Message | str, ...] = ()  # items, or the ids of `item_reference`s
    instructions: str | None = None
    max_output_tokens: int | str | None = None
    temperature: float | None = None
    metadata: dict[str, str] | None = None


def output_tokens(value: int | str) -> int:
    return MAX_OUTPUT_TOKENS if value == UNLIMITED else int(value)


def parse_session(value: Any, event_id: str | None, limits: Limits, audio_config: AudioConfig,
                  audio: AudioSupport) -> SessionChanges:
    """The changes a `session.update` asks for; `audio_config` is the session's audio so far."""
    session = Fields(value, "session", event_id,
                     ("type", "instructions", "max_output_tokens", "output_modalities", "tools", "tool_choice",
                      "temperature", "audio"), ignored=IGNORED_SESSION_FIELDS)
    if session.required("type") != "realtime":
        raise session.error(INVALID_VALUE, "type", 'only "realtime" sessions are served')
    _check_no_tools(session)
    return SessionChanges(session.text("instructions", limits.max_text_chars), _max_output_tokens(session),
                          session.number("temperature", 0.0, 2.0), _tool_choice(session),
                          parse_audio(session, audio_config, audio))


def parse_response(value: Any, event_id: str | None, limits: Limits, new_item_id: Callable[[], str],
                   audio_config: AudioConfig, audio: AudioSupport) -> ResponseParams:
    """`new_item_id()` names each input item sent without an id; a response speaks as its session does."""
    if value is None:
        return ResponseParams()
    response = Fields(value, "response", event_id,
                      ("conversation", "input", "instructions", "max_output_tokens", "output_modalities", "tools",
                       "tool_choice", "temperature", "metadata"), ignored=("audio",))
    if parse_modalities(response, audio) not in (None, audio_config.output_audio):
        raise response.error(UNSUPPORTED_FEATURE, "output_modalities", "a response has the session's "
                             f"output_modalities, {audio_config.modalities()}: change them with session.update")
    _check_no_tools(response)
    _tool_choice(response)
    conversation = response.choice("conversation", ("auto", "none"))
    raw_input = response.listed("input")
    if raw_input is not None and conversation != "none":
        raise response.error(UNSUPPORTED_FEATURE, "input", 'input is served with conversation "none" only')
    items = tuple(_parse_input(entry, f"response.input[{index}]", event_id, limits, new_item_id)
                  for index, entry in enumerate(raw_input or ()))
    return ResponseParams(conversation == "none", items, response.text("instructions", limits.max_text_chars),
                          _max_output_tokens(response), response.number("temperature", 0.0, 2.0),
                          _metadata(response))


def _parse_input(value: Any, where: str, event_id: str | None, limits: Limits,
                 new_item_id: Callable[[], str]) -> Message | str:
    if isinstance(value, dict) and value.get("type") == "item_reference":
        reference = Fields(value, where, event_id, ("type", "id"))
        item_id = reference.identifier("id", required=True)
        assert item_id is not None
        return item_id
    return parse_item(value, where, event_id, limits, new_item_id())


def _check_no_tools(fields: Fields) -> None:
    tools = fields.listed("tools")
    if tools:
        raise fields.error(UNSUPPORTED_FEATURE, "tools", "function calling is not supported by this server")


def _tool_choice(fields: Fields) -> str | None:
    choice = fields.get("tool_choice")
    if choice is None or choice in TOOL_CHOICES:
        return choice
    if choice == "required" or isinstance(choice, dict):
        raise fields.error(UNSUPPORTED_FEATURE, "tool_choice", "function calling is not supported by this server")
    raise fields.error(INVALID_VALUE, "tool_choice", "must be auto or none")


def _max_output_tokens(fields: Fields) -> int | str | None:
    if fields.get("max_output_tokens") == UNLIMITED:
        return UNLIMITED
    value = fields.number("max_output_tokens", 1, MAX_OUTPUT_TOKENS, integer=True)
    return None if value is None else int(value)


def _metadata(fields: Fields) -> dict[str, str] | None:
    metadata = fields.get("metadata")
    if metadata is None:
        return None
    if (not isinstance(metadata, dict) or len(metadata) > METADATA_KEYS
            or not all(isinstance(key, str) and len(key) <= METADATA_KEY_CHARS and valid_unicode(key)
                       and isinstance(value, str) and len(value) <= METADATA_VALUE_CHARS and valid_unicode(value)
                       for key, value in metadata.items())):
        raise fields.error(INVALID_VALUE, "metadata", f"at most {METADATA_KEYS} string keys of up to "
                           f"{METADATA_KEY_CHARS} characters with string values of up to {METADATA_VALUE_CHARS}")
    return metadata
