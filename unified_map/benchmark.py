"""Run one workload on several backends and compare them: :func:`benchmark`, its
:class:`BenchmarkResult` table, and the built-in suite behind ``unified-map bench``.

Every backend is measured the same way: its start-up (a fresh pool, a local cluster) apart from
the map, then ``warmup`` untimed maps, then ``repeat`` timed maps with the pool warm, as a
script calling :func:`~unified_map.parallel` in a loop sees it. Every run's results are compared
with the builtin ``map``; a backend that cannot run becomes a row that says why.
"""

from __future__ import annotations

import cmath
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unified_map.backends import (
    available_backends,
    backend_class,
    close_backend,
    discard_backend,
    get_backend,
)
from unified_map.errors import ResultMismatchError, UnknownBackendError
from unified_map.mapping import parallel

__all__ = [
    "benchmark",
    "BenchmarkResult",
    "BenchmarkRow",
    "ResultMismatchError",
    "Workload",
    "builtin_suite",
    "plot_results",
]

PLOT_INSTALL_HINT = "pip install unified_map[plot]"


@dataclass
class BenchmarkRow:
    """One backend's figures for one workload (all times in seconds).

    ``error`` is ``None`` for a backend that ran; otherwise it says why the backend could not
    run and the timing fields are ``None``.
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

        Needs matplotlib (``pip install unified_map[plot]``); see :func:`plot_results`.
        """
        return plot_results([self], path)

    def __str__(self) -> str:
        return _format_table(self)

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
    _check_counts(repeat, warmup)
    names = default_backends() if backends is None else list(backends)
    _check_backend_names(names)
    run = _Run(func, iterables, repeat, warmup, n_workers)
    rows = [run.measure(name) for name in names]
    return run.result(rows)


def default_backends() -> list[str]:
    """The backends :func:`benchmark` compares when none are named.

    Examples
    --------
    >>> "serial" in default_backends()
    True
    """
    connection = _active_connection()
    if connection is not None:
        return [connection.backend_name]
    return [name for name, installed in available_backends().items() if installed]


def _check_backend_names(names: Iterable[str]) -> None:
    """Raise :class:`~unified_map.UnknownBackendError` if any of ``names`` is not registered.

    Only the names are checked: a registered backend whose engine is not installed passes.

    Examples
    --------
    >>> _check_backend_names(["serial", "threads"])
    >>> _check_backend_names(["serial", "thread"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    unified_map.errors.UnknownBackendError: unknown backend 'thread'; valid backends are: ...
    """
    known = available_backends()
    unknown = []
    for name in names:
        try:
            registered = name in known
        except TypeError:  # unhashable
            registered = False
        if not registered:
            unknown.append(name)
    if unknown:
        valid = ", ".join(repr(name) for name in sorted(known))
        which = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise UnknownBackendError(f"unknown backend{plural} {which}; valid backends are: {valid}")


def _active_connection():
    import cluster_setup  # imports no engine

    return cluster_setup.active_connection()


def _check_counts(repeat: int, warmup: int) -> None:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


class _Run:
    """One workload, prepared once (input read, reference computed) and measured per backend."""

    def __init__(self, func, iterables, repeat, warmup, n_workers, name=None):
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}: {func!r}")
        if not iterables:
            raise TypeError("benchmark() needs at least one iterable, like map()")
        self.func, self.repeat, self.warmup, self.n_workers = func, repeat, warmup, n_workers
        self.args = [list(iterable) for iterable in iterables]
        self.name = name or getattr(func, "__name__", None) or type(func).__name__
        start = time.perf_counter()
        self.expected = list(map(func, *self.args))
        self.reference_seconds = time.perf_counter() - start
        self.n_items = len(self.expected)

    def measure(self, name: str, on_run: Callable[[], None] | None = None) -> BenchmarkRow:
        """Start ``name``, time its maps, close it; a failure becomes the row's ``error``."""
        connection = _active_connection()
        as_found = connection is not None and connection.backend_name == name
        backend = None
        try:
            if not as_found:
                _close_warm(name)
            start = time.perf_counter()
            backend = get_backend(name, self.n_workers)
            parallel(abs, [0], backend=name, n_workers=self.n_workers)
            startup = time.perf_counter() - start
            times = []
            for i in range(self.warmup + self.repeat):
                start = time.perf_counter()
                results = parallel(self.func, *self.args, backend=name, n_workers=self.n_workers)
                elapsed = time.perf_counter() - start
                self._check(name, results)
                if i >= self.warmup:
                    times.append(elapsed)
                if on_run is not None:
                    on_run()
        except (ResultMismatchError, KeyboardInterrupt):
            if backend is not None and not as_found:
                discard_backend(backend, abort=True)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a backend becomes its row
            if backend is not None and not as_found:
                discard_backend(backend, abort=True)
            return BenchmarkRow(name, error=_describe(exc))
        if not as_found:
            discard_backend(backend)
        note = "active connection, used as found" if as_found else None
        return BenchmarkRow(
            name,
            n_workers=backend.n_workers,
            startup_seconds=startup,
            median_seconds=statistics.median(times),
            min_seconds=min(times),
            max_seconds=max(times),
            note=note,
            times=times,
        )

    def _check(self, name: str, results: list) -> None:
        if len(results) != len(self.expected):
            raise ResultMismatchError(
                f"backend {name!r} returned {len(results)} results for {self.n_items} items"
            )
        for index, (got, want) in enumerate(zip(results, self.expected, strict=True)):
            if not _equal(got, want):
                raise ResultMismatchError(
                    f"backend {name!r} differs from the builtin map at item {index}: "
                    f"got {_short(got)}, expected {_short(want)}"
                )

    def result(self, rows: list[BenchmarkRow]) -> BenchmarkResult:
        """Fill in speedup and overhead against the baseline and build the result."""
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


