"""OpenAI Realtime (GA) over a WebSocket: client events to intents, neutral events to server events.

The wire keeps what OpenAI's events say and the session does not: the ids it handed out, each response's
place in its sequence of events, the order of the conversation's items (for `previous_item_id`) and the
client's `event_id` to echo in an error. Every server event has a unique `event_id`. Microphone audio and
turn events are the session's; the wire keeps which items were spoken (an `input_audio` item with its
transcript), how long each turn's audio was, and the session's audio configuration (`audio`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mlxd import errors
from mlxd.dialogue import ROOT
from mlxd.events import (
    AudioCommitted,
    AudioOut,
    ConfigUpdated,
    ErrorReport,
    MessageAdded,
    MessageDeleted,
    MessageRetrieved,
    ResponseCompleted,
    ResponseStarted,
    ServerEvent,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import (
    AddMessages,
    AudioMark,
    Cancel,
    ConfigUpdate,
    DeleteMessage,
    Intent,
    Interrupt,
    OfferFrame,
    Respond,
    RetrieveMessage,
    SetInstructions,
    SetVoice,
)
from mlxd.protocols.base import NO_AUDIO, AudioSupport, Close, Outgoing
from mlxd.protocols.openai_realtime.audio import TEXT_ONLY, parse_append, parse_truncate, refuse_unheard
from mlxd.protocols.openai_realtime.config import SessionView, output_tokens, parse_response, parse_session
from mlxd.protocols.openai_realtime.fields import (
    ACTIVE_RESPONSE,
    BETA_DISABLED,
    CANCEL_NOT_ACTIVE,
    INVALID_JSON,
    INVALID_VALUE,
    ITEM_NOT_FOUND,
    UNSUPPORTED_FEATURE,
    Fields,
    refuse,
)
from mlxd.protocols.openai_realtime.items import Limits, parse_image_url, parse_item
from mlxd.protocols.openai_realtime.responses import Ids, Response, dump
from mlxd.protocols.openai_realtime.speech import Speech, remember
from mlxd.settings import Settings

CODES = {  # the session's refusals in OpenAI's words
    errors.INVALID_JSON: INVALID_JSON, errors.UNKNOWN_TYPE: INVALID_VALUE, errors.INVALID_FIELD: INVALID_VALUE,
    errors.TEXT_TOO_LONG: INVALID_VALUE, errors.NOT_FOUND: ITEM_NOT_FOUND, errors.ANSWER_IN_PROGRESS: ACTIVE_RESPONSE,
    errors.AUDIO_UNAVAILABLE: UNSUPPORTED_FEATURE,
}
SERVER_ERRORS = (errors.INTERNAL, errors.MODEL_UNAVAILABLE)
ENGINE_FAILURES = (errors.INTERNAL, errors.IMAGE_DECODE_FAILED, errors.IMAGE_TOO_LARGE)  # after acceptance
POLICY_VIOLATION = 1008


class RealtimeWire:
    """One connection's OpenAI Realtime wire; `model` is what `session.model` names."""

    def __init__(self, settings: Settings, model: str, beta: bool = False, audio: AudioSupport = NO_AUDIO) -> None:
        self._beta = beta
        self.audio = audio
        self._audio_config = TEXT_ONLY
        self._ids = Ids()
        self._model = model
        self._limits = Limits(settings.max_text_chars, settings.max_image_bytes, settings.max_image_pixels)
        self._session_id = self._ids.new("sess")
        self._conversation_id = self._ids.new("conv")
        self._view = SessionView(max_output_tokens=settings.max_tokens)
        self._temperature = GenerationConfig.from_settings(settings).temperature
        self._items: list[str] = []  # the conversation's item ids, in order
        self._after: OrderedDict[str, str | None] = OrderedDict()  # items asked for, not yet added: where
        self._responses: dict[str, Response] = {}  # asked for and not yet done
        self._cancels: OrderedDict[str, str | None] = OrderedDict()  # response id: the cancelling event_id
        self._speech = Speech(self._event)
        self._clearing = False  # output_audio_buffer.clear cuts the spoken answer

    # Client events.

    def opening(self) -> Sequence[Outgoing]:
        if self._beta:
            return [self._error_json(BETA_DISABLED, "the beta Realtime interface (OpenAI-Beta: realtime=v1) is not "
                                     "served: use the GA interface, client.realtime", None, None),
                    Close(POLICY_VIOLATION, "beta_api_shape_disabled")]
        return [self._event("session.created", session=self._session_json())]

    def farewell(self, code: int) -> Sequence[str | bytes]:
        return []

    def parse(self, data: str | bytes) -> Sequence[Intent]:
        if isinstance(data, bytes):  # mlxd's extension: a live frame as raw JPEG, PNG or WebP bytes
            return [OfferFrame(data)]
        try:
            message = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise refuse(INVALID_JSON, f"the event is not valid JSON: {exc}", None, None) from None
        if not isinstance(message, dict):
            raise refuse(INVALID_JSON, "the event must be a JSON object", None, None)
        event_id = Fields({"event_id": message.get("event_id")}, "", None, ("event_id",)).identifier("event_id")
        kind = message.get("type")
        if not isinstance(kind, str):
            raise refuse(INVALID_VALUE, "the event needs a 'type' string", "type", event_id)
        parse = PARSERS.get(kind)
        if parse is None:
            raise refuse(INVALID_VALUE, f"{kind[:64]!r}: unknown event type", "type", event_id)
        return parse(self, message, event_id)

    def _session_update(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id", "session"))
        changes = parse_session(event.required("session"), event_id, self._limits, self._audio_config, self.audio)
        shown = {name: getattr(changes, name) for name in ("instructions", "max_output_tokens", "tool_choice")}
        self._view = replace(self._view, **{name: value for name, value in shown.items() if value is not None})
        config: dict[str, Any] = {}
        if changes.max_output_tokens is not None:
            config["max_tokens"] = output_tokens(changes.max_output_tokens)
        if changes.temperature is not None:
            config["temperature"] = changes.temperature
        intents: list[Intent] = []
        if changes.instructions is not None:
            intents.append(SetInstructions(changes.instructions))
        if changes.audio != self._audio_config:
            self._audio_config = changes.audio
            intents.append(SetVoice(changes.audio.settings(), event_id))
        return [*intents, ConfigUpdate(event_id, config)]

    def _item_create(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id", "item", "previous_item_id"))
        after = event.identifier("previous_item_id")
        item = parse_item(event.required("item"), "item", event_id, self._limits, self._ids.new("item"))
        assert item.id is not None
        if item.id in self._items:
            raise event.error(INVALID_VALUE, "item.id", f"an item {item.id!r} is already in the conversation")
        remember(self._after, item.id, after)
        return [AddMessages((item,), after=after, request_id=event_id)]

    def _item_delete(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        item_id = Fields(message, "", event_id, ("type", "event_id", "item_id")).identifier("item_id", required=True)
        assert item_id is not None
        return [DeleteMessage(item_id, event_id)]

    def _item_retrieve(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        item_id = Fields(message, "", event_id, ("type", "event_id", "item_id")).identifier("item_id", required=True)
        assert item_id is not None
        return [RetrieveMessage(item_id, event_id)]

    def _response_create(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id", "response"))
        params = parse_response(event.get("response"), event_id, self._limits, lambda: self._ids.new("item"),
                                self._audio_config, self.audio)
        response = Response(self._ids.new("resp"), self._ids.new("item"), event_id,
                            None if params.out_of_band else self._conversation_id,
                            params.max_output_tokens or self._view.max_output_tokens, params.metadata,
                            self._audio_config.output_audio)
        self._responses[response.id] = response
        max_tokens = None if params.max_output_tokens is None else output_tokens(params.max_output_tokens)
        return [Respond(response.id, answer_id=None if params.out_of_band else response.item_id,
                        out_of_band=params.out_of_band, input=params.input, instructions=params.instructions,
                        max_tokens=max_tokens, temperature=params.temperature,
                        when_busy="wait" if params.out_of_band else "refuse", frame_id=self._ids.new("item"))]

    def _response_cancel(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id", "response_id"))
        target = event.identifier("response_id")
        if target is None:
            target = next((r.id for r in self._responses.values() if r.conversation_id is not None),
                          next(iter(self._responses), None))
        if target is None or target not in self._responses:
            raise refuse(CANCEL_NOT_ACTIVE, "no response is in progress" if target is None
                         else f"the response {target!r} is not in progress", "response_id", event_id)
        remember(self._cancels, target, event_id)
        return [Cancel(target)]

    def _image_append(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id", "image_url"))
        return [OfferFrame(parse_image_url(event, "image_url", self._limits, inspect=False))]

    def _audio_append(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        chunk = parse_append(message, event_id, self.audio)
        self._speech.appended(len(chunk.pcm))
        return [chunk]

    def _audio_mark(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        event = Fields(message, "", event_id, ("type", "event_id"))
        refuse_unheard(event, self.audio)
        return [AudioMark("commit" if message["type"] == "input_audio_buffer.commit" else "clear", event_id,
                          respond=False)]

    def _truncate(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        return [parse_truncate(message, event_id)]

    def _output_clear(self, message: dict[str, Any], event_id: str | None) -> list[Intent]:
        Fields(message, "", event_id, ("type", "event_id"))
        self._clearing = any(response.spoken and response.started for response in self._responses.values())
        return [Interrupt()]

    # Server events.

    def encode(self, event: ServerEvent) -> Sequence[Outgoing]:
        if isinstance(event, TokenText):
            response = self._responses.get(event.request_id or "")
            return [] if response is None else [response.delta(self._ids, event.text)]
        if isinstance(event, AudioOut):
            response = self._responses.get(event.request_id or "")
            return [] if response is None or not response.spoken else [response.audio_delta(self._ids, event.pcm)]
        if isinstance(event, ResponseStarted):
            return self._start(event)
        if isinstance(event, ResponseCompleted):
            return self._complete(event)
        if isinstance(event, AudioCommitted):
            previous = self._items[-1] if self._items else None
            self._items.append(event.item_id)
            return self._speech.committed(event, previous)
        transcribed = self._audio_config.transcription is not None
        speech = self._speech.encode(event, transcribed)
        if speech is not None:
            return speech
        if isinstance(event, ErrorReport):
            return self._error(event)
        if isinstance(event, MessageAdded):
            message = event.message
            if message.id in self._items:  # a spoken turn, told of when it was committed
                return []
            after = self._after.pop(message.id or "", None)
            previous = self._insert(message.id or "", after)
            item = self._speech.item(message, transcribed)
            return [self._event(kind, previous_item_id=previous, item=item)
                    for kind in ("conversation.item.added", "conversation.item.done")]
        if isinstance(event, MessageDeleted):
            if event.message_id in self._items:
                self._items.remove(event.message_id)
            return [self._event("conversation.item.deleted", item_id=event.message_id)]
        if isinstance(event, MessageRetrieved):
            return [self._event("conversation.item.retrieved", item=self._speech.item(event.message, transcribed))]
        if isinstance(event, ConfigUpdated):
            self._temperature = event.config.temperature
            return [self._event("session.updated", session=self._session_json())]
        return []  # frames dropped are counted, not told: a live frame is context, not a request

    def _start(self, event: ResponseStarted) -> list[str]:
        """A response starts; one the client did not ask for (server VAD's) is named after its answer."""
        request_id = event.request_id or ""
        if request_id not in self._responses and event.answer_id is not None and request_id:
            self._responses[request_id] = Response(request_id, event.answer_id, None, self._conversation_id,
                                                   self._view.max_output_tokens, None,
                                                   self._audio_config.output_audio)
        response = self._responses.get(request_id)
        if response is None:
            return []
        response.previous_item_id = self._items[-1] if self._items else None
        return response.start(self._ids)

    def _complete(self, event: ResponseCompleted) -> list[str]:
        response = self._responses.pop(event.request_id or "", None)
        if response is None:
            return []
        if event.finish_reason == "cancelled":
            self._cancels.pop(response.id, None)
        self._answer_recorded(response)
        events = response.complete(self._ids, event)
        if self._clearing and response.spoken and event.finish_reason in ("cancelled", "interrupted"):
            self._clearing = False
            events.append(self._event("output_audio_buffer.cleared", response_id=response.id))
        return events

    def _answer_recorded(self, response: Response) -> None:
        if response.conversation_id is not None and response.started:
            self._insert(response.item_id, None)
            if response.spoken:
                self._speech.answered(response.item_id)

    def _insert(self, item_id: str, after: str | None) -> str | None:
        """Place an item in the conversation's order; returns the id of the item before it."""
        if after is None or (after != ROOT and after not in self._items):
            previous = self._items[-1] if self._items else None
            self._items.append(item_id)
            return previous
        index = 0 if after == ROOT else self._items.index(after) + 1
        self._items.insert(index, item_id)
        return None if index == 0 else self._items[index - 1]

    def _error(self, event: ErrorReport) -> list[str]:
        request_id = event.request_id
        if event.code == errors.NOT_FOUND and request_id in self._cancels:
            return [self._error_json(CANCEL_NOT_ACTIVE, event.message, "response_id", self._cancels.pop(request_id))]
        response = self._responses.pop(request_id or "", None)
        if response is not None and (response.started or event.code in ENGINE_FAILURES):
            self._answer_recorded(response)
            return response.fail(self._ids, event.code, event.message)
        event_id = response.event_id if response is not None else request_id
        return [self._error_json(CODES.get(event.code, event.code), event.message, event.field, event_id,
                                 "server_error" if event.code in SERVER_ERRORS else "invalid_request_error")]

    def _error_json(self, code: str, message: str, param: str | None, event_id: str | None,
                    kind: str = "invalid_request_error") -> str:
        text = message.encode("utf-8", "replace").decode("utf-8")  # it may quote a lone surrogate
        return self._event("error", error={"type": kind, "code": code, "message": text, "param": param,
                                           "event_id": event_id})

    def _event(self, kind: str, **fields: Any) -> str:
        return dump({"type": kind, "event_id": self._ids.new("event"), **fields})

    def _session_json(self) -> dict[str, Any]:
        view = self._view
        return {"type": "realtime", "object": "realtime.session", "id": self._session_id, "model": self._model,
                "output_modalities": self._audio_config.modalities(), "audio": self._audio_config.session_json(),
                "instructions": view.instructions,
                "max_output_tokens": view.max_output_tokens, "tools": [], "tool_choice": view.tool_choice,
                "temperature": self._temperature}


PARSERS = {
    "session.update": RealtimeWire._session_update,
    "conversation.item.create": RealtimeWire._item_create,
    "conversation.item.delete": RealtimeWire._item_delete,
    "conversation.item.retrieve": RealtimeWire._item_retrieve,
    "response.create": RealtimeWire._response_create,
    "response.cancel": RealtimeWire._response_cancel,
    "input_image_buffer.append": RealtimeWire._image_append,
    "input_audio_buffer.append": RealtimeWire._audio_append,
    "input_audio_buffer.commit": RealtimeWire._audio_mark,
    "input_audio_buffer.clear": RealtimeWire._audio_mark,
    "conversation.item.truncate": RealtimeWire._truncate,
    "output_audio_buffer.clear": RealtimeWire._output_clear,
}

