"""The loop lag monitor (mlxd/server/loop_lag.py): a stall of the loop itself is its own lag; a wait for a
CPU that another process has is lag, but not the loop's own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from mlxd.metrics import LOOP_LAG_BUCKETS
from mlxd.server.loop_lag import SCHEDSTAT, RunQueueClock, watch_loop_lag

INTERVAL = 0.02
linux_schedstat = pytest.mark.skipif(not os.path.exists(SCHEDSTAT), reason="needs Linux's per-thread schedstat")


def histograms() -> tuple[Histogram, Histogram]:
    registry = CollectorRegistry()
    return (Histogram("lag", "", buckets=LOOP_LAG_BUCKETS, registry=registry),
            Histogram("own", "", buckets=LOOP_LAG_BUCKETS, registry=registry))


def total(histogram: Histogram, suffix: str = "_sum") -> float:
    return next(s.value for s in histogram.collect()[0].samples if s.name.endswith(suffix))


def over(histogram: Histogram, bound: float) -> float:
    samples = histogram.collect()[0].samples
    below = next(s.value for s in samples if s.name.endswith("_bucket") and float(s.labels["le"]) == bound)
    return total(histogram, "_count") - below


async def watch_for(seconds: float, lag: Histogram, own: Histogram, stall: float = 0.0) -> None:
    """Run the monitor for `seconds`; with `stall`, hold the loop's thread on the CPU that long, over and over."""
    watcher = asyncio.create_task(watch_loop_lag(lag, own, INTERVAL))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(INTERVAL * 1.7)
        spin_until = time.thread_time() + stall
        while time.thread_time() < spin_until:
            pass
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)


def test_a_stall_of_the_loop_itself_is_its_own_lag() -> None:
    lag, own = histograms()
    asyncio.run(watch_for(1.5, lag, own, stall=0.06))
    assert over(own, 0.05) >= 3, "the loop spent 60 ms of CPU at a time, and its own lag does not show it"
    assert total(own) <= total(lag) + 1e-9


@linux_schedstat
def test_the_run_queue_clock_counts_waits_for_a_cpu() -> None:
    clock = RunQueueClock()
    first = clock.read()
    assert first is not None and first >= 0
    clock.close()
    assert clock.read() is None


@linux_schedstat
def test_waiting_for_a_cpu_another_process_holds_is_not_the_loops_own_lag() -> None:
    """The loop's thread at nice 19 on one CPU with a busy process at nice 0: the kernel keeps it waiting."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    spin = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    burner = subprocess.Popen([sys.executable, "-c", spin])
    lag, own = histograms()

    def starved_loop() -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        asyncio.run(watch_for(2.0, lag, own))

    try:
        time.sleep(0.2)  # the burner is spinning
        thread = threading.Thread(target=starved_loop)
        thread.start()
        thread.join(30)
    finally:
        burner.kill()
        burner.wait(10)
    assert total(lag) > 0.1, "the starved loop should have woken late"
    assert total(own) < 0.5 * total(lag), (total(own), total(lag))
