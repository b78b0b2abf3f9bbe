"""How benchmark results are shown: the aligned text table and the bar chart.

:class:`~unified_map.benchmark.BenchmarkResult` prints through :func:`format_result` and
saves its chart through :func:`plot_results`; ``unified-map bench`` uses both. The table is
laid out by the same formatter as ``cluster_setup``'s status report, so every table the
project prints looks alike. matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unified_map._cluster import cluster_setup

if TYPE_CHECKING:  # benchmark.py imports this module: no import back at run time
    from unified_map.benchmark import BenchmarkResult, BenchmarkRow

__all__ = ["format_result", "plot_results", "require_matplotlib", "PLOT_INSTALL_HINT"]

#: How to get what :func:`plot_results` needs.
PLOT_INSTALL_HINT = "pip install unified_map[plot]"

_HEADERS = (
    "backend",
    "workers",
    "start-up s",
    "median s",
    "min s",
    "max s",
    "speedup",
    "overhead us/item",
)
_RIGHT_ALIGNED = set(range(1, len(_HEADERS)))  # every column but the backend's name


def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _cells(row: BenchmarkRow) -> tuple[str, ...]:
    return (
        row.backend,
        str(row.n_workers),
        _seconds(row.startup_seconds),
        _seconds(row.median_seconds),
        _seconds(row.min_seconds),
        _seconds(row.max_seconds),
        "-" if row.speedup is None else f"{row.speedup:.2f}x",
        f"{row.overhead_us_per_item:,.1f}",
    )


def format_result(result: BenchmarkResult) -> str:
    """The text table of ``result``: a title line, then one line per backend, fastest first.

    Backends that failed follow, each with its error; then a note per backend that has one
    (such as an active cluster connection used as found).

    Parameters
    ----------
    result : BenchmarkResult
        What :func:`~unified_map.benchmark.benchmark` returned.

    Returns
    -------
    str
        Lines joined with ``"\\n"``, no trailing newline; ``str(result)`` is the same text.

    Examples
    --------
    >>> from unified_map.benchmark import BenchmarkResult, BenchmarkRow
    >>> rows = [BenchmarkRow("serial", 1, 1e-4, 0.002, 0.002, 0.002, 1.0, 0.0),
    ...         BenchmarkRow("ghost", error="BackendNotInstalledError: pip install ghost")]
    >>> print(format_result(BenchmarkResult("abs", 10, 1, 0, "the serial backend", rows)))
    abs: 10 items, 1 run after 0 warm-up; speedup over the serial backend
    backend  workers  start-up s  median s  min s  max s  speedup  overhead us/item
    serial         1      0.0001     0.002  0.002  0.002    1.00x               0.0
    ghost    failed: BackendNotInstalledError: pip install ghost
    """
    runs = "1 run" if result.repeat == 1 else f"median of {result.repeat} runs"
    title = (
        f"{result.name}: {result.n_items:,} items, {runs} after {result.warmup} warm-up; "
        f"speedup over {result.baseline}"
    )
    # The name column is as wide as every backend's name, failed ones included, so that
    # their "failed:" lines start where the figures do.
    name_width = max(len(_HEADERS[0]), *(len(r.backend) for r in result.rows))
    headers = (_HEADERS[0].ljust(name_width), *_HEADERS[1:])
    rows = [headers, *(_cells(r) for r in result.rows if r.ok)]
    table = cluster_setup.status.format_table(rows, _RIGHT_ALIGNED)
    failed = [f"{r.backend:<{name_width}}  failed: {r.error}" for r in result.rows if not r.ok]
    notes = [f"({r.backend}: {r.note})" for r in result.rows if r.note]
    return "\n".join([title, *table, *failed, *notes])


def require_matplotlib() -> None:
    """Raise ImportError naming :data:`PLOT_INSTALL_HINT` unless matplotlib can be imported.

    ``unified-map bench --plot`` calls it before measuring anything, so that a missing
    matplotlib is reported at once rather than after minutes of work.

    Raises
    ------
    ImportError
        matplotlib is not installed.

    Examples
    --------
    >>> require_matplotlib()  # matplotlib is installed: nothing happens
    """
    try:
        import matplotlib.figure  # noqa: F401 - what plot_results draws with
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib: {PLOT_INSTALL_HINT}") from exc


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

    Examples
    --------
    >>> import tempfile, unified_map as um
    >>> result = um.benchmark(abs, [-1, -2], backends=["serial"], repeat=1, warmup=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_results([result], Path(folder, "bench.png")).stat().st_size > 0
    True
    """
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

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