def _close_warm(name: str) -> None:
    """Close a warm instance of ``name`` left by earlier maps, so that start-up is real."""
    backend_class(name)  # fail here, with the registry's message, if it cannot be imported
    close_backend(name)


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _equal(got, want) -> bool:
    """``got == want``, also for numpy arrays (elementwise ``==`` has no truth value), NaN
    (equal to itself here: serial and parallel NaNs are the same result; real and complex)
    and containers (lists, tuples, dicts, sets and frozensets, NaNs inside included)."""
    if got is want:
        return True
    if isinstance(want, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(map(_equal, got, want))
    if isinstance(want, (set, frozenset)):
        return type(got) is type(want) and _sets_equal(got, want)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_equal(got[k], want[k]) for k in want)
        )
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, complex) and cmath.isnan(want):
        return (
            isinstance(got, complex) and _equal(got.real, want.real) and _equal(got.imag, want.imag)
        )
    if hasattr(want, "__array__") and hasattr(want, "dtype"):
        import numpy  # only reached when results are arrays, so numpy is there

        try:
            return bool(numpy.array_equal(got, want, equal_nan=True))
        except TypeError:  # equal_nan is not defined for non-numeric dtypes
            return bool(numpy.array_equal(got, want))
    if hasattr(want, "equals") and callable(want.equals):  # pandas objects
        return bool(want.equals(got))
    try:
        return bool(got == want)
    except (ValueError, TypeError):
        return False


def _sets_equal(got, want) -> bool:
    """Set equality where an element with no equal by ``==`` (a NaN, a tuple holding one) may
    still be matched, one to one, with an element :func:`_equal` to it."""
    if len(got) != len(want):
        return False
    try:
        if got == want:
            return True
        missing = [w for w in want if w not in got]
        extra = [g for g in got if g not in want]
    except (ValueError, TypeError):
        return False
    if len(missing) != len(extra):
        return False
    for w in missing:
        match = next((i for i, g in enumerate(extra) if _equal(g, w)), None)
        if match is None:
            return False
        del extra[match]
    return True


_COLUMNS = [
    ("backend", "<"),
    ("workers", ">"),
    ("start-up s", ">"),
    ("median s", ">"),
    ("min s", ">"),
    ("max s", ">"),
    ("speedup", ">"),
    ("overhead us/item", ">"),
]


def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _cells(row: BenchmarkRow) -> list[str]:
    return [
        row.backend,
        str(row.n_workers),
        _seconds(row.startup_seconds),
        _seconds(row.median_seconds),
        _seconds(row.min_seconds),
        _seconds(row.max_seconds),
        "-" if row.speedup is None else f"{row.speedup:.2f}x",
        f"{row.overhead_us_per_item:,.1f}",
    ]


def _format_table(result: BenchmarkResult) -> str:
    runs = "1 run" if result.repeat == 1 else f"median of {result.repeat} runs"
    title = (
        f"{result.name}: {result.n_items:,} items, {runs} after {result.warmup} warm-up; "
        f"speedup over {result.baseline}"
    )
    body = [_cells(r) for r in result.rows if r.ok]
    headers = [name for name, _ in _COLUMNS]
    widths = [max(len(c) for c in column) for column in zip(headers, *body, strict=True)]
    widths[0] = max([widths[0], *(len(r.backend) for r in result.rows)])

    def line(cells):
        return "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(cells, _COLUMNS, widths, strict=True)
        ).rstrip()

    lines = [title, line(headers), *(line(cells) for cells in body)]
    lines += [f"{r.backend:<{widths[0]}}  failed: {r.error}" for r in result.rows if not r.ok]
    lines += [f"({r.backend}: {r.note})" for r in result.rows if r.note]
    return "\n".join(lines)


