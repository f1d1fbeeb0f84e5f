"""The protocol-neutral session: conversations, frames as context, Respond and barge-in, without an engine.

The queue here is the real WorkQueue; the engine's part (taking a job, ending it) is played by the test, as
the scheduling tests do. What a model answers is proven end to end by each protocol's server tests.
"""

from __future__ import annotations

import asyncio

import pytest

from mlxd import errors
from mlxd.dialogue import ROOT, Dialogue, Message, Part, user_message
from mlxd.engine.prompts import chat_messages, within_budget
from mlxd.events import ErrorReport, MessageAdded, MessageDeleted, ResponseCompleted
from mlxd.intents import AddMessages, DeleteMessage, Interrupt, OfferFrame, Respond, SetInstructions
from mlxd.metrics import Metrics
from mlxd.outbox import Outbox
from mlxd.scheduler import WorkQueue
from mlxd.session import Session
from mlxd.settings import Settings

READY = {"state": "ready", "modalities": ["text", "image"], "model": "tiny", "error": None}


def assistant(text: str, message_id: str | None = None) -> Message:
    return Message("assistant", (Part(text=text),), message_id)


@pytest.fixture
def session():
    loop = asyncio.new_event_loop()
    queue = WorkQueue(max_pending=4)
    yield Session(Settings(), queue, Metrics(), lambda: READY, lambda session_id: None, Outbox(loop))
    loop.close()


def events(session: Session) -> list:
    items = list(session.outbox._items)
    session.outbox._items.clear()
    return items


def test_a_dialogue_inserts_after_an_id_deletes_and_keeps_answers_of_its_generation():
    dialogue = Dialogue()
    dialogue.add([user_message("a", message_id="1"), user_message("c", message_id="3")])
    dialogue.add([user_message("b", message_id="2")], after="1")
    dialogue.add([user_message("first", message_id="0")], after=ROOT)
    assert [m.id for m in dialogue.messages()] == ["0", "1", "2", "3"]
    assert dialogue.delete("2").text == "b"
    with pytest.raises(KeyError):
        dialogue.get("2")
    messages, generation = dialogue.open_turn([user_message("q")])
    assert messages[-1].text == "q"
    dialogue.clear()
    dialogue.record_answer("late", "x", generation)
    assert len(dialogue) == 0, "an answer begun before a reset is not recorded after it"


def test_chat_messages_merge_roles_gather_system_text_and_fall_back_to_a_preamble():
    messages = [Message("system", (Part(text="be brief"),)), user_message("hi"), user_message("there"),
                assistant("hello"), user_message("what is this?", [b"jpeg"])]
    assert chat_messages(messages, "you are mlxd") == [
        {"role": "system", "content": "you are mlxd\n\nbe brief"},
        {"role": "user", "content": "hi\n\nthere"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "what is this?"},
    ]
    with_images = chat_messages(messages, None, system_role=False, with_images=True)
    assert with_images[-1] == {"role": "user", "content": [{"type": "text", "text": "be brief"}, {"type": "image"},
                                                           {"type": "text", "text": "what is this?"}]}


def test_the_budget_drops_whole_exchanges_those_with_images_first_and_keeps_the_question():
    messages = [user_message("one"), assistant("1"), user_message("two", [b"img"]), assistant("2"),
                user_message("three"), assistant("3"), user_message("question")]
    kept = within_budget(messages, lambda kept: len(kept), 5)
    assert [m.text for m in kept] == ["one", "1", "three", "3", "question"]
    assert [m.text for m in within_budget(messages, lambda kept: len(kept), 1)] == ["question"]


def test_respond_commits_a_lone_frame_as_a_message_and_frames_supersede_each_other(session):
    session.handle(OfferFrame(b"frame-1"))
    session.handle(OfferFrame(b"frame-2"))
    assert (session.frames_received, session.frames_dropped) == (2, 1)
    session.handle(Respond("r1", answer_id="a1", frame_id="f1"))
    [added] = events(session)
    assert isinstance(added, MessageAdded) and added.message.images == [b"frame-2"]
    assert [m.id for m in session.dialogue.messages()] == ["f1"]
    job = session.queue.take(timeout=0)
    assert (job.request_id, job.turn, job.dialogue, job.input_type) == ("r1", (), session.dialogue, "image")


def test_a_pending_turn_is_committed_by_respond_with_the_frame_before_its_text(session):
    session.handle(SetInstructions("be brief"))
    session.handle(AddMessages((user_message("look"),), pending=True))
    session.handle(OfferFrame(b"frame"))
    session.handle(Respond("r1"))
    assert events(session) == [] and len(session.dialogue) == 0, "committed when the job starts, not before"
    job = session.queue.take(timeout=0)
    assert [m.images for m in job.turn] == [[b"frame"], []] and job.turn[1].text == "look"


def test_respond_cuts_a_running_answer_waits_for_it_or_is_refused(session):
    session.handle(Respond("r1"))
    running = session.queue.take(timeout=0)
    session.handle(Respond("r2", when_busy="refuse"))
    [refusal] = events(session)
    assert isinstance(refusal, ErrorReport) and refusal.code == errors.ANSWER_IN_PROGRESS
    session.handle(Respond("r3", when_busy="wait"))
    assert not running.cancelled
    session.handle(Respond("r4"))
    assert running.cancelled and running.cancel_reason == "interrupted"
    cut = [(e.request_id, e.finish_reason) for e in events(session) if isinstance(e, ResponseCompleted)]
    assert cut == [("r3", "interrupted")], "a waiting answer is cut too, without starting"


def test_an_out_of_band_response_sees_only_its_input_and_leaves_the_conversation_alone(session):
    session.handle(AddMessages((user_message("in the conversation", message_id="m1"),)))
    session.handle(OfferFrame(b"frame"))
    session.handle(Respond("r1", out_of_band=True, input=(user_message("describe"),), instructions="terse"))
    job = session.queue.take(timeout=0)
    assert job.dialogue is None and job.instructions == "terse"
    assert [m.images or m.text for m in job.turn] == [[b"frame"], "describe"]
    assert [m.id for m in session.dialogue.messages()] == ["m1"]


def test_interrupt_and_unknown_ids(session):
    session.handle(Respond("r1"))
    job = session.queue.take(timeout=0)
    session.handle(Interrupt())
    assert job.cancelled and job.cancel_reason == "interrupted"
    session.handle(DeleteMessage("nope", "d1"))
    session.handle(AddMessages((user_message("x"),), after="nope", request_id="a1"))
    session.handle(AddMessages((user_message("y", message_id="y"),)))
    session.handle(DeleteMessage("y", "d2"))
    codes = [(e.code, e.request_id) if isinstance(e, ErrorReport) else type(e).__name__ for e in events(session)]
    assert codes == [(errors.NOT_FOUND, "d1"), (errors.NOT_FOUND, "a1"), "MessageDeleted"]
    assert not any(isinstance(e, MessageDeleted) for e in events(session))
