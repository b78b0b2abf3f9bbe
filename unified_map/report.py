"""How benchmark results are shown: the aligned text table, what its columns mean, the
machine they were measured on, the Markdown summary and the bar chart.

:class:`~unified_map.benchmark.BenchmarkResult` prints through :func:`format_result` and
saves its chart through :func:`plot_results`; ``unified-map bench`` uses all of them. The table
is laid out by the same formatter as ``cluster_setup``'s status report, so every table the
project prints looks alike. matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unified_map._cluster import cluster_setup

if TYPE_CHECKING:  # benchmark.py imports this module: no import back at run time
    from unified_map.benchmark import BenchmarkResult, BenchmarkRow

__all__ = [
    "format_result",
    "format_overhead",
    "format_legend",
    "format_machine",
    "format_markdown",
    "bench_figure",
    "plot_results",
    "require_matplotlib",
    "PLOT_INSTALL_HINT",
    "LINEAR_SPAN",
]

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

#: What each column of the table means (:func:`format_legend` prints it under the tables).
_LEGEND = (
    ("workers", "processes (or threads) the backend ran the items on"),
    (
        "start-up s",
        "start of the backend (pool, cluster) and a one-item map; not in the map times",
    ),
    ("median/min/max s", "wall time of one whole map over every item, with the pool warm"),
    (
        "speedup",
        "the baseline's median (serial backend) / this median: above 1.00x is faster",
    ),
    (
        "overhead us/item",
        "median minus a perfect split of the baseline's time over the workers, per item, "
        "in microseconds; never negative (<0.1: at or below the perfect split)",
    ),
)

#: The chart's time axis is linear when its longest time is less than this many times its
#: shortest (a log axis makes 2.4 s and 4.1 s look alike), logarithmic otherwise.
LINEAR_SPAN = 20.0


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
        format_overhead(row.overhead_us_per_item),
    )


def format_overhead(us_per_item: float | None) -> str:
    """The overhead column's text: one decimal, ``<0.1`` below that (never a negative figure).

    Examples
    --------
    >>> [format_overhead(us) for us in [1589.26, 0.1, 0.04, -3.0, None]]
    ['1,589.3', '0.1', '<0.1', '<0.1', '-']
    """
    if us_per_item is None:
        return "-"
    if us_per_item < 0.05:  # would print as 0.0 (or as a negative figure)
        return "<0.1"
    return f"{us_per_item:,.1f}"


def format_legend() -> str:
    """What each column of the table means, to print under the tables.

    Examples
    --------
    >>> print(format_legend())  # doctest: +ELLIPSIS
    Columns:
      workers           processes (or threads) the backend ran the items on
    ...
      overhead us/item  median minus a perfect split of the baseline's time over the workers, per
                        item, in microseconds; never negative (<0.1: at or below the perfect split)
    """
    width = max(len(name) for name, _ in _LEGEND)
    lines = ["Columns:"]
    for name, meaning in _LEGEND:
        wrapped = textwrap.wrap(meaning, 96 - width - 2) or [""]
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines += [f"  {'':<{width}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _load_text(load: Sequence[float] | None) -> str:
    if not load:
        return "load average unknown"
    return "load average " + ", ".join(f"{value:.2f}" for value in load) + " (1, 5, 15 min)"


def format_machine(info: dict, width: int | None = 96) -> str:
    """Lines saying what benchmark figures depend on, from
    :func:`~unified_map.benchmark.machine_info`: date, cores, memory, load at the start,
    Python and the installed engines' versions. Lines longer than ``width`` are wrapped
    (``None``: never).

    Examples
    --------
    >>> info = {"date": "2026-11-25T00:50:00+00:00", "cores": 2, "memory_bytes": 8 * 2**30,
    ...         "load_average": [0.5, 0.25, 0.1], "python": "CPython 3.11.9",
    ...         "platform": "Linux-6.1", "packages": {"unified_map": "0.1.0", "dask": "2026.8.0"}}
    >>> print(format_machine(info))
    Measured 2026-11-25T00:50:00+00:00 on 2 cores, 8.0 GiB memory
    At the start: load average 0.50, 0.25, 0.10 (1, 5, 15 min)
    CPython 3.11.9 on Linux-6.1; unified_map 0.1.0, dask 2026.8.0
    """
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    lines = [
        f"Measured {info['date']} on {info['cores']} cores, {_gib(info['memory_bytes'])} memory",
        f"At the start: {_load_text(info.get('load_average'))}",
        f"{info['python']} on {info['platform']}; {packages}",
    ]
    if width is not None:
        lines = [
            part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="  ")
        ]
    return "\n".join(lines)


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
    serial         1      0.0001     0.002  0.002  0.002    1.00x              <0.1
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


def format_markdown(
    results: Sequence[BenchmarkResult],
    info: dict,
    load: dict | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """A short Markdown summary of a suite run: the machine, a busy warning if any, one table
    of median map times (speedup) with a backend per row and a workload per column, and links
    to the other files.

    Parameters
    ----------
    results : sequence of BenchmarkResult
        One per workload.
    info : dict
        :func:`~unified_map.benchmark.machine_info` at the start.
    load : dict, optional
        :meth:`~unified_map.benchmark.LoadMonitor.summary` of the run.
    files : dict of str to str, optional
        What else was written, e.g. ``{"plot": "bench.png", "rows": "bench.json"}``; a
        ``plot`` is shown as an image.

    Examples
    --------
    >>> from unified_map.benchmark import BenchmarkResult, BenchmarkRow, machine_info
    >>> rows = [BenchmarkRow("serial", 1, 1e-4, 2.0, 2.0, 2.0, 1.0, 0.0),
    ...         BenchmarkRow("threads", 2, 0.002, 1.1, 1.0, 1.2, 1.82, 5.0)]
    >>> text = format_markdown([BenchmarkResult("spin", 40, 3, 1, "the serial backend", rows)],
    ...                        machine_info(), files={"plot": "bench.png"})
    >>> print(text[text.index("| backend"):text.index("Speedup")].strip())
    | backend | spin (40 items) |
    |---|---:|
    | threads | **1.1 (1.82x)** |
    | serial | 2 (1.00x) |
    >>> "![" in text
    True
    """
    files = files or {}
    machine = format_machine(info, width=None).split("\n")
    lines = ["# unified-map bench", "", *[f"{line}  " for line in machine]]
    if load and load.get("warning"):
        lines += ["", f"**{load['warning']}**"]
    backends: list[str] = []
    for result in results:  # fastest of the first workload first, then any newcomers
        backends += [r.backend for r in result.rows if r.backend not in backends]
    lines += [
        "",
        "Median map time in seconds (speedup), fastest per workload in bold:",
        "",
        "| backend | " + " | ".join(f"{r.name} ({r.n_items:,} items)" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for backend in backends:
        cells = []
        for result in results:
            row = next((r for r in result.rows if r.backend == backend), None)
            if row is None:
                cells.append("-")
            elif not row.ok:
                cells.append("failed")
            else:
                speedup = "" if row.speedup is None else f" ({row.speedup:.2f}x)"
                cell = f"{_seconds(row.median_seconds)}{speedup}"
                cells.append(f"**{cell}**" if row is result.rows[0] else cell)
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    baseline = results[0].baseline if results else "the serial backend"
    lines += [
        "",
        f"Speedup is over {baseline} (above 1.00x is faster). Start-up times, min and max, the "
        "overhead per item and why a backend failed are in the rows"
        + (f" (`{files['rows']}`)." if "rows" in files else "."),
    ]
    if "plot" in files:
        lines += ["", f"![Median map time and start-up per backend and workload]({files['plot']})"]
    return "\n".join(lines) + "\n"


def _scale(values: Sequence[float]) -> str:
    """``"linear"`` when the values span less than :data:`LINEAR_SPAN`, else ``"log"``."""
    positive = [v for v in values if v > 0]
    if not positive or max(positive) < LINEAR_SPAN * min(positive):
        return "linear"
    return "log"


def bench_figure(
    results: Sequence[BenchmarkResult], title: str | None = None, warning: str | None = None
):
    """The bar chart of ``results`` as a matplotlib Figure (no pyplot, no window).

    One row of panels per result: on the left the median map time of each backend with
    min-max whiskers, its speedup written on the bar; on the right its start-up time. Each
    panel's time axis is linear when its times span less than :data:`LINEAR_SPAN`, else
    logarithmic (the axis label says which). ``title`` and, in red, ``warning`` head it.

    Examples
    --------
    >>> import unified_map as um
    >>> result = um.benchmark(abs, [-1, -2], backends=["serial"], repeat=1, warmup=0)
    >>> figure = bench_figure([result], title="abs")
    >>> [text.get_text() for text in figure.axes[0].texts]
    ['1.00x']
    >>> figure.axes[0].get_xscale()  # a single time spans nothing: linear
    'linear'
    """
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    results = list(results)
    heights = [max(1, sum(r.ok for r in result.rows)) for result in results]
    header = "\n".join(text for text in (title, warning) if text)
    figure = Figure(
        figsize=(10, 0.6 + 0.4 * sum(heights) + 1.0 * len(results) + 0.2 * header.count("\n")),
        layout="constrained",
    )
    axes = figure.subplots(
        len(results), 2, squeeze=False, height_ratios=heights, width_ratios=[3, 1]
    )
    for (map_ax, startup_ax), result in zip(axes, results, strict=True):
        rows = [r for r in result.rows if r.ok][::-1]  # fastest on top
        positions = list(range(len(rows)))
        names = [r.backend for r in rows]
        medians = [r.median_seconds for r in rows]
        whiskers = [
            [r.median_seconds - r.min_seconds for r in rows],
            [r.max_seconds - r.median_seconds for r in rows],
        ]
        map_ax.barh(positions, medians, 0.6, xerr=whiskers, color="tab:blue", ecolor="0.25")
        _set_scale(map_ax, [r.min_seconds for r in rows] + [r.max_seconds for r in rows])
        for position, row in zip(positions, rows, strict=True):
            map_ax.annotate(
                "-" if row.speedup is None else f"{row.speedup:.2f}x",
                xy=(row.max_seconds, position),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                fontweight="bold" if row is rows[-1] else "normal",
            )
        map_ax.set_yticks(positions, names)
        map_ax.set_title(
            f"{result.name} ({result.n_items:,} items): median map time, min-max, "
            "speedup over serial",
            fontsize=9,
            loc="left",
        )
        startups = [max(r.startup_seconds, 1e-6) for r in rows]
        startup_ax.barh(positions, startups, 0.6, color="tab:gray")
        _set_scale(startup_ax, startups)
        startup_ax.set_yticks(positions, [""] * len(rows))
        startup_ax.set_title("start-up", fontsize=9, loc="left")
        failed = [r.backend for r in result.rows if not r.ok]
        if failed:
            map_ax.text(
                0.99,
                0.02,
                "failed: " + ", ".join(failed),
                transform=map_ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="tab:red",
            )
    if title:
        figure.suptitle(title, fontsize=9, x=0.01, ha="left")
    if warning:  # below the panels, in the space the layout keeps for it
        figure.supxlabel(
            textwrap.fill(warning, 130), fontsize=9, color="tab:red", x=0.01, ha="left"
        )
    return figure


def _set_scale(ax, values: Sequence[float]) -> None:
    scale = _scale(values)
    ax.set_xscale(scale)
    top = max(values, default=1.0) or 1.0
    if scale == "linear":
        ax.set_xlim(0, top * 1.2)  # room for the speedup written after each bar
        ax.set_xlabel("seconds", fontsize=8)
    else:
        ax.set_xlim(right=top * 3)
        ax.set_xlabel("seconds (log scale)", fontsize=8)
    ax.tick_params(labelsize=8)


def plot_results(
    results: Sequence[BenchmarkResult],
    path: str | Path,
    title: str | None = None,
    warning: str | None = None,
) -> Path:
    """Save the bar chart of :func:`bench_figure` to ``path``.

    Parameters
    ----------
    results : sequence of BenchmarkResult
        One row of panels each.
    path : str or Path
        Where to save; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).
    title, warning : str, optional
        Text above the chart (what the figures depend on) and a warning in red (a busy
        machine).

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
    figure = bench_figure(results, title, warning)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
