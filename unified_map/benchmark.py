"""Measuring backends: :func:`benchmark` times one workload on several backends, checks every
result against the builtin ``map``, and returns a :class:`BenchmarkResult`.

Every backend is measured the same way: its start-up (a fresh pool, a local cluster) apart from
the map, then ``warmup`` untimed maps, then ``repeat`` timed maps with the pool warm, as a
script calling :func:`~unified_map.parallel` in a loop sees it. A backend that cannot run
becomes a row that says why. :class:`Measurement` is the same, one backend at a time (what
``unified-map bench`` drives, with a progress bar); the table and the chart are drawn by
:mod:`unified_map.report`, the built-in workloads live in :mod:`unified_map.bench_suite`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unified_map._cluster import cluster_setup
from unified_map.backends import (
    acquire_backend,
    available_backends,
    backend_class,
    close_backend,
    release_backend,
)
from unified_map.checking import check_backend_names, check_counts, check_results
from unified_map.errors import ResultMismatchError
from unified_map.mapping import parallel
from unified_map.report import format_result, plot_results

__all__ = [
    "benchmark",
    "BenchmarkResult",
    "BenchmarkRow",
    "Measurement",
    "ResultMismatchError",
    "default_backends",
]

#: The note of a row measured on the active cluster connection.
AS_FOUND_NOTE = "active connection, used as found"


@dataclass
class BenchmarkRow:
    """One backend's figures for one workload (all times in seconds).

    ``error`` is ``None`` for a backend that ran; otherwise it says why the backend could not
    run and the timing fields are ``None``.

    Examples
    --------
    >>> BenchmarkRow("ghost", error="BackendNotInstalledError: ...").ok
    False
    """

    backend: str
    n_workers: int | None = None
    startup_seconds: float | None = None
    median_seconds: float | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    speedup: float | None = None
    overhead_us_per_item: float | None = None
    error: str | None = None
    note: str | None = None
    times: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the backend ran and was timed."""
        return self.error is None


@dataclass
class BenchmarkResult:
    """The rows of one benchmark; prints as a table, fastest backend first.

    Attributes
    ----------
    name : str
        What was measured (the function's name, or a suite workload's name).
    n_items : int
        Items per map.
    repeat, warmup : int
        Timed and untimed runs per backend.
    baseline : str
        What ``speedup`` is relative to: the ``serial`` backend's median when it ran, else one
        run of the builtin ``map``.
    rows : list of BenchmarkRow
        Fastest first; backends that failed last.
    """

    name: str
    n_items: int
    repeat: int
    warmup: int
    baseline: str
    rows: list[BenchmarkRow]

    def __post_init__(self):
        self.rows = sorted(self.rows, key=lambda r: (not r.ok, r.median_seconds if r.ok else 0.0))

    def to_dicts(self) -> list[dict]:
        """The rows as plain dicts (for ``json`` or ``pandas.DataFrame``), fastest first.

        Each dict also names the workload and its number of items, so that rows of several
        results can be put in one table.

        Examples
        --------
        >>> result = benchmark(abs, [-1, -2], backends=["serial"], repeat=1, warmup=0)
        >>> row = result.to_dicts()[0]
        >>> row["backend"], row["workload"], row["n_items"], row["error"]
        ('serial', 'abs', 2, None)
        """
        return [{"workload": self.name, "n_items": self.n_items, **asdict(r)} for r in self.rows]

    def plot(self, path: str | Path) -> Path:
        """Save a bar chart of the map and start-up times to ``path`` (PNG, SVG, PDF...).

        Needs matplotlib (``pip install unified_map[plot]``); see
        :func:`unified_map.report.plot_results`.
        """
        return plot_results([self], path)

    def __str__(self) -> str:
        return format_result(self)

    def __repr__(self) -> str:
        ran = [r.backend for r in self.rows if r.ok]
        fastest = f", fastest {ran[0]!r}" if ran else ""
        return f"<BenchmarkResult {self.name!r}: {len(self.rows)} backends{fastest}>"


