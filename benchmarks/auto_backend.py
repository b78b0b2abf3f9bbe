"""``backend="auto"`` against the builtin ``map``, the serial backend and the process pool, side
by side in one run, on a small, a large and an in-between map.

Targets (issue 12): 100,000 tiny items within 1.2x of the builtin ``map``; 40 CPU-bound items
of 50 ms at least 1.8x faster than the builtin ``map`` on 2 cores; 1,000 items of 1 ms no
slower than the faster of serial and the process pool by more than 1.2x. Every pool is warm,
and each workload runs once before timing (so ``auto`` has learnt the function's cost, as in a
script's loop: its first call, which has not, is reported too).

    python benchmarks/auto_backend.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, table  # noqa: E402

import unified_map as um  # noqa: E402
from unified_map.bench_suite import spin, spin_count  # noqa: E402


def increment(x):
    return x + 1


def spin_for(seconds: float):
    steps = spin_count(seconds)

    def work(_):
        return spin(steps)

    return work


def first_call_seconds(func, xs) -> float:
    """``auto`` on a function it has never seen (a fresh copy of ``func``'s code)."""
    fresh = type(func)(func.__code__.replace(), func.__globals__, closure=func.__closure__)
    start = time.perf_counter()
    um.parallel(fresh, xs, backend="auto")
    return time.perf_counter() - start


def measure(func, xs, repeat: int) -> dict[str, float]:
    runs = {
        "builtin map": lambda: list(map(func, xs)),
        "serial": lambda: um.parallel(func, xs, backend="serial"),
        "multiprocessing": lambda: um.parallel(func, xs, backend="multiprocessing"),
        "auto": lambda: um.parallel(func, xs, backend="auto"),
    }
    for run in runs.values():
        run()  # warm: pools started, costs learnt
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):  # interleaved rounds: a burst of load hits every variant alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    header("backend='auto' vs the builtin map, serial and the process pool")
    workloads = [
        ("100,000 tiny items (x + 1)", increment, list(range(100_000)), args.repeat),
        ("40 CPU-bound items of 50 ms", spin_for(0.05), list(range(40)), max(3, args.repeat // 2)),
        ("1,000 items of 1 ms", spin_for(0.001), list(range(1000)), max(3, args.repeat // 2)),
    ]
    rows, verdicts = [], []
    for label, func, xs, repeat in workloads:
        first = first_call_seconds(func, xs)
        medians = measure(func, xs, repeat)
        auto, builtin = medians["auto"], medians["builtin map"]
        best_other = min(medians["serial"], medians["multiprocessing"])
        rows.append(
            [label]
            + [f"{medians[name] * 1e3:.1f}" for name in medians]
            + [f"{first * 1e3:.1f}", f"{auto / builtin:.2f}x", f"{auto / best_other:.2f}x"]
        )
        if label.startswith("100,000"):
            verdicts.append(("auto <= 1.2x builtin map on tiny items", auto / builtin <= 1.2))
        elif label.startswith("40"):
            verdicts.append(("auto >= 1.8x faster than map, CPU-bound", builtin / auto >= 1.8))
        else:
            verdicts.append(("auto <= 1.2x the faster of serial/pool", auto / best_other <= 1.2))
    headers = ["workload (median ms)", "map", "serial", "multiprocessing", "auto"]
    headers += ["auto 1st call", "auto/map", "auto/best"]
    print(table(headers, rows))
    print()
    for label, ok in verdicts:
        print(f"{label}: {'ok' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
