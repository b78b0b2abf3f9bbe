"""``unified_map.imap`` memory on a long generator: peak RSS growth while 10 million items
stream through each local backend, against the builtin ``map`` (flat) and a list of the same
items (what materialising the input would cost), measured side by side in one run.

Peak RSS is the kernel's high-water mark (Linux ``VmHWM``, reset before each measurement) of
this process and its pool workers. Pools are warm before measuring, so their start-up memory
is not counted as growth.

    python benchmarks/imap_memory.py [--items 10000000] [--backends serial,threads,...]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, table  # noqa: E402

import unified_map as um  # noqa: E402
from unified_map.backends import close_backend  # noqa: E402

LOCAL = ["serial", "threads", "multiprocessing", "futures", "joblib"]


def increment(x):
    return x + 1


def tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def high_water_mark(process: psutil.Process) -> int:
    """Peak RSS in bytes since the last reset (Linux ``VmHWM``)."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


class PeakRSS:
    """Peak RSS growth of this process and its workers while the block runs.

    On Linux the kernel's own high-water mark is reset on entry (``5 > /proc/PID/clear_refs``)
    and read on exit, so no peak is missed. Elsewhere a thread samples RSS every 10 ms, which
    can miss short peaks.
    """

    def __init__(self, interval: float = 0.01):
        self.interval, self.growth = interval, 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.processes = tree()
        self.start = {p.pid: p.memory_info().rss for p in self.processes}
        try:
            for process in self.processes:
                with open(f"/proc/{process.pid}/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
            self.exact = True
        except OSError:
            self.exact = False
            self.peak = sum(self.start.values())
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.processes))

    def __exit__(self, *exc):
        if self.exact:
            self.growth = sum(
                high_water_mark(p) - self.start[p.pid] for p in self.processes if p.is_running()
            )
        else:
            self._stop.set()
            self._thread.join()
            self.growth = self.peak - sum(self.start.values())

    @property
    def growth_mb(self) -> float:
        return self.growth / 2**20


def measure(label, consume) -> list[str]:
    start = time.perf_counter()
    with PeakRSS() as rss:
        total = consume()
    elapsed = time.perf_counter() - start
    return [label, f"{rss.growth_mb:,.1f}", f"{elapsed:.1f}", f"{total:,}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--backends", default=",".join(LOCAL))
    args = parser.parse_args()
    n = args.items
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    header("benchmarks/imap_memory.py: peak RSS growth of imap over a long generator")
    print(
        f"sum(imap(x + 1, generator of {n:,} ints)); peak RSS growth of this process and its "
        "workers (kernel high-water mark, reset before each row); pools warm."
    )

    def generator():
        return (i for i in range(n))

    rows = [measure("list of the items (for scale)", lambda: len(list(generator())))]
    rows.append(measure("builtin map (reference)", lambda: sum(map(increment, generator()))))
    for name in names:
        try:
            um.parallel(increment, range(1000), backend=name)  # warm the pool
            rows.append(
                measure(
                    f"imap {name}",
                    lambda name=name: sum(um.imap(increment, generator(), backend=name)),
                )
            )
        except Exception as exc:  # noqa: BLE001 - report a backend that cannot run
            rows.append([f"imap {name}", f"failed: {type(exc).__name__}: {exc}", "", ""])
        finally:
            try:
                close_backend(name)
            except Exception:  # noqa: BLE001 - it never started
                pass
    print(table(["what", "peak RSS growth MB", "seconds", "result"], rows))


if __name__ == "__main__":
    main()
