"""Per-item overhead of ``parallel(..., backend="dask")`` against dask's own idioms.

On a 2-worker cluster started with ``cluster_setup.dask`` on 127.0.0.1, map a tiny function
over 10,000 and 100,000 items four ways, in one run so the ratios are comparable:

- ``unified_map``: ``parallel(inc, xs, backend="dask")`` (automatic chunk size), and with
  ``chunksize=n/8`` (the same chunks as the last idiom, no probing);
- ``one task/item``: ``client.map(inc, xs)``, dask's textbook idiom;
- ``dask.bag``: ``from_sequence(xs, npartitions=p).map(inc)``, best ``p`` of a small sweep;
- ``bytes chunks``: ``client.map`` over 8 chunks, each sent as one pickled ``bytes`` blob,
  the hand-tuned floor.

Targets (issue 3): at 10,000 items >= 100x faster than one task per item, and within 1.5x
of the pickled-bytes chunks. One task per item at 100,000 items would take minutes; it is
measured only with ``--full``. Usage::

    python benchmarks/dask_overhead.py [--repeat 5] [--full]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time

import cloudpickle

import unified_map as um
from cluster_setup import dask

SIZES = (10_000, 100_000)
BAG_PARTITIONS = (2, 4, 8, 16)
N_CHUNKS = 8


def inc(x):
    return x + 1


def run_blob(blob: bytes) -> bytes:
    func, items = pickle.loads(blob)
    return pickle.dumps([func(x) for x in items], protocol=pickle.HIGHEST_PROTOCOL)


def per_item_tasks(client, xs):
    return client.gather(client.map(inc, xs, pure=False))


def bytes_chunks(client, xs):
    size = -(-len(xs) // N_CHUNKS)
    blobs = [
        cloudpickle.dumps((inc, xs[i : i + size]), protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(xs), size)
    ]
    futures = client.map(run_blob, blobs, pure=False)
    return [y for blob in client.gather(futures) for y in pickle.loads(blob)]


def bag(client, xs, partitions):
    import dask.bag

    return dask.bag.from_sequence(xs, npartitions=partitions).map(inc).compute(scheduler=client)


def median_seconds(fn, repeat: int, expected: list) -> float:
    assert fn() == expected  # warm-up, and every idiom must compute the same thing
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--full", action="store_true", help="one task/item at 100,000 too")
    args = parser.parse_args()

    print("dask overhead: tiny function (x + 1), 2 workers x 1 thread on 127.0.0.1")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%F %H:%M')}")
    print(f"median of {args.repeat} runs (one task/item: 1 run); the machine may be shared,")
    print("so compare the ratios within this run, not absolute times across runs\n")

    address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
    try:
        dask.start_worker(address, n_workers=2, threads=1)
        with dask.connect_to_scheduler(address) as connection:
            client = connection.client
            rows = [measure(client, n, args) for n in SIZES]
    finally:
        dask.stop(address)

    headers = [
        "items",
        "unified_map",
        "(chunksize n/8)",
        "one task/item",
        "dask.bag",
        "bytes chunks",
    ]
    lines = [headers]
    for n, um_s, fixed_s, per_item_s, (bag_s, p), bytes_s in rows:
        per_item = "not run" if per_item_s is None else f"{per_item_s:.3f} s"
        lines.append(
            [
                f"{n:,}",
                f"{um_s:.3f} s",
                f"{fixed_s:.3f} s",
                per_item,
                f"{bag_s:.3f} s (p={p})",
                f"{bytes_s:.3f} s",
            ]
        )
    print(format_table(lines))
    print()
    for n, um_s, fixed_s, per_item_s, (bag_s, _), bytes_s in rows:
        parts = []
        if per_item_s is not None:
            parts.append(f"{per_item_s / um_s:,.0f}x faster than one task/item")
        parts.append(
            f"{um_s / bytes_s:.2f}x the bytes chunks ({fixed_s / bytes_s:.2f}x with chunksize n/8)"
        )
        parts.append(f"{bag_s / um_s:.1f}x faster than dask.bag")
        print(f"{n:,} items: " + "; ".join(parts))
    n, um_s, _, per_item_s, _, bytes_s = rows[0]
    speedup, ratio = per_item_s / um_s, um_s / bytes_s
    print(
        f"\ntargets at {n:,} items: >= 100x faster than one task/item: {speedup:,.0f}x "
        f"[{'met' if speedup >= 100 else 'MISSED'}]; within 1.5x of bytes chunks: "
        f"{ratio:.2f}x [{'met' if ratio <= 1.5 else 'MISSED'}]"
    )


def measure(client, n: int, args):
    xs = list(range(n))
    expected = [x + 1 for x in xs]
    um_s = median_seconds(lambda: um.parallel(inc, xs, backend="dask"), args.repeat, expected)
    bytes_s = median_seconds(lambda: bytes_chunks(client, xs), args.repeat, expected)
    fixed_s = median_seconds(
        lambda: um.parallel(inc, xs, backend="dask", chunksize=-(-n // N_CHUNKS)),
        args.repeat,
        expected,
    )
    # tune the partitions with one run each, then time the best like the others
    sweep = {p: median_seconds(lambda p=p: bag(client, xs, p), 1, expected) for p in BAG_PARTITIONS}
    best = min(sweep, key=sweep.get)
    bag_s = median_seconds(lambda: bag(client, xs, best), args.repeat, expected)
    per_item_s = None
    if n <= 10_000 or args.full:
        start = time.perf_counter()
        assert per_item_tasks(client, xs) == expected
        per_item_s = time.perf_counter() - start
    return n, um_s, fixed_s, per_item_s, (bag_s, best), bytes_s


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    )


if __name__ == "__main__":
    main()
