"""Overhead of ``parallel(..., backend="spark")`` against Spark's own idiom.

On a standalone master and 2 workers of 1 core started with ``cluster_setup.spark`` on
127.0.0.1, in one run so that the ratios are comparable:

- 100,000 tiny items (``x + 1``): ``parallel(inc, xs)`` against
  ``sc.parallelize(xs, n).map(inc).collect()`` with the best ``n`` of a small sweep;
  target: within 1.3x of it;
- the fixed cost of a map of one item, against ``sc.parallelize([1], 1).map(inc).collect()``;
  target: no worse than Spark's own;
- 40 CPU-bound items of 50 ms: ``parallel`` against a serial loop in the driver (and
  ``sc.parallelize(items, 2).map(f)`` for reference); target: a speedup of at least 1.6x on
  the 2 workers. On a loaded machine no engine gets there: compare with Spark's own.

Timings are medians of interleaved rounds (each candidate once per round), so that load from
elsewhere on a shared machine hits all of them alike. Usage::

    python benchmarks/spark_overhead.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from _common import header, interleaved, table

import unified_map as um
from cluster_setup import spark

N_TINY = 100_000
PARTITIONS = (2, 4, 8)
N_CPU, CPU_SECONDS = 40, 0.05


def inc(x):
    return x + 1


def burn(x):
    """About 50 ms of CPU (a busy loop on the clock of this process's CPU time)."""
    end = time.process_time() + CPU_SECONDS
    while time.process_time() < end:
        pass
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement (median)")
    args = parser.parse_args()
    header("spark overhead: standalone master + 2 workers x 1 core on 127.0.0.1")

    address = spark.start_scheduler("127.0.0.1:0")
    try:
        spark.start_worker(address, n_workers=2, cores=1, memory="1g")
        with spark.connect_to_scheduler(address) as connection:
            rows, verdicts = measure(connection.context, args.repeat)
    finally:
        spark.stop(address)
    print(table(["measurement", "unified_map", "Spark's own", "ratio"], rows))
    print()
    print("\n".join(verdicts))


def measure(sc, repeat: int):
    xs = list(range(N_TINY))
    expected = [x + 1 for x in xs]
    # warm-up (executors, Python workers, the cost per item of inc) and correctness
    assert um.parallel(inc, xs) == expected
    assert sc.parallelize(xs, 2).map(inc).collect() == expected
    sweep = interleaved(
        {n: lambda n=n: sc.parallelize(xs, n).map(inc).collect() for n in PARTITIONS}, 2
    )
    best = min(sweep, key=sweep.get)
    tiny = interleaved(
        {
            "um": lambda: um.parallel(inc, xs),
            "spark": lambda: sc.parallelize(xs, best).map(inc).collect(),
        },
        repeat,
    )
    one = interleaved(
        {
            "um": lambda: um.parallel(inc, [1]),
            "spark": lambda: sc.parallelize([1], 1).map(inc).collect(),
        },
        repeat,
    )
    items = list(range(N_CPU))
    assert um.parallel(burn, items) == items
    cpu = interleaved(
        {
            "um": lambda: um.parallel(burn, items),
            "serial": lambda: list(map(burn, items)),
            "spark": lambda: sc.parallelize(items, 2).map(burn).collect(),
        },
        max(3, repeat // 2),
    )
    rows = [
        [
            f"{N_TINY:,} x (x + 1)",
            f"{tiny['um']:.3f} s",
            f"{tiny['spark']:.3f} s (n={best})",
            f"{tiny['um'] / tiny['spark']:.2f}x",
        ],
        [
            "one item",
            f"{one['um'] * 1000:.0f} ms",
            f"{one['spark'] * 1000:.0f} ms",
            f"{one['um'] / one['spark']:.2f}x",
        ],
        [
            f"{N_CPU} x {CPU_SECONDS * 1000:.0f} ms CPU",
            f"{cpu['um']:.3f} s",
            f"{cpu['serial']:.3f} s (serial)",
            f"{cpu['serial'] / cpu['um']:.2f}x speedup",
        ],
        [
            "  (Spark's own, n=2)",
            "",
            f"{cpu['spark']:.3f} s",
            f"{cpu['serial'] / cpu['spark']:.2f}x speedup",
        ],
    ]
    ratio, fixed, speedup = (
        tiny["um"] / tiny["spark"],
        one["um"] / one["spark"],
        cpu["serial"] / cpu["um"],
    )
    verdicts = [
        f"100,000 tiny items within 1.3x of Spark's tuned idiom: {ratio:.2f}x "
        f"[{'met' if ratio <= 1.3 else 'MISSED'}]",
        f"fixed cost of a one-item map no worse than Spark's own: {fixed:.2f}x "
        f"[{'met' if fixed <= 1.1 else 'MISSED'}] (10% measurement tolerance)",
        f"40 x 50 ms CPU-bound speedup over serial >= 1.6x: {speedup:.2f}x "
        f"[{'met' if speedup >= 1.6 else 'MISSED'}]",
    ]
    return rows, verdicts


if __name__ == "__main__":
    main()
