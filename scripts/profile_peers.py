"""Where each server spends a token: py-spy over mlxd and mlx_lm.server under the same workload, one at a time.

    python scripts/profile_peers.py --model smollm2-135m --clients 1 --tokens 64 --seconds 20

Each server gets the peers benchmark's text workload (N clients at once, distinct questions under one shared
system prompt, greedy) round after round while `py-spy record --native` samples it. Printed per server: CPU
milliseconds per generated token (user+system of the process, every thread), tokens/s, and the frames that
hold the most samples, by own time and inclusive, with the share of samples in mlxd's own code, in MLX's
evaluation, in building mlx-lm's graph, and in the event loop. py-spy's collapsed stacks stay in the scratch
folder (`--keep`) for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine.blas import use_fast_blas

BLAS = use_fast_blas()

from scripts.peers import SYSTEM, Peer, mlxd_server, round_of
from tests.upstreams import cpu_seconds, mlx_lm_server

# The share of samples whose stack passes through one of these (file path or function name pieces).
KINDS = {
    "mlx eval (mx.eval / async_eval / item / tolist)": re.compile(r"\b(eval|async_eval|item|tolist)\b \("),
    "mlx-lm model graph (models/*.py __call__)": re.compile(r"mlx_lm/models/"),
    "mlx-lm BatchGenerator / generate.py": re.compile(r"mlx_lm/generate\.py"),
    "mlx-lm server.py": re.compile(r"mlx_lm/server\.py"),
    "detokenizer (tokenizer_utils)": re.compile(r"tokenizer_utils\.py"),
    "mlxd's own code": re.compile(r"/mlxd/"),
    "asyncio event loop": re.compile(r"asyncio/"),
    "json": re.compile(r"json/"),
    "idle (wait / select / sleep / lock)": re.compile(r"\b(wait|select|epoll_wait|_worker|sleep|acquire)\b \("),
}


def profile(name: str, target: object, pid: int, clients: int, tokens: int, seconds: float, folder: Path) -> None:
    url = target if isinstance(target, Peer) else target.ws_url()
    asyncio.run(round_of(url, clients, tokens, SYSTEM, False, None))  # warm-up: model, caches
    raw = folder / f"{name.replace(' ', '_')}.txt"
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--native", "--threads",
                            "--format", "raw", "--rate", "100", "--duration", str(int(seconds)), "--pid", str(pid),
                            "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu, threads, started, generated = cpu_seconds(pid), thread_cpu(pid), time.perf_counter(), 0
    while spy.poll() is None:
        generated += asyncio.run(round_of(url, clients, tokens, SYSTEM, False, None))["tokens"]
    spy.wait(60)
    used, elapsed = cpu_seconds(pid) - cpu, time.perf_counter() - started
    print(f"\n[{name}] {generated} tokens in {elapsed:.1f} s: {generated / elapsed:.1f} tok/s, "
          f"CPU {1000 * used / max(1, generated):.2f} ms/token ({used:.1f} CPU s); by thread (ms/token):")
    after, named = thread_cpu(pid), python_threads(raw)
    by_name: collections.Counter[str] = collections.Counter()
    for tid, (comm, seconds) in after.items():
        by_name[named.get(tid, f"{comm} (no Python frames: MLX's or BLAS's workers)")] += \
            seconds - threads.get(tid, (comm, 0.0))[1]
    for comm, seconds in by_name.most_common(8):
        print(f"    {1000 * seconds / max(1, generated):7.3f}  {comm}")
    summarise(raw)


def python_threads(raw: Path) -> dict[int, str]:
    """Thread id -> Python thread name, as py-spy's stacks name them ("thread (TID): NAME")."""
    found = re.findall(r"thread \((\d+)\): ([^;]+)", raw.read_text())
    return {int(tid): name for tid, name in found}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread's name and user+system CPU seconds (the names tell the event loop, the engine and BLAS's
    and MLX's workers apart)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            threads[int(task.name)] = comm, cpu_seconds(pid, int(task.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return threads


def summarise(raw: Path, top: int = 18) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        for kind, pattern in KINDS.items():
            if pattern.search(stack):
                kinds[kind] += n
    print(f"  {total} samples; share of samples whose stack passes through:")
    for kind in KINDS:
        print(f"    {100 * kinds[kind] / max(1, total):5.1f}%  {kind}")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"  top frames, {title} samples:")
        for frame, n in counter.most_common(top):
            print(f"    {100 * n / max(1, total):5.1f}%  {frame[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--only", choices=("mlxd", "mlx_lm.server"), help="profile one server only")
    parser.add_argument("--keep", type=Path, help="folder to keep logs and py-spy's stacks in")
    args = parser.parse_args()
    from mlxd.engine.model_choice import resolve
    from mlxd.engine.models import local_path

    folder = args.keep or Path(tempfile.mkdtemp(prefix="mlxd-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()}; BLAS: {BLAS}; stacks in {folder}")
    if args.only != "mlx_lm.server":
        server = mlxd_server(args.model, folder, "mlxd")
        try:
            profile("mlxd", server, server.process.pid, args.clients, args.tokens, args.seconds, folder)
        finally:
            server.stop()
    if args.only != "mlxd":
        env = {"LD_PRELOAD": str(BLAS)} if BLAS else {}
        peer = Peer("mlx_lm.server", mlx_lm_server(local_path(resolve(args.model)), folder, env=env), {})
        try:
            peer.upstream.wait_healthy(timeout=600)
            profile("mlx_lm.server", peer, peer.upstream.process.pid, args.clients, args.tokens, args.seconds,
                    folder)
        finally:
            peer.stop()
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
