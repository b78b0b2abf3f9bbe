"""How ``unified_map.parallel`` scales with the number of items (1e2 .. 1e6 tiny items) and with
the number of workers (1 vs 2 on CPU-bound items), every backend side by side in one run.

Pools are warm (each backend is used once before timing), as in a script calling
``parallel`` in a loop. Tiny items show the fixed cost per call (small inputs) and the cost
per item (large inputs); the ratio column is against the builtin ``map`` on the same items.

    python benchmarks/scaling.py [--backends serial,threads,...] [--max-items 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, interleaved, table, timings  # noqa: E402

import unified_map as um  # noqa: E402
from unified_map.backends import close_backend  # noqa: E402
from unified_map.bench_suite import spin, spin_count  # noqa: E402


def increment(x):
    return x + 1


def ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def usable(names: list[str]) -> list[str]:
    """The backends that start here; the others are reported and left out."""
    ok = []
    for name in names:
        try:
            assert um.parallel(increment, range(10), backend=name) == list(range(1, 11))
        except Exception as exc:  # noqa: BLE001 - report any backend that cannot run
            print(f"(left out {name}: {type(exc).__name__}: {str(exc).splitlines()[0]})")
        else:
            ok.append(name)
    return ok


def items_scaling(names: list[str], max_items: int) -> None:
    sizes = [10**k for k in range(2, 7) if 10**k <= max_items]
    print(
        "1. Tiny items (x + 1): milliseconds per call (median of runs), and in brackets the "
        "ratio to the builtin map on the same items, timed in interleaved rounds with it; "
        "pools warm."
    )
    builtin: dict[int, list[float]] = {n: [] for n in sizes}
    rows = []
    for name in names:
        cells = []
        for n in sizes:
            xs = list(range(n))
            um.parallel(increment, xs, backend=name)  # warm, and the same size as timed
            medians = interleaved(
                {
                    "builtin": lambda xs=xs: list(map(increment, xs)),
                    "ours": lambda xs=xs, name=name: um.parallel(increment, xs, backend=name),
                },
                7 if n < 10**6 else 3,
            )
            builtin[n].append(medians["builtin"])
            median = medians["ours"]
            cells.append(f"{median * 1e3:.3g} ({ratio(median / medians['builtin'])})")
        per_item = median / sizes[-1] * 1e6
        rows.append([name, *cells, f"{per_item:.3g}"])
    # the builtin map's row: the median of its timings across every backend's rounds
    reference = [f"{statistics.median(builtin[n]) * 1e3:.3g}" for n in sizes]
    rows.insert(0, ["builtin map", *reference, "-"])
    headers = ["backend", *(f"{n:,} items" for n in sizes), f"us/item at {sizes[-1]:,}"]
    print(table(headers, rows))
    print()


def worker_scaling(names: list[str], n_items: int, seconds: float) -> None:
    steps = spin_count(seconds)
    items = [steps] * n_items
    serial, _ = timings(lambda: list(map(spin, items)), 3)
    print(
        f"2. {n_items} CPU-bound items of ~{seconds * 1e3:.0f} ms, n_workers=1 vs 2: seconds "
        f"(median of 3) and speedup over the builtin map ({serial:.3f} s); pools warm."
    )
    rows = []
    for name in names:
        if name == "serial":
            continue
        cells = []
        for n_workers in (1, 2):
            um.parallel(spin, items[:4], backend=name, n_workers=n_workers)  # warm, resized
            median, _ = timings(
                lambda name=name, w=n_workers: um.parallel(spin, items, backend=name, n_workers=w),
                3,
            )
            cells.append((median, serial / median))
        (one, s1), (two, s2) = cells
        rows.append(
            [name, f"{one:.3f}", f"{s1:.2f}x", f"{two:.3f}", f"{s2:.2f}x", f"{one / two:.2f}x"]
        )
    headers = ["backend", "1 worker s", "speedup", "2 workers s", "speedup", "2 vs 1 worker"]
    print(table(headers, rows))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends",
        default=",".join(name for name, ok in um.available_backends().items() if ok),
        help="comma-separated (default: every installed backend)",
    )
    parser.add_argument("--max-items", type=int, default=10**6)
    args = parser.parse_args()
    header("benchmarks/scaling.py: parallel over 1e2..1e6 tiny items, and 1 vs 2 workers")
    names = usable([n.strip() for n in args.backends.split(",") if n.strip()])
    try:
        items_scaling(names, args.max_items)
        worker_scaling(names, 20, 0.05)
    finally:
        for name in names:
            close_backend(name)


if __name__ == "__main__":
    main()
