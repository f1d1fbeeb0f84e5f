"""Neutral messages as a chat template wants them, and a conversation cut to its token budget.

Templates differ in what they accept: some want user and assistant turns to alternate, some refuse a
system turn. So adjacent messages of one role are merged, every system text (the instructions first) goes
into one system turn, and where the template refuses that turn it becomes a preamble to the last question.
Images become markers in their message's content, in order; the pixels travel separately.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlxd.dialogue import Message

T = TypeVar("T")
Content = str | list[dict[str, Any]]


def system_text(messages: Sequence[Message], instructions: str | None) -> str | None:
    texts = [instructions] if instructions else []
    texts += [message.text for message in messages if message.role == "system" and message.text]
    return "\n\n".join(texts) if texts else None


def _content(message: Message, with_images: bool) -> Content:
    if not with_images or not message.images:
        return message.text
    return [{"type": "image"} if part.image is not None else {"type": "text", "text": part.text}
            for part in message.parts]


def chat_messages(messages: Sequence[Message], instructions: str | None, system_role: bool = True,
                  with_images: bool = False) -> list[dict[str, Any]]:
    """Chat-template messages: one system turn (or a preamble to the last user turn), then the others with
    adjacent messages of one role merged."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        content = _content(message, with_images)
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] = _joined(turns[-1]["content"], content)
        else:
            turns.append({"role": message.role, "content": content})
    system = system_text(messages, instructions)
    if system is None:
        return turns
    if system_role:
        return [{"role": "system", "content": system}, *turns]
    last_user = max((i for i, turn in enumerate(turns) if turn["role"] == "user"), default=None)
    if last_user is None:
        return [{"role": "user", "content": system}, *turns]
    turns[last_user] = {**turns[last_user], "content": _joined(system, turns[last_user]["content"])}
    return turns


def _as_parts(content: Content) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _joined(first: Content, second: Content) -> Content:
    if isinstance(first, str) and isinstance(second, str):
        return "\n\n".join(text for text in (first, second) if text)
    return [*_as_parts(first), *_as_parts(second)]


def render(apply_template: Callable[[list[dict[str, Any]]], T], messages: Sequence[Message],
           instructions: str | None, with_images: bool = False) -> T:
    """The chat template applied with the system text as a system turn, or as a preamble where the template
    refuses a system turn."""
    try:
        return apply_template(chat_messages(messages, instructions, True, with_images))
    except Exception:
        if system_text(messages, instructions) is None:
            raise
        return apply_template(chat_messages(messages, instructions, False, with_images))


def within_budget(messages: Sequence[Message], count: Callable[[list[Message]], int], budget: int) -> list[Message]:
    """Drop the oldest exchanges, those with images first, until the prompt fits the budget. An exchange is a
    user message and what follows it up to the next one; the last one, the question, always stays."""
    kept = list(messages)
    while count(kept) > budget:
        starts = [i for i, message in enumerate(kept) if message.role == "user"]
        if len(starts) < 2:
            return kept
        exchanges = list(itertools.pairwise(starts))
        start, end = next(((s, e) for s, e in exchanges if any(m.images for m in kept[s:e])), exchanges[0])
        leading = [i for i in range(start) if kept[i].role == "assistant"] if start == starts[0] else []
        kept = [m for i, m in enumerate(kept) if not (start <= i < end or i in leading)]
    return kept


def images_of(messages: Sequence[Message]) -> list[str | bytes]:
    """Every image of a prompt, in order: those the chat messages carry (system turns carry text only)."""
    return [image for message in messages if message.role != "system" for image in message.images]
