"""The WorkQueue's scheduling rules, with plain jobs and no engine."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mlxd.dialogue import user_message
from mlxd.generation import GenerationConfig
from mlxd.scheduler import Job, QueueFull, WorkQueue


def job(session: str, name: str, frame: bool = False) -> Job:
    return Job(session, name, "image" if frame else "text", frame, (user_message("prompt"),), None, 8,
               GenerationConfig(), emit=lambda event: None)


def names(queue: WorkQueue, count: int) -> list[str]:
    """Take and finish `count` jobs, one at a time."""
    taken = []
    for _ in range(count):
        job = queue.take(timeout=0)
        queue.done(job)
        taken.append(job.request_id)
    return taken


def test_requests_run_in_arrival_order_within_a_session():
    queue = WorkQueue(max_pending=8)
    for name in ("a1", "a2", "a3"):
        queue.put_request(job("a", name))
    assert names(queue, 3) == ["a1", "a2", "a3"]


def test_sessions_are_served_round_robin():
    queue = WorkQueue(max_pending=8)
    for name in ("a1", "a2", "a3"):
        queue.put_request(job("a", name))
    queue.put_request(job("b", "b1"))
    queue.put_request(job("b", "b2"))
    assert names(queue, 5) == ["a1", "b1", "a2", "b2", "a3"]


def test_a_newcomer_goes_before_a_busy_session():
    queue = WorkQueue(max_pending=8)
    for name in ("a1", "a2", "a3"):
        queue.put_request(job("a", name))
    assert names(queue, 1) == ["a1"]
    queue.put_request(job("b", "b1"))
    assert names(queue, 2) == ["b1", "a2"]


def test_frame_streamer_cannot_starve_a_question():
    queue = WorkQueue(max_pending=8)
    queue.put_frame(job("cam", "f0", frame=True))
    assert names(queue, 1) == ["f0"]
    queue.put_frame(job("cam", "f1", frame=True))
    queue.put_request(job("b", "q"))
    queue.put_frame(job("cam", "f2", frame=True))
    assert names(queue, 2) == ["q", "f2"]


def test_a_session_runs_one_job_at_a_time_while_others_proceed():
    queue = WorkQueue(max_pending=8)
    for name in ("a1", "a2"):
        queue.put_request(job("a", name))
    queue.put_request(job("b", "b1"))
    first = queue.take(timeout=0)
    assert queue.take(timeout=0).request_id == "b1"
    assert queue.take(timeout=0) is None, "a2 waits until a1 is done"
    queue.done(first)
    assert queue.take(timeout=0).request_id == "a2"


def test_latest_frame_wins():
    queue = WorkQueue(max_pending=8)
    first, second = job("a", "f1", frame=True), job("a", "f2", frame=True)
    assert queue.put_frame(first) is None
    assert queue.put_frame(second) is first
    assert queue.depths() == (0, 1)
    assert names(queue, 1) == ["f2"]


def test_frames_and_requests_keep_arrival_order_within_a_session():
    queue = WorkQueue(max_pending=8)
    queue.put_request(job("a", "q1"))
    queue.put_frame(job("a", "f1", frame=True))
    queue.put_request(job("a", "q2"))
    assert names(queue, 3) == ["q1", "f1", "q2"]


def test_the_backlog_is_bounded():
    queue = WorkQueue(max_pending=2)
    queue.put_request(job("a", "1"))
    queue.put_request(job("a", "2"))
    with pytest.raises(QueueFull):
        queue.put_request(job("a", "3"))
    queue.put_request(job("b", "other sessions are unaffected"))


def test_remove_and_forget_take_back_waiting_work():
    queue = WorkQueue(max_pending=8)
    kept, removed, frame = job("a", "1"), job("a", "2"), job("a", "f", frame=True)
    for item in (kept, removed):
        queue.put_request(item)
    queue.put_frame(frame)
    assert queue.remove("a", removed) == [removed]
    assert queue.remove("a", removed) == []
    assert set(queue.forget("a")) == {kept, frame}
    assert queue.take(timeout=0) is None


def test_take_blocks_until_work_or_close():
    queue = WorkQueue(max_pending=8)
    taken = []
    worker = threading.Thread(target=lambda: taken.append(queue.take(timeout=10)))
    worker.start()
    queue.put_request(job("a", "late"))
    worker.join(timeout=10)
    assert [j.request_id for j in taken] == ["late"]
    queue.put_request(job("a", "never started"))
    assert [j.request_id for j in queue.close()] == ["never started"]
    assert queue.take(timeout=10) is None


def test_an_event_loop_awaits_work_put_from_other_threads_and_sees_the_close():
    queue = WorkQueue(max_pending=8)

    async def consume() -> list[str | None]:
        taken = []
        while (next_job := await asyncio.wait_for(queue.take_async(), timeout=10)) is not None:
            taken.append(next_job.request_id)
            threading.Timer(0.01, queue.done, (next_job,)).start()  # the lane frees later, from another thread
        return taken

    def produce() -> None:
        for name in ("a1", "a2"):
            queue.put_request(job("a", name))
        queue.put_frame(job("b", "b1", frame=True))
        threading.Timer(0.2, queue.close).start()

    threading.Timer(0.05, produce).start()
    assert asyncio.run(consume()) == ["a1", "b1", "a2"]
