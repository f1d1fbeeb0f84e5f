"""The Outbox between the engine thread and a connection's writer: merged tokens, one wakeup, a bound."""

from __future__ import annotations

import asyncio
import threading

from mlxd.events import ErrorReport, FrameDropped, TokenText
from mlxd.outbox import Outbox


def test_tokens_of_one_response_merge_while_the_writer_is_busy():
    async def scenario():
        outbox = Outbox(asyncio.get_running_loop(), limit=3)
        for text in ("The", " capital", " is"):
            outbox.put(TokenText("a", text))
        outbox.put(FrameDropped("f", "superseded"))
        outbox.put(TokenText("b", " Paris"))
        outbox.put(TokenText("b", "."))
        return await asyncio.wait_for(outbox.take(), 5), outbox.overflowed

    events, overflowed = asyncio.run(scenario())
    assert events == [TokenText("a", "The capital is"), FrameDropped("f", "superseded"), TokenText("b", " Paris.")]
    assert not overflowed


def test_puts_from_another_thread_wake_the_loop():
    async def scenario():
        outbox = Outbox(asyncio.get_running_loop())
        thread = threading.Thread(target=lambda: [outbox.put(TokenText("a", str(i))) for i in range(1000)])
        thread.start()
        received = ""
        while len(received) < sum(len(str(i)) for i in range(1000)):
            received += "".join(event.text for event in await asyncio.wait_for(outbox.take(), 5))
        thread.join()
        return received

    assert asyncio.run(scenario()) == "".join(str(i) for i in range(1000))


def test_a_client_that_does_not_read_overflows_the_bound_and_nothing_more_is_kept():
    async def scenario():
        outbox = Outbox(asyncio.get_running_loop(), limit=2)
        for i in range(5):
            outbox.put(ErrorReport("queue_full", "full", str(i)))
        outbox.put(TokenText("a", "x"))
        return outbox.overflowed, await asyncio.wait_for(outbox.take(), 5)

    overflowed, events = asyncio.run(scenario())
    assert overflowed
    assert [event.request_id for event in events] == ["0", "1"]
