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

import importlib.metadata
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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
    "machine_info",
    "LoadMonitor",
    "busy_summary",
]

#: The note of a row measured on the active cluster connection.
AS_FOUND_NOTE = "active connection, used as found"

#: Distributions whose versions :func:`machine_info` reports when they are installed: the
#: engines, what ships items to workers (cloudpickle) and builds the payload items (numpy).
REPORTED_PACKAGES = ("cloudpickle", "numpy", "joblib", "dask", "distributed", "pyspark", "ray")


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
        by the number of items, and 0 when the backend was at least that fast (it is never
        negative). A backend that could not run is a row with ``error`` set.

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
    serial         1   2.503e-05  1.44e-05  1.37e-05  1.51e-05    1.00x              <0.1
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
                # Faster than a perfect split (noise, a baseline slowed by load) is no
                # overhead at all, not a negative one.
                beyond = max(0.0, row.median_seconds - ideal)
                row.overhead_us_per_item = beyond / self.n_items * 1e6 if self.n_items else 0.0
        return BenchmarkResult(self.name, self.n_items, self.repeat, self.warmup, baseline, rows)


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def machine_info() -> dict:
    """What benchmark figures depend on, read now: date, cores, memory, load average, Python
    and the versions of the installed engines.

    Versions come from the packages' metadata, so no engine is imported to read them; a
    package that is not installed is left out.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``cores`` (:func:`os.cpu_count`), ``memory_bytes``,
        ``load_average`` (1, 5 and 15 minutes; ``None`` where the system has none),
        ``python``, ``platform`` and ``packages`` (name to version: ``unified_map`` and the
        installed ones of :data:`REPORTED_PACKAGES`). JSON-ready.

    Examples
    --------
    >>> info = machine_info()
    >>> info["cores"] >= 1 and info["memory_bytes"] > 0 and "unified_map" in info["packages"]
    True
    """
    import psutil

    from unified_map import __version__

    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        load = None
    packages = {"unified_map": __version__}
    for name in REPORTED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": load,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": packages,
    }


class LoadMonitor:
    """Watch the machine's load while a benchmark runs: were other processes competing?

    A background thread reads the 1-minute load average every ``interval`` seconds, and this
    process's own CPU use (children included: pools, local clusters), smoothed over a minute
    as the kernel smooths the load average so that the two compare. The load average counts
    the benchmark's own workers too; what is left is the load of other processes.

    The machine counts as busy when the load average exceeded the core count, at the start
    or during the run, with at least :attr:`OTHERS_THRESHOLD` of it from other processes: a
    benchmark that alone keeps every core busy is not a busy machine.

    Parameters
    ----------
    interval : float, default 2.0
        Seconds between readings.
    cores : int, optional
        Cores to compare the load with (default :func:`os.cpu_count`).

    Examples
    --------
    >>> with LoadMonitor(interval=0.01, cores=2) as monitor:
    ...     _ = sum(range(10**5))
    >>> summary = monitor.summary()
    >>> sorted(summary)
    ['busy', 'cores', 'load_average_max', 'load_from_others_max', 'warning']
    >>> summary["busy"] == (summary["warning"] is not None)
    True
    """

    #: Load (in processes) from other processes that makes a loaded machine "busy".
    OTHERS_THRESHOLD = 0.5

    def __init__(self, interval: float = 2.0, cores: int | None = None):
        self.interval = interval
        self.cores = cores or os.cpu_count() or 1
        #: ``(load average, this run's own smoothed load)`` per reading, the first at start.
        self.samples: list[tuple[float, float]] = []
        self._own_load = 0.0
        self._cpu_by_pid: dict[int, float] = {}
        self._last: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoadMonitor:
        self._read()
        self._thread = threading.Thread(target=self._watch, name="LoadMonitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return  # no load average on this system: never busy
        now = time.monotonic()
        own_cores = 0.0
        if self._last is not None and now > self._last:
            own_cores = self._own_cpu_seconds() / (now - self._last)
        else:
            self._own_cpu_seconds()  # the first reading only sets the baseline
        if self._last is not None:
            decay = math.exp(-(now - self._last) / 60.0)  # the kernel's 1-minute average
            self._own_load = self._own_load * decay + own_cores * (1 - decay)
        self._last = now
        self.samples.append((load, self._own_load))

    def _own_cpu_seconds(self) -> float:
        """CPU seconds this process tree used since the previous call."""
        import psutil

        used, seen = 0.0, {}
        try:
            me = psutil.Process()
            processes = [me, *me.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:  # ended in between
                continue
            total = times.user + times.system
            seen[process.pid] = total
            used += total - self._cpu_by_pid.get(process.pid, 0.0)
        self._cpu_by_pid = seen
        return max(0.0, used)

    def summary(self) -> dict:
        """The highest load average seen, the most of it from other processes, and whether
        the machine was busy (with the warning to print, else ``None``). JSON-ready."""
        return busy_summary(self.samples, self.cores, self.OTHERS_THRESHOLD)


def busy_summary(
    samples: Sequence[tuple[float, float]], cores: int, others_threshold: float = 0.5
) -> dict:
    """Whether a run whose load readings were ``samples`` ran on a busy machine.

    Parameters
    ----------
    samples : sequence of (float, float)
        ``(1-minute load average, the run's own share of it)`` per reading, first at start.
    cores : int
        The machine's cores.
    others_threshold : float, default 0.5
        Load from other processes that, with the load average above ``cores``, means busy.

    Examples
    --------
    >>> busy_summary([(1.0, 0.0), (2.2, 2.0)], cores=2)["busy"]  # the run's own load
    False
    >>> summary = busy_summary([(1.0, 0.0), (3.5, 1.9)], cores=2)
    >>> summary["busy"], summary["load_average_max"], summary["load_from_others_max"]
    (True, 3.5, 1.6)
    >>> print(summary["warning"])  # doctest: +NORMALIZE_WHITESPACE
    WARNING: the machine was busy: load average up to 3.5 on 2 cores during the run, about
    1.6 of it from other processes. Figures taken under load mislead (parallel backends look
    slower than they are); rerun on an idle machine.
    """
    busy, load_max, others_max = False, None, None
    for load, own in samples:
        others = max(0.0, load - own)
        load_max = load if load_max is None else max(load_max, load)
        others_max = others if others_max is None else max(others_max, others)
        busy = busy or (load > cores and others >= others_threshold)
    warning = None
    if busy:
        warning = (
            f"WARNING: the machine was busy: load average up to {load_max:.1f} on {cores} "
            f"cores during the run, about {others_max:.1f} of it from other processes. "
            "Figures taken under load mislead (parallel backends look slower than they are); "
            "rerun on an idle machine."
        )
    return {
        "cores": cores,
        "load_average_max": None if load_max is None else round(load_max, 2),
        "load_from_others_max": None if others_max is None else round(others_max, 2),
        "busy": busy,
        "warning": warning,
    }
