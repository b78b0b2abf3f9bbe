"""unified_map.report: the benchmark table and its legend, the machine's details, the Markdown
summary and the bar chart, on made-up figures."""

from __future__ import annotations

import json
import sys

import pytest

from cluster_setup.status import format_table
from unified_map.benchmark import BenchmarkResult, BenchmarkRow, busy_summary, machine_info
from unified_map.report import (
    LINEAR_SPAN,
    PLOT_INSTALL_HINT,
    bench_figure,
    format_legend,
    format_machine,
    format_markdown,
    format_result,
    plot_results,
    require_matplotlib,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def made_up_result() -> BenchmarkResult:
    return BenchmarkResult(
        name="tiny",
        n_items=1000,
        repeat=3,
        warmup=1,
        baseline="the serial backend",
        rows=[
            BenchmarkRow("serial", 1, 0.0001, 0.002, 0.0019, 0.0021, 1.0, 0.0),
            BenchmarkRow("dask", error="BackendNotInstalledError: pip install unified_map[dask]"),
            BenchmarkRow("multiprocessing", 2, 0.012, 0.0015, 0.0014, 0.0031, 1.333, 0.5),
            BenchmarkRow("threads", 2, 0.003, 0.01, 0.009, 0.02, 0.2, 9.0),
        ],
    )


def test_table_is_aligned_and_fastest_first():
    expected = """\
tiny: 1,000 items, median of 3 runs after 1 warm-up; speedup over the serial backend
backend          workers  start-up s  median s   min s   max s  speedup  overhead us/item
multiprocessing        2       0.012    0.0015  0.0014  0.0031    1.33x               0.5
serial                 1      0.0001     0.002  0.0019  0.0021    1.00x              <0.1
threads                2       0.003      0.01   0.009    0.02    0.20x               9.0
dask             failed: BackendNotInstalledError: pip install unified_map[dask]"""
    assert str(made_up_result()) == expected == format_result(made_up_result())
    assert (
        repr(made_up_result()) == "<BenchmarkResult 'tiny': 4 backends, fastest 'multiprocessing'>"
    )


def test_overhead_is_never_printed_negative():
    result = BenchmarkResult(
        "payload", 16, 3, 1, "the serial backend",
        [BenchmarkRow("serial", 1, 0.1, 2.0, 2.0, 2.0, 1.0, 0.0),
         BenchmarkRow("joblib", 2, 0.3, 0.9, 0.9, 0.9, 2.2, -1589.3),  # as seen, before
         BenchmarkRow("threads", 2, 0.01, 1.2, 1.2, 1.2, 1.67, 12_500.04)],
    )  # fmt: skip
    lines = str(result).splitlines()
    assert lines[2].startswith("joblib") and lines[2].endswith("  <0.1")
    assert lines[3].startswith("threads") and lines[3].endswith("  12,500.0")
    assert "-1" not in str(result)


def test_legend_says_what_every_column_means():
    legend = format_legend()
    assert legend.startswith("Columns:")
    for column in ["workers", "start-up s", "median/min/max s", "speedup", "overhead us/item"]:
        assert f"\n  {column} " in legend
    assert "never negative" in legend and "<0.1" in legend
    assert max(len(line) for line in legend.splitlines()) <= 100


def test_table_is_laid_out_by_the_shared_formatter():
    lines = format_result(made_up_result()).splitlines()
    header, *body = lines[1:5]
    cells = [line.split() for line in [header, *body]]
    cells[0] = ["backend", "workers", "start-up s", "median s", "min s", "max s", "speedup",
                "overhead us/item"]  # fmt: skip
    assert format_table(cells, right_aligned=set(range(1, 8))) == [header, *body]


def test_failed_backend_names_wider_than_the_others_widen_the_column():
    result = BenchmarkResult(
        "abs", 2, 1, 0, "the serial backend",
        [BenchmarkRow("serial", 1, 0.1, 0.2, 0.2, 0.2, 1.0, 0.0),
         BenchmarkRow("a-very-long-backend-name", error="RuntimeError: no")],
    )  # fmt: skip
    title, header, serial, failed = str(result).splitlines()
    width = len("a-very-long-backend-name")
    assert header.startswith("backend".ljust(width) + "  workers")
    assert serial.startswith("serial".ljust(width) + "        1")
    assert failed == "a-very-long-backend-name  failed: RuntimeError: no"


def test_to_dicts_is_json_ready():
    rows = json.loads(json.dumps(made_up_result().to_dicts()))
    assert [row["backend"] for row in rows] == ["multiprocessing", "serial", "threads", "dask"]
    assert rows[0]["workload"] == "tiny" and rows[0]["n_items"] == 1000
    assert rows[0]["median_seconds"] == 0.0015 and rows[0]["error"] is None
    assert rows[3]["median_seconds"] is None and "unified_map[dask]" in rows[3]["error"]
    assert set(rows[0]) == {
        "workload", "n_items", "backend", "n_workers", "startup_seconds", "median_seconds",
        "min_seconds", "max_seconds", "speedup", "overhead_us_per_item", "error", "note",
        "times",
    }  # fmt: skip


def test_plot_writes_a_png(tmp_path):
    require_matplotlib()  # the test extra installs it: a missing one is a broken install
    path = made_up_result().plot(tmp_path / "bench.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    two = plot_results([made_up_result(), made_up_result()], tmp_path / "two.png")
    assert two.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install unified_map\[plot\]"):
        made_up_result().plot(tmp_path / "bench.png")
    assert not (tmp_path / "bench.png").exists()
    assert PLOT_INSTALL_HINT == "pip install unified_map[plot]"


MACHINE = {
    "date": "2026-11-25T00:50:00+00:00",
    "cores": 2,
    "memory_bytes": 24 * 2**30,
    "load_average": [3.5, 2.0, 1.0],
    "python": "CPython 3.11.9",
    "platform": "Linux x86_64",
    "packages": {"unified_map": "0.1.0", "joblib": "1.6.0", "dask": "2026.8.0"},
}


def test_machine_details_name_what_the_figures_depend_on():
    text = format_machine(MACHINE)
    assert text.splitlines() == [
        "Measured 2026-11-25T00:50:00+00:00 on 2 cores, 24.0 GiB memory",
        "At the start: load average 3.50, 2.00, 1.00 (1, 5, 15 min)",
        "CPython 3.11.9 on Linux x86_64; unified_map 0.1.0, joblib 1.6.0, dask 2026.8.0",
    ]
    no_load = format_machine({**MACHINE, "load_average": None})
    assert "load average unknown" in no_load
    long = format_machine({**MACHINE, "packages": {f"package{i}": "1.0" for i in range(20)}})
    assert max(len(line) for line in long.splitlines()) <= 96


def test_markdown_summary_has_the_machine_one_table_and_the_warning():
    load = busy_summary([(3.5, 1.0)], cores=2)
    text = format_markdown(
        [made_up_result(), made_up_result()],
        MACHINE,
        load,
        {"plot": "bench.png", "rows": "bench.json"},
    )
    assert text.startswith("# unified-map bench\n")
    assert "on 2 cores, 24.0 GiB memory" in text and "dask 2026.8.0" in text
    assert f"**{load['warning']}**" in text
    assert "| backend | tiny (1,000 items) | tiny (1,000 items) |" in text
    assert "| multiprocessing | **0.0015 (1.33x)** | **0.0015 (1.33x)** |" in text
    assert "| dask | failed | failed |" in text
    assert "![Median map time" in text and "(bench.png)" in text and "`bench.json`" in text
    quiet = format_markdown([made_up_result()], MACHINE, busy_summary([(1.0, 0.0)], 2))
    assert "WARNING" not in quiet and "![" not in quiet


def timed_result(name: str, medians: dict[str, float]) -> BenchmarkResult:
    serial = medians["serial"]
    rows = [
        BenchmarkRow(b, 2, 0.01, m, m * 0.95, m * 1.05, serial / m, 0.0) for b, m in medians.items()
    ]
    return BenchmarkResult(name, 40, 3, 1, "the serial backend", rows)


def test_chart_writes_the_speedup_on_each_bar():
    require_matplotlib()
    figure = bench_figure([timed_result("cpu-bound", {"serial": 4.1, "futures": 2.4})])
    map_axes = figure.axes[0]
    assert sorted(text.get_text() for text in map_axes.texts) == ["1.00x", "1.71x"]


def test_chart_axis_is_linear_when_times_span_less_than_twenty_times():
    require_matplotlib()
    assert LINEAR_SPAN == 20
    close = timed_result("cpu-bound", {"serial": 4.1, "futures": 2.4})  # looked alike on log
    far = timed_result("tiny", {"serial": 0.001, "dask": 0.05})
    figure = bench_figure([close, far])
    close_map, close_startup, far_map, far_startup = figure.axes
    assert close_map.get_xscale() == "linear" and close_map.get_xlim()[0] == 0
    assert far_map.get_xscale() == "log"
    assert "log" in far_map.get_xlabel() and "log" not in close_map.get_xlabel()
    assert close_startup.get_xscale() == "linear"  # equal start-ups: no span at all


def test_chart_is_headed_by_the_machine_and_the_warning(tmp_path):
    require_matplotlib()
    warning = busy_summary([(3.5, 1.0)], cores=2)["warning"]
    figure = bench_figure([made_up_result()], title=format_machine(MACHINE), warning=warning)
    assert figure.get_suptitle().startswith("Measured 2026-11-25")
    assert " ".join(figure.get_supxlabel().split()) == warning
    path = plot_results([made_up_result()], tmp_path / "bench.png", "title", warning)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_machine_info_is_json_ready():
    info = json.loads(json.dumps(machine_info()))
    assert format_machine(info).startswith("Measured ")
