"""unified_map.report: the benchmark table, JSON rows and the bar chart, on made-up figures."""

from __future__ import annotations

import json
import sys

import pytest

from cluster_setup.status import format_table
from unified_map.benchmark import BenchmarkResult, BenchmarkRow
from unified_map.report import PLOT_INSTALL_HINT, format_result, plot_results, require_matplotlib

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
serial                 1      0.0001     0.002  0.0019  0.0021    1.00x               0.0
threads                2       0.003      0.01   0.009    0.02    0.20x               9.0
dask             failed: BackendNotInstalledError: pip install unified_map[dask]"""
    assert str(made_up_result()) == expected == format_result(made_up_result())
    assert (
        repr(made_up_result()) == "<BenchmarkResult 'tiny': 4 backends, fastest 'multiprocessing'>"
    )


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