def benchmark(
    func: Callable,
    *iterables: Iterable,
    backends: Sequence[str] | None = None,
    repeat: int = 3,
    warmup: int = 1,
    n_workers: int | None = None,
) -> BenchmarkResult:
    """Time ``parallel(func, *iterables)`` on several backends and compare them.

    For each backend: any warm pool of that backend is closed, then its start-up is timed
    (creating the backend plus a first one-item map), then ``warmup`` untimed maps run, then
    ``repeat`` timed maps with the pool warm. The backend is closed afterwards, so that idle
    pools do not compete with the next backend. When a cluster connection is active
    (:func:`cluster_setup.active_connection`), its backend is used as it is: never restarted
    nor closed, and its start-up is the time to reach it.

    Parameters
    ----------
    func : callable
        The function to map, as for :func:`~unified_map.parallel`.
    *iterables : iterable
        Its input; read once into lists, since every run maps the same items.
    backends : sequence of str, optional
        Names to compare. ``None`` means the active connection's backend when one is active,
        else every installed backend (:func:`~unified_map.available_backends`).
    repeat : int, default 3
        Timed maps per backend; the table shows their median, min and max.
    warmup : int, default 1
        Untimed maps per backend before the timed ones.
    n_workers : int, optional
        Size of local pools (default: every available core).

    Returns
    -------
    BenchmarkResult
        Prints as a table, fastest first. Speedup is relative to the ``serial`` backend
        (or the builtin ``map`` when ``serial`` is not compared); overhead per item is the
        wall time beyond a perfect split of that baseline over the backend's workers, divided
        by the number of items. A backend that could not run is a row with ``error`` set.

    Raises
    ------
    UnknownBackendError
        A name in ``backends`` is not registered at all (a typo); raised before anything
        runs, and the message lists the valid names. A registered backend that cannot run
        (not installed, fails to start) is a row with ``error`` set instead.
    ResultMismatchError
        A backend's results differ from ``list(map(func, *iterables))``.

    Examples
    --------
    >>> import unified_map as um
    >>> result = um.benchmark(str.upper, "abc", backends=["serial", "threads"], repeat=2)
    >>> sorted(row["backend"] for row in result.to_dicts())
    ['serial', 'threads']
    >>> print(result)  # doctest: +SKIP
    upper: 3 items, median of 2 runs after 1 warm-up; speedup over the serial backend
    backend  workers  start-up s  median s     min s     max s  speedup  overhead us/item
    serial         1   2.503e-05  1.44e-05  1.37e-05  1.51e-05    1.00x               0.0
    threads        2   0.0002131  7.28e-05  6.93e-05  7.62e-05    0.20x              21.9
    """
    check_counts(repeat, warmup)
    names = default_backends() if backends is None else list(backends)
    check_backend_names(names)
    measurement = Measurement(func, *iterables, repeat=repeat, warmup=warmup, n_workers=n_workers)
    return measurement.result([measurement.measure(name) for name in names])


def default_backends() -> list[str]:
    """The backends :func:`benchmark` compares when none are named.

    Examples
    --------
    >>> "serial" in default_backends()
    True
    """
    connection = cluster_setup.active_connection()
    if connection is not None:
        return [connection.backend_name]
    return [name for name, installed in available_backends().items() if installed]


