"""What the long-run keywords cost when nothing goes wrong, measured side by side in one run.

Targets (issue 11): ``checkpoint=`` under 10% on 1,000 items of 10 ms; ``on_error="return"``
and ``retries`` under 5% on 100,000 tiny items. ``checkpoint=`` on 100,000 tiny items is
reported too (there it costs what hashing, pickling and writing 100,000 rows cost).

    python benchmarks/long_runs.py [--backend multiprocessing] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, interleaved, table  # noqa: E402

import unified_map as um  # noqa: E402

POLICY_TARGET = 1.05
CHECKPOINT_TARGET = 1.10


def increment(x):
    return x + 1


def ten_ms(x):
    time.sleep(0.01)
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="multiprocessing")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    backend = args.backend
    folder = tempfile.mkdtemp(prefix="unified_map-bench-")
    counter = iter(range(10**9))

    def with_checkpoint(func, xs):
        # a fresh file each time: the cost of storing everything, not of reading it back
        path = os.path.join(folder, f"run-{next(counter)}.db")
        return lambda: um.parallel(func, xs, backend=backend, checkpoint=path)

    tiny = range(100_000)
    slow = range(1_000)
    cases = {
        "tiny: plain": lambda: um.parallel(increment, tiny, backend=backend),
        "tiny: on_error='return'": lambda: um.parallel(
            increment, tiny, backend=backend, on_error="return"
        ),
        "tiny: retries=3": lambda: um.parallel(increment, tiny, backend=backend, retries=3),
        "tiny: checkpoint": None,
        "10 ms: plain": lambda: um.parallel(ten_ms, slow, backend=backend),
        "10 ms: checkpoint": None,
    }
    for fn in (cases["tiny: plain"], cases["10 ms: plain"]):
        fn()  # warm pools and remembered costs
    checkpoint_runs = {"tiny: checkpoint": (increment, tiny), "10 ms: checkpoint": (ten_ms, slow)}

    def fresh_checkpoint(key):
        func, xs = checkpoint_runs[key]
        return lambda: with_checkpoint(func, xs)()

    for key in checkpoint_runs:
        cases[key] = fresh_checkpoint(key)
    times = interleaved(cases, args.repeat)

    rows = []
    for key, seconds in times.items():
        base = times["tiny: plain"] if key.startswith("tiny") else times["10 ms: plain"]
        ratio = seconds / base
        target = ""
        if key in ("tiny: on_error='return'", "tiny: retries=3"):
            target = f"< {POLICY_TARGET:.2f} {'ok' if ratio < POLICY_TARGET else 'MISSED'}"
        elif key == "10 ms: checkpoint":
            target = f"< {CHECKPOINT_TARGET:.2f} {'ok' if ratio < CHECKPOINT_TARGET else 'MISSED'}"
        rows.append([key, f"{seconds * 1000:.1f}", f"{ratio:.3f}", target])
    header(f"long-run keywords on backend {backend!r}, median of {args.repeat} interleaved rounds")
    print(table(["case", "ms", "vs plain", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
