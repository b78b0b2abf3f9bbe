"""Overhead of ``parallel(..., backend="ray")`` against Ray's own idioms.

On the ``"ray"`` backend's local instance (``ray.init`` with 2 CPUs on 127.0.0.1, started by
the first map), in one run so that the ratios are comparable:

- 100,000 tiny items (``x + 1``): ``parallel(inc, xs, backend="ray")`` against one
  ``ray.remote`` task per item (timed on 5,000 items and scaled: at about 0.6 ms per task
  100,000 would take a minute), ``ray.util.multiprocessing.Pool.map`` with the best chunksize
  of a small sweep, and ``ray.remote`` over 8 chunks passed as lists; targets: >= 20x faster
  than one task per item, within 1.3x of the better of the two chunked idioms;
- 20 payloads of 10 MB (numpy arrays, returned as they came): ``parallel`` against
  ``Pool.map(chunksize=1)``; target: no slower than 1.3x. ``Pool.map`` hands ``func``
  read-only views of the object store and returns read-only views that nobody reads here;
  ``parallel`` gives ``func`` writeable arrays (as a process pool does) and returns writeable
  ones (as the builtin ``map`` does), which costs one 10 MB copy on each side. So the same
  ``Pool.map`` made to deliver that (``func`` called on a copy, results copied) is timed too,
  and made to return writeable results only (read-only inputs, writeable results), and
  ``ray.remote`` with one task per array, Ray's plainest idiom. These rounds are noisy on
  2 cores (single rounds of either vary 2x), hence three times as many of them.

The pool's actors are made with ``num_cpus=0`` so that they and the backend's tasks can be
timed in interleaved rounds (each candidate once per round: load from elsewhere on a shared
machine hits all of them alike); they are still 2 processes, one per core. Usage::

    python benchmarks/ray_overhead.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy
from _common import header, interleaved, table

import unified_map as um

N_TINY = 100_000
N_PER_ITEM = 5_000
CHUNKSIZES = (1_000, 12_500, 50_000)
N_CHUNKS = 8
N_PAYLOADS, PAYLOAD_BYTES = 20, 10 * 2**20


def inc(x):
    return x + 1


def identity(x):
    return x


def inc_list(items):
    return [x + 1 for x in items]


def identity_of_a_copy(x):
    return identity(x.copy())  # what parallel hands func: a writeable array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement (median)")
    args = parser.parse_args()
    header("ray overhead: the backend's local instance, 2 CPUs on 127.0.0.1")
    started = time.perf_counter()
    assert um.parallel(inc, [1, 2], backend="ray") == [2, 3]  # starts the local instance
    print(f"local instance started and first map done in {time.perf_counter() - started:.1f} s\n")

    import ray
    from ray.util.multiprocessing import Pool

    pool = Pool(processes=2, ray_remote_args={"num_cpus": 0})
    try:
        rows, verdicts = measure(ray, pool, args.repeat)
    finally:
        pool.terminate()
    print(table(["measurement", "seconds", "µs per item", "unified_map is"], rows))
    print()
    print("\n".join(verdicts))


def measure(ray, pool, repeat: int):
    xs = list(range(N_TINY))
    expected = [x + 1 for x in xs]
    remote_inc = ray.remote(inc)
    remote_inc_list = ray.remote(inc_list)
    size = -(-N_TINY // N_CHUNKS)

    def eight_chunks():
        refs = [remote_inc_list.remote(xs[i : i + size]) for i in range(0, N_TINY, size)]
        return [y for part in ray.get(refs) for y in part]

    def per_item():
        return ray.get([remote_inc.remote(x) for x in xs[:N_PER_ITEM]])

    # warm-up and correctness: every idiom computes the same thing
    assert um.parallel(inc, xs, backend="ray") == expected
    assert eight_chunks() == expected
    assert per_item() == expected[:N_PER_ITEM]
    for chunksize in CHUNKSIZES:
        assert pool.map(inc, xs, chunksize=chunksize) == expected
    sweep = interleaved({c: lambda c=c: pool.map(inc, xs, chunksize=c) for c in CHUNKSIZES}, 2)
    best = min(sweep, key=sweep.get)
    tiny = interleaved(
        {
            "um": lambda: um.parallel(inc, xs, backend="ray"),
            "pool": lambda: pool.map(inc, xs, chunksize=best),
            "chunks": eight_chunks,
        },
        repeat,
    )
    per_item_s = interleaved({"per item": per_item}, 1)["per item"] * N_TINY / N_PER_ITEM

    payloads = [numpy.full(PAYLOAD_BYTES // 8, i, dtype=numpy.float64) for i in range(N_PAYLOADS)]
    out = um.parallel(identity, payloads, backend="ray")
    assert all((a == b).all() for a, b in zip(out, payloads, strict=True))
    assert all(a.flags.writeable for a in out)
    assert len(pool.map(identity, payloads, chunksize=1)) == N_PAYLOADS
    remote_identity = ray.remote(identity)

    def pool_writeable():
        return [y.copy() for y in pool.map(identity_of_a_copy, payloads, chunksize=1)]

    def per_array():
        return ray.get([remote_identity.remote(x) for x in payloads])

    assert all(y.flags.writeable for y in pool_writeable())
    assert len(per_array()) == N_PAYLOADS
    big = interleaved(
        {
            "um": lambda: um.parallel(identity, payloads, backend="ray"),
            "pool": lambda: pool.map(identity, payloads, chunksize=1),
            "pool writeable": pool_writeable,
            "pool results copied": lambda: [
                y.copy() for y in pool.map(identity, payloads, chunksize=1)
            ],
            "per array": per_array,
        },
        3 * repeat,
    )

    def row(label, seconds, n, versus=None):
        ratio = "" if versus is None else versus
        return [label, f"{seconds:.3f}", f"{seconds / n * 1e6:.2f}", ratio]

    chunked = min(tiny["pool"], tiny["chunks"])
    rows = [
        row(f"{N_TINY:,} x (x + 1): parallel(..., 'ray')", tiny["um"], N_TINY),
        row(
            f"  one ray.remote task per item (scaled from {N_PER_ITEM:,})",
            per_item_s,
            N_TINY,
            f"{per_item_s / tiny['um']:,.0f}x faster",
        ),
        row(
            f"  Pool.map, chunksize={best:,} (best of {', '.join(f'{c:,}' for c in CHUNKSIZES)})",
            tiny["pool"],
            N_TINY,
            f"{tiny['um'] / tiny['pool']:.2f}x its time",
        ),
        row(
            f"  ray.remote over {N_CHUNKS} chunks as lists",
            tiny["chunks"],
            N_TINY,
            f"{tiny['um'] / tiny['chunks']:.2f}x its time",
        ),
        row(f"{N_PAYLOADS} x 10 MB arrays: parallel(..., 'ray')", big["um"], N_PAYLOADS),
        row(
            "  Pool.map, chunksize=1",
            big["pool"],
            N_PAYLOADS,
            f"{big['um'] / big['pool']:.2f}x its time",
        ),
        row(
            "  Pool.map, results copied (writeable results only)",
            big["pool results copied"],
            N_PAYLOADS,
            f"{big['um'] / big['pool results copied']:.2f}x its time",
        ),
        row(
            "  Pool.map, func on a copy, results copied (writeable both sides)",
            big["pool writeable"],
            N_PAYLOADS,
            f"{big['um'] / big['pool writeable']:.2f}x its time",
        ),
        row(
            "  one ray.remote task per array (read-only both sides)",
            big["per array"],
            N_PAYLOADS,
            f"{big['um'] / big['per array']:.2f}x its time",
        ),
    ]
    faster, within, payload = (
        per_item_s / tiny["um"],
        tiny["um"] / chunked,
        big["um"] / big["pool"],
    )
    verdicts = [
        f"100,000 tiny items >= 20x faster than one task per item: {faster:,.0f}x "
        f"[{'met' if faster >= 20 else 'MISSED'}]",
        f"100,000 tiny items within 1.3x of the best chunked idiom: {within:.2f}x "
        f"[{'met' if within <= 1.3 else 'MISSED'}]",
        f"10 MB payloads no slower than 1.3x Pool.map: {payload:.2f}x "
        f"[{'met' if payload <= 1.3 else 'MISSED'}]",
        f"  what writeable results alone cost Ray's own Pool.map: "
        f"{big['pool results copied'] / big['pool']:.2f}x its read-only time",
        f"  against Pool.map delivering what parallel delivers (writeable both sides): "
        f"{big['um'] / big['pool writeable']:.2f}x "
        f"[{'met' if big['um'] <= 1.3 * big['pool writeable'] else 'MISSED'}]",
    ]
    return rows, verdicts


if __name__ == "__main__":
    main()
