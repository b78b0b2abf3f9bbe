"""Overhead of ``unified_map.parallel`` on each local backend against that engine's own best
idiom, and CPU-bound speedup over serial, measured side by side in one run.

Targets (issue 2): ``parallel`` within 1.3x of the native idiom's best time on 100,000 tiny
items, for every local backend; >= 1.8x speedup over serial on 40 CPU-bound items of ~50 ms
with 2 workers.

Warm pools are part of the product: every pool, ours and the native ones, is created and used
once before timing, so the figures are what a script calling ``parallel`` in a loop sees.

    python benchmarks/local_overhead.py [--items N] [--repeat N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import joblib  # noqa: E402
from _common import header, interleaved, load, table  # noqa: E402

import unified_map as um  # noqa: E402
from unified_map.backends import acquire_backend, release_backend  # noqa: E402
from unified_map.backends.base import default_worker_count  # noqa: E402
from unified_map.bench_suite import spin, spin_count  # noqa: E402

OVERHEAD_TARGET = 1.3
SPEEDUP_TARGET = 1.8


def increment(x):
    return x + 1


def tiny_items(n_items: int, repeat: int, n_workers: int) -> None:
    xs = list(range(n_items))
    expected = list(map(increment, xs))
    pool = multiprocessing.get_context("fork").Pool(n_workers)
    processes = concurrent.futures.ProcessPoolExecutor(
        n_workers, mp_context=multiprocessing.get_context("fork")
    )
    threads = concurrent.futures.ThreadPoolExecutor(n_workers)
    thread_pool = multiprocessing.pool.ThreadPool(n_workers)
    joblib_parallel = joblib.Parallel(n_jobs=n_workers)  # batch_size="auto"
    per_worker = -(-n_items // n_workers)
    chunksizes = sorted({1000, 10_000, -(-n_items // (4 * n_workers)), per_worker})

    # Each native idiom: (label, callable) candidates; the best median is the reference.
    natives = {
        "serial": [("builtin map", lambda: list(map(increment, xs)))],
        "threads": [("ThreadPoolExecutor.map", lambda: list(threads.map(increment, xs)))]
        + [
            (f"ThreadPool.map chunksize={c}", lambda c=c: thread_pool.map(increment, xs, c))
            for c in chunksizes
        ],
        "multiprocessing": [("Pool.map default chunks", lambda: pool.map(increment, xs))]
        + [
            (f"Pool.map chunksize={c}", lambda c=c: pool.map(increment, xs, chunksize=c))
            for c in chunksizes
        ],
        "futures": [
            (
                f"ProcessPoolExecutor.map chunksize={c}",
                lambda c=c: list(processes.map(increment, xs, chunksize=c)),
            )
            for c in chunksizes
        ],
        "joblib": [
            (
                "Parallel(n_jobs) auto batching",
                lambda: joblib_parallel(joblib.delayed(increment)(x) for x in xs),
            )
        ],
    }
    print(
        f"1. {n_items:,} tiny items (x + 1), {n_workers} workers; median of {repeat} runs each, "
        "taken in interleaved rounds; every "
        "pool warm (created and used once before timing, ours and the native ones); native "
        "time = its best variant."
    )
    rows = []
    try:
        for name, candidates in natives.items():
            for label, run in candidates:
                assert list(run()) == expected, label  # warm-up and check
            fns = dict(candidates)
            fns["builtin map"] = lambda: list(map(increment, xs))
            ours_fn = lambda n=name: um.parallel(increment, xs, backend=n)  # noqa: E731
            assert ours_fn() == expected  # warm pool
            medians = interleaved({**fns, "ours": ours_fn}, repeat)
            ours, builtin = medians.pop("ours"), medians["builtin map"]
            if name != "serial":
                del medians["builtin map"]
            best_label = min(medians, key=medians.get)
            best = medians[best_label]
            ratio = ours / best
            verdict = "ok" if ratio <= OVERHEAD_TARGET else "MISS"
            rows.append(
                [
                    name,
                    f"{ours * 1e3:.1f}",
                    f"{ours / n_items * 1e6:.2f}",
                    best_label,
                    f"{best * 1e3:.1f}",
                    f"{ratio:.3g}x",
                    f"<= {OVERHEAD_TARGET}x {verdict}",
                    f"{ours / builtin:.1f}x",
                ]
            )
    finally:
        pool.terminate()
        pool.join()
        processes.shutdown()
        threads.shutdown()
        thread_pool.terminate()
    headers = ["backend", "parallel ms", "us/item", "native idiom (best)", "native ms"]
    headers += ["ratio", "target", "vs builtin map"]
    print(table(headers, rows))
    print()


def cpu_bound(n_items: int, seconds: float, repeat: int, n_workers: int) -> None:
    steps = spin_count(seconds)
    items = [steps] * n_items
    expected = list(map(spin, items))
    pool = multiprocessing.get_context("fork").Pool(n_workers)
    processes = concurrent.futures.ProcessPoolExecutor(
        n_workers, mp_context=multiprocessing.get_context("fork")
    )
    natives = {
        "multiprocessing": ("Pool.map", lambda: pool.map(spin, items)),
        "futures": ("ProcessPoolExecutor.map", lambda: list(processes.map(spin, items))),
        "joblib": (
            "joblib Parallel",
            lambda: joblib.Parallel(n_jobs=n_workers)(joblib.delayed(spin)(s) for s in items),
        ),
    }
    names = ["threads", "multiprocessing", "futures", "joblib"]
    try:
        for name in names:
            assert um.parallel(spin, items, backend=name) == expected  # warm pool
        for _, run in natives.values():
            assert list(run()) == expected
        rounds = {"serial": lambda: list(map(spin, items))}
        for name in names:
            rounds[name] = lambda n=name: um.parallel(spin, items, backend=n)
            if name in natives:
                rounds["native " + name] = natives[name][1]
        medians = interleaved(rounds, repeat)
    finally:
        pool.terminate()
        pool.join()
        processes.shutdown()
    serial = medians["serial"]
    print(
        f"2. {n_items} CPU-bound items of ~{seconds * 1e3:.0f} ms ({steps:,} steps of "
        f"sum(range)), {n_workers} workers; median of {repeat} runs in interleaved rounds "
        f"with the serial reference (builtin map, {serial:.3f} s); pools warm. Target >= "
        f"{SPEEDUP_TARGET}x for process backends (threads hold the GIL: no target)."
    )
    rows = []
    for name in names:
        ours = medians[name]
        speedup = serial / ours
        if name == "threads":
            target, native_label, native_speedup = "-", "-", "-"
        else:
            verdict = "ok" if speedup >= SPEEDUP_TARGET else "MISS"
            target = f">= {SPEEDUP_TARGET}x {verdict}"
            native_label = natives[name][0]
            native_speedup = f"{serial / medians['native ' + name]:.2f}x"
        rows.append([name, f"{ours:.3f}", f"{speedup:.2f}x", target, native_label, native_speedup])
    headers = ["backend", "parallel s", "speedup", "target", "native idiom", "its speedup"]
    print(table(headers, rows))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="tiny items (100,000)")
    parser.add_argument("--repeat", type=int, default=25, help="runs per tiny timing (25)")
    parser.add_argument("--cpu-repeat", type=int, default=3, help="runs per CPU timing (3)")
    args = parser.parse_args()
    n_workers = default_worker_count()
    header("benchmarks/local_overhead.py: unified_map.parallel vs each engine's native idiom")
    for name in ["threads", "multiprocessing", "futures"]:
        # start our pools before any native pool forks this process
        release_backend(acquire_backend(name))
    tiny_items(args.items, args.repeat, n_workers)
    cpu_bound(40, 0.05, args.cpu_repeat, n_workers)
    print(f"done{load()}")


if __name__ == "__main__":
    main()
