"""The caller's CPU per chunk as the cluster grows: 16, 256 and 1,024 worker slots.

A backend whose tasks finish the moment they are submitted leaves only the caller's own work
(cutting chunks, submitting, bookkeeping, ordering) to measure. Before issue 7 every submitted
chunk rescanned every pending future: 47 -> 277 -> 1,166 us per chunk. Target: flat within
1.5x from 16 to 1,024 slots.

    python benchmarks/driver_scaling.py [--chunks N] [--repeat N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, table  # noqa: E402

import unified_map as um  # noqa: E402
from unified_map.backends.base import Backend  # noqa: E402

SLOTS = (16, 256, 1024)
FLATNESS_TARGET = 1.5
#: Seconds from submitting a task to its result: a cluster's round trip, with no compute.
LATENCY = 0.002
#: Seconds between two results at least: the engine's result stream, one at a time.
SPACING = 0.0001


class InstantBackend(Backend):
    """``n_workers`` slots whose tasks take no compute: a thread of the "engine" completes
    each future ``LATENCY`` seconds after it was submitted (a round trip), one result at a
    time, ``SPACING`` apart at least, as results arrive from a real cluster; so many chunks
    are in flight at once and the caller wakes for each result."""

    name = "instant"
    in_process = True

    def __init__(self, n_workers=None):
        super().__init__(n_workers)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._complete, daemon=True).start()

    def _complete(self) -> None:
        while True:
            due, future, fn, args = self._inbox.get()
            time.sleep(max(SPACING, due - time.monotonic()))
            future.set_result(fn(*args))

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        self._inbox.put((time.monotonic() + LATENCY, future, fn, args))
        return future


def caller_cpu_per_chunk(slots: int, n_chunks: int, repeat: int) -> float:
    """Median CPU seconds of the calling thread per chunk, for a map of ``n_chunks``."""
    xs = range(n_chunks)
    runs = []
    for _ in range(repeat):
        # the caller's thread alone, not the completing thread
        start = time.thread_time()
        results = um.parallel(abs, xs, backend="instant", n_workers=slots, chunksize=1)
        runs.append((time.thread_time() - start) / len(xs))
        assert results == list(xs)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8192, help="chunks per map")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    um.register_backend("instant", f"{__name__}:InstantBackend")
    header("Caller CPU per chunk, tasks that finish at once (chunksize=1)")
    figures = {s: caller_cpu_per_chunk(s, args.chunks, args.repeat) for s in SLOTS}
    rows = [
        [f"{slots:,}", f"{args.chunks:,}", f"{seconds * 1e6:.1f}"]
        for slots, seconds in figures.items()
    ]
    print(table(["slots", "chunks", "caller us/chunk"], rows))
    flatness = max(figures.values()) / min(figures.values())
    verdict = "ok" if flatness <= FLATNESS_TARGET else "MISS"
    print(f"\nlargest / smallest: {flatness:.2f}x (target <= {FLATNESS_TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
