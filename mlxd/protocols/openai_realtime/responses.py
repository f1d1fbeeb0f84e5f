"""One response's events, in OpenAI's order: created, the output item and its one part, the deltas, then
the done events with the whole text, and `response.done` with its status and usage.

A response is one assistant message item with one part (indices 0): text, or for a spoken answer audio
whose text is its transcript (`response.output_audio.delta` chunks beside `output_audio_transcript` deltas).
Text deltas are the hot path: their JSON is a prebuilt prefix plus the escaped text.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from mlxd.events import ResponseCompleted

STATUS_BY_FINISH = {"stop": "completed", "length": "incomplete", "cancelled": "cancelled", "interrupted": "cancelled"}
REASON_BY_FINISH = {"length": "max_output_tokens", "cancelled": "client_cancelled", "interrupted": "turn_detected"}


class Ids:
    """Unique ids for this connection's events, responses and items: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def new(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._counter):x}"


def dump(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Response:
    """A response asked for by `response.create`, from the request until `response.done`."""

    id: str
    item_id: str
    event_id: str | None
    conversation_id: str | None
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    spoken: bool = False
    previous_item_id: str | None = None
    started: bool = False
    text: list[str] = field(default_factory=list)
    _delta_prefix: str = ""

    @property
    def modalities(self) -> list[str]:
        return ["audio"] if self.spoken else ["text"]

    def _event(self, ids: Ids, kind: str, **fields: Any) -> str:
        return dump({"type": kind, "event_id": ids.new("event"), **fields})

    def _part(self, ids: Ids, kind: str, **fields: Any) -> str:
        return self._event(ids, kind, response_id=self.id, item_id=self.item_id, output_index=0, content_index=0,
                           **fields)

    def body(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
             details: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": output, "conversation_id": self.conversation_id, "output_modalities": self.modalities,
                "max_output_tokens": self.max_output_tokens, "metadata": self.metadata, "usage": usage}

    def item(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [self._content("".join(self.text), "output_")]
        return {"id": self.item_id, "type": "message", "object": "realtime.item", "status": status,
                "role": "assistant", "content": content}

    def start(self, ids: Ids) -> list[str]:
        self.started = True
        kind = "response.output_audio_transcript.delta" if self.spoken else "response.output_text.delta"
        self._delta_prefix = (f'{{"type":"{kind}","response_id":{json.dumps(self.id)},'
                              f'"item_id":{json.dumps(self.item_id)},"output_index":0,"content_index":0,'
                              '"event_id":"')
        events = [self._event(ids, "response.created", response=self.body("in_progress", [])),
                  self._event(ids, "response.output_item.added", response_id=self.id, output_index=0,
                              item=self.item("in_progress"))]
        if self.conversation_id is not None:
            events.append(self._event(ids, "conversation.item.added", previous_item_id=self.previous_item_id,
                                      item=self.item("in_progress")))
        events.append(self._part(ids, "response.content_part.added", part=self._content("")))
        return events

    def _content(self, text: str, prefix: str = "") -> dict[str, Any]:
        """The response's one part (`prefix` "output_": as an item's content)."""
        if self.spoken:
            return {"type": f"{prefix}audio", "transcript": text}
        return {"type": f"{prefix}text", "text": text}

    def audio_delta(self, ids: Ids, pcm: bytes) -> str:
        return self._part(ids, "response.output_audio.delta", delta=base64.b64encode(pcm).decode("ascii"))

    def delta(self, ids: Ids, text: str) -> str:
        self.text.append(text)
        return f'{self._delta_prefix}{ids.new("event")}","delta":{json.dumps(text, ensure_ascii=False)}}}'

    def finish(self, ids: Ids, status: str, usage: dict[str, Any] | None = None,
               details: dict[str, Any] | None = None) -> list[str]:
        """The done events; a response cancelled before it started has no item to close."""
        if not self.started:
            return [self._event(ids, "response.created", response=self.body("in_progress", [])),
                    self._event(ids, "response.done", response=self.body(status, [], usage, details))]
        text = "".join(self.text)
        item = self.item("completed" if status == "completed" else "incomplete")
        events = ([self._part(ids, "response.output_audio.done"),
                   self._part(ids, "response.output_audio_transcript.done", transcript=text)] if self.spoken
                  else [self._part(ids, "response.output_text.done", text=text)])
        events += [self._part(ids, "response.content_part.done", part=self._content(text)),
                   self._event(ids, "response.output_item.done", response_id=self.id, output_index=0, item=item)]
        if self.conversation_id is not None:
            events.append(self._event(ids, "conversation.item.done", previous_item_id=self.previous_item_id,
                                      item=item))
        events.append(self._event(ids, "response.done", response=self.body(status, [item], usage, details)))
        return events

    def complete(self, ids: Ids, event: ResponseCompleted) -> list[str]:
        status = STATUS_BY_FINISH.get(event.finish_reason, "completed")
        reason = REASON_BY_FINISH.get(event.finish_reason)
        details = {"type": status, "reason": reason} if reason else None
        return self.finish(ids, status, usage(event), details)

    def fail(self, ids: Ids, code: str, message: str) -> list[str]:
        error = {"type": "server_error", "code": code, "message": message}
        return self.finish(ids, "failed", None, {"type": "failed", "error": error})


def usage(event: ResponseCompleted) -> dict[str, Any]:
    """Input tokens are all the prompt's, cached and image ones included, as OpenAI counts them."""
    return {"total_tokens": event.prompt_tokens + event.completion_tokens, "input_tokens": event.prompt_tokens,
            "output_tokens": event.completion_tokens,
            "input_token_details": {"cached_tokens": event.cached_tokens, "image_tokens": event.image_tokens,
                                    "text_tokens": event.prompt_tokens - event.image_tokens, "audio_tokens": 0},
            "output_token_details": {"text_tokens": event.completion_tokens, "audio_tokens": 0}}