class Measurement:
    """One workload, prepared once and measured on one backend at a time.

    Preparing reads the input into lists and runs the builtin ``map`` once, for the reference
    results and the baseline time. :func:`benchmark` is ``measure`` for each backend, then
    ``result``; a caller that reports progress between backends (``unified-map bench``) calls
    them itself.

    Parameters
    ----------
    func, *iterables, repeat, warmup, n_workers
        As for :func:`benchmark`.
    name : str, optional
        The workload's name in the table (default: the function's name).

    Examples
    --------
    >>> measurement = Measurement(abs, [-1, -2], repeat=1, warmup=0)
    >>> rows = [measurement.measure("serial"), measurement.measure("threads")]
    >>> [row.ok for row in rows], measurement.result(rows).baseline
    ([True, True], 'the serial backend')
    """

    def __init__(
        self,
        func: Callable,
        *iterables: Iterable,
        repeat: int = 3,
        warmup: int = 1,
        n_workers: int | None = None,
        name: str | None = None,
    ):
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}: {func!r}")
        if not iterables:
            raise TypeError("benchmark() needs at least one iterable, like map()")
        check_counts(repeat, warmup)
        self.func, self.repeat, self.warmup, self.n_workers = func, repeat, warmup, n_workers
        self.args = [list(iterable) for iterable in iterables]
        self.name = name or getattr(func, "__name__", None) or type(func).__name__
        start = time.perf_counter()
        self.expected = list(map(func, *self.args))
        self.reference_seconds = time.perf_counter() - start
        self.n_items = len(self.expected)

    def measure(self, backend: str, on_run: Callable[[], None] | None = None) -> BenchmarkRow:
        """Start ``backend`` afresh, time its maps and close it; return its row.

        The backend of the active cluster connection is used as found: neither restarted nor
        closed. ``on_run`` is called after each map (warm-up ones included). A failure to
        import, start or run the backend becomes the row's ``error``.

        Raises
        ------
        ResultMismatchError
            The backend's results differ from the builtin ``map``'s.
        """
        connection = cluster_setup.active_connection()
        as_found = connection is not None and connection.backend_name == backend
        instance = None
        try:
            if not as_found:
                backend_class(backend)  # fail here, with the registry's message
                close_backend(backend)  # a warm pool left by earlier maps: time a real start
            start = time.perf_counter()
            instance = acquire_backend(backend, self.n_workers)
            parallel(abs, [0], backend=backend, n_workers=self.n_workers)
            startup = time.perf_counter() - start
            times = self._timed_runs(backend, on_run)
            n_workers = instance.n_workers
        except (ResultMismatchError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a backend becomes its row
            return BenchmarkRow(backend, error=_describe(exc))
        finally:
            if instance is not None:
                release_backend(instance)
            if not as_found:  # idle pools must not compete with the next backend measured
                close_backend(backend)
        return BenchmarkRow(
            backend,
            n_workers=n_workers,
            startup_seconds=startup,
            median_seconds=statistics.median(times),
            min_seconds=min(times),
            max_seconds=max(times),
            note=AS_FOUND_NOTE if as_found else None,
            times=times,
        )

    def _timed_runs(self, backend: str, on_run) -> list[float]:
        times = []
        for i in range(self.warmup + self.repeat):
            start = time.perf_counter()
            results = parallel(self.func, *self.args, backend=backend, n_workers=self.n_workers)
            elapsed = time.perf_counter() - start
            check_results(backend, results, self.expected)
            if i >= self.warmup:
                times.append(elapsed)
            if on_run is not None:
                on_run()
        return times

    def result(self, rows: list[BenchmarkRow]) -> BenchmarkResult:
        """The :class:`BenchmarkResult` of ``rows``, speedup and overhead filled in."""
        serial = next((r for r in rows if r.backend == "serial" and r.ok), None)
        if serial is not None:
            baseline_seconds, baseline = serial.median_seconds, "the serial backend"
        else:
            baseline_seconds, baseline = self.reference_seconds, "one run of the builtin map"
        for row in rows:
            if row.ok:
                row.speedup = baseline_seconds / row.median_seconds if row.median_seconds else None
                ideal = baseline_seconds / (row.n_workers or 1)
                row.overhead_us_per_item = (
                    (row.median_seconds - ideal) / self.n_items * 1e6 if self.n_items else 0.0
                )
        return BenchmarkResult(self.name, self.n_items, self.repeat, self.warmup, baseline, rows)


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