def plot_results(results: Sequence[BenchmarkResult], path: str | Path) -> Path:
    """Save one horizontal bar chart per result: median map time (with min-max whiskers) and
    start-up time of each backend, on a log scale.

    Parameters
    ----------
    results : sequence of BenchmarkResult
        One panel each.
    path : str or Path
        Where to save; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ImportError
        matplotlib is not installed; the message names ``pip install unified_map[plot]``.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib: {PLOT_INSTALL_HINT}") from exc

    results = list(results)
    heights = [max(1, sum(r.ok for r in result.rows)) for result in results]
    figure = Figure(figsize=(8, 1.2 + 0.55 * sum(heights) + 0.9 * len(results)))
    axes = figure.subplots(len(results), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, result in zip(axes, results, strict=True):
        rows = [r for r in result.rows if r.ok][::-1]  # fastest on top
        positions = range(len(rows))
        medians = [r.median_seconds for r in rows]
        whiskers = [
            [r.median_seconds - r.min_seconds for r in rows],
            [r.max_seconds - r.median_seconds for r in rows],
        ]
        ax.barh([p + 0.2 for p in positions], medians, 0.4, xerr=whiskers, label="map (median)")
        ax.barh(
            [p - 0.2 for p in positions],
            [max(r.startup_seconds, 1e-6) for r in rows],
            0.4,
            label="start-up",
            color="tab:gray",
        )
        ax.set_yticks(list(positions), [r.backend for r in rows])
        ax.set_xscale("log")
        ax.set_title(f"{result.name} ({result.n_items:,} items)", fontsize=10, loc="left")
        failed = [r.backend for r in result.rows if not r.ok]
        if failed:
            ax.text(
                0.99,
                0.02,
                "failed: " + ", ".join(failed),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="tab:red",
            )
    axes[-1].set_xlabel("seconds (log scale)")
    # Above the first panel, right of its title: never over a bar.
    axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=8, frameon=False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


# --- the built-in suite run by ``unified-map bench`` -------------------------------------------


@dataclass
class Workload:
    """One entry of the built-in suite: a name, what it shows, and how to build its input."""

    name: str
    purpose: str
    func: Callable
    make_items: Callable[[int], list]
    default_items: int


def spin(n: int) -> int:
    """CPU-bound work holding the GIL: a fixed amount of computation (not a fixed wall time,
    which threads would appear to parallelise).

    Examples
    --------
    >>> spin(4)
    6
    """
    return sum(range(n))


def increment(x):
    """The tiny item: ``x + 1``.

    Examples
    --------
    >>> increment(1)
    2
    """
    return x + 1


def touch_payload(payload):
    """Return a new payload of the same size (so the transfer goes both ways).

    Examples
    --------
    >>> touch_payload(b"abc")
    b'cba'
    """
    if isinstance(payload, bytes):
        return payload[::-1]
    return payload + 1


#: Seconds of CPU per item in the CPU-bound workload, and the mean of the uneven one.
CPU_ITEM_SECONDS = 0.05
UNEVEN_MEAN_SECONDS = 0.025
PAYLOAD_BYTES = 10 * 2**20


def spin_count(seconds: float) -> int:
    """How many :func:`spin` steps take about ``seconds`` on this machine (measured now)."""
    n = 200_000
    while True:
        start = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return max(1, int(n * seconds / elapsed))
        n *= 4


def _payloads(n: int) -> list:
    try:
        import numpy
    except ImportError:
        return [bytes([i % 256]) * PAYLOAD_BYTES for i in range(n)]
    return [numpy.full(PAYLOAD_BYTES // 8, i, dtype=numpy.float64) for i in range(n)]


def builtin_suite() -> list[Workload]:
    """The workloads of ``unified-map bench``, in the order they run.

    Examples
    --------
    >>> [w.name for w in builtin_suite()]
    ['tiny', 'cpu-bound', 'payload', 'uneven']
    """

    def cpu_items(n):
        return [spin_count(CPU_ITEM_SECONDS)] * n

    def uneven_items(n):
        # Exponential durations (fixed seed): a few long items among many short ones.
        steps_per_second = spin_count(1.0)
        rng = random.Random(0)
        return [
            max(1, int(steps_per_second * min(rng.expovariate(1 / UNEVEN_MEAN_SECONDS), 0.2)))
            for _ in range(n)
        ]

    return [
        Workload("tiny", "per-item overhead: x + 1", increment, lambda n: list(range(n)), 20_000),
        Workload(
            "cpu-bound",
            f"speedup toward the core count: {CPU_ITEM_SECONDS * 1e3:.0f} ms of CPU per item",
            spin,
            cpu_items,
            40,
        ),
        Workload(
            "payload",
            f"transfer cost: {PAYLOAD_BYTES // 2**20} MB arrays out and back",
            touch_payload,
            _payloads,
            16,
        ),
        Workload(
            "uneven",
            f"load balance: CPU time per item exponential, mean {UNEVEN_MEAN_SECONDS * 1e3:.0f} ms",
            spin,
            uneven_items,
            40,
        ),
    ]
