"""Helpers shared by the benchmark scripts: timing, and printing aligned tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time


def timings(fn, repeat: int) -> tuple[float, float]:
    """Run ``fn()`` ``repeat`` times; return (median, min) seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def interleaved(candidates: dict, repeat: int) -> dict:
    """Time several callables in rounds (each once per round), so that a burst of load from
    elsewhere on the machine hits all of them alike; return {key: median seconds}."""
    times = {key: [] for key in candidates}
    for _ in range(repeat):
        for key, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells):
        first, *rest = cells
        parts = [f"{first:<{widths[0]}}"]
        parts += [f"{c:>{w}}" for c, w in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line([str(c) for c in r]) for r in rows)])


def load() -> str:
    """The 1-minute load average: above ~0.5 on an idle 2-core machine, something else ran."""
    try:
        return f", load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return ""


def machine() -> str:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return (
        f"Python {platform.python_version()} on {platform.system()}, {cores} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def header(title: str) -> None:
    print(title)
    print(machine() + load())
    print("command: " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    print()
