"""unified_map.benchmark: result checking, failure rows, the table, JSON rows and the plot.

Small workloads only and no timing assertions: these tests check what is reported, not how
fast anything is.
"""

from __future__ import annotations

import json
import sys

import pytest

import cluster_setup
import unified_map as um
from unified_map import backends as registry
from unified_map.backends.serial import SerialBackend
from unified_map.benchmark import (
    BenchmarkResult,
    BenchmarkRow,
    ResultMismatchError,
    _equal,
    benchmark,
    plot_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class OffByOneBackend(SerialBackend):
    """Runs chunks in-line like serial, then corrupts the last result of each chunk."""

    name = "off-by-one"

    def submit(self, fn, *args):
        future = super().submit(fn, *args)
        outcome = future.result()
        if outcome.results:
            outcome.results[-1] += 1
        return future


class RefusesToStartBackend(SerialBackend):
    name = "refuses-to-start"

    def __init__(self, n_workers=None):
        raise RuntimeError("the cluster would not start")


@pytest.fixture
def registered_backends():
    """Register test backends under throwaway names and remove them afterwards."""
    added = {
        "off-by-one": f"{__name__}:OffByOneBackend",
        "refuses-to-start": f"{__name__}:RefusesToStartBackend",
        "ghost": "no_such_package_for_unified_map.backend:GhostBackend",
    }
    for name, target in added.items():
        um.register_backend(name, target)
    yield list(added)
    for name in added:
        registry._REGISTRY.pop(name, None)
        warm = registry._warm.pop(name, None)
        if warm is not None:
            warm.close()


def square(x):
    return x * x


def test_um_benchmark_stays_the_function():
    first = um.benchmark
    assert um.benchmark is first is benchmark


def test_rows_for_every_backend_named(registered_backends):
    result = benchmark(square, range(30), backends=["serial", "threads"], repeat=2)
    rows = {row.backend: row for row in result.rows}
    assert set(rows) == {"serial", "threads"}
    for row in rows.values():
        assert row.ok and row.error is None
        assert len(row.times) == 2
        assert row.min_seconds <= row.median_seconds <= row.max_seconds
        assert row.startup_seconds >= 0
        assert row.speedup > 0
    assert rows["serial"].speedup == pytest.approx(1.0)
    assert rows["serial"].n_workers == 1
    assert result.n_items == 30 and result.name == "square"
    assert result.baseline == "the serial backend"


def test_generators_are_read_once_and_zipped_like_map():
    result = benchmark(pow, (x for x in [2, 3, 4]), [1, 2], backends=["serial"], repeat=2)
    assert result.n_items == 2 and result.rows[0].ok


def test_mismatch_with_the_builtin_map_is_an_error(registered_backends):
    with pytest.raises(
        ResultMismatchError, match="'off-by-one' differs from the builtin map at item"
    ):
        benchmark(square, range(5), backends=["serial", "off-by-one"], repeat=1)
    assert "off-by-one" not in registry._warm  # the broken backend was closed
    assert issubclass(ResultMismatchError, um.UnifiedMapError)


def test_failing_backends_become_rows_and_others_still_run(registered_backends):
    result = benchmark(
        square, range(10), backends=["ghost", "refuses-to-start", "threads"], repeat=1
    )
    rows = {row.backend: row for row in result.rows}
    assert rows["threads"].ok
    assert "no_such_package_for_unified_map" in rows["ghost"].error
    assert "BackendNotInstalledError" in rows["ghost"].error
    assert rows["refuses-to-start"].error == "RuntimeError: the cluster would not start"
    assert [row.backend for row in result.rows][0] == "threads"  # failures sort last
    assert result.baseline == "one run of the builtin map"
    text = str(result)
    assert "ghost" in text and "failed: RuntimeError: the cluster would not start" in text


def test_unknown_backend_name_is_refused_before_anything_runs(registered_backends):
    calls = []

    def recorded(x):
        calls.append(x)
        return x

    with pytest.raises(um.UnknownBackendError) as excinfo:
        benchmark(recorded, range(3), backends=["serial", "nope", "ghost"], repeat=1)
    message = str(excinfo.value)
    assert message.startswith("unknown backend 'nope'; valid backends are: ")
    assert "'serial'" in message and "'threads'" in message and "'ghost'" in message
    assert calls == []  # not even the reference map ran
    assert "serial" not in registry._warm


def test_default_backends_are_the_installed_ones(monkeypatch):
    # The module, not the function of the same name that unified_map exports.
    module = sys.modules["unified_map.benchmark"]
    monkeypatch.setattr(
        module, "available_backends", lambda: {"serial": True, "threads": True, "spark": False}
    )
    result = benchmark(abs, [-1, 2], repeat=1, warmup=0)
    assert sorted(row.backend for row in result.rows) == ["serial", "threads"]


class FakeConnection:
    backend_name = "threads"


def test_active_connection_backend_is_used_as_found(monkeypatch):
    warm = registry.get_backend("threads")
    monkeypatch.setattr(cluster_setup, "_active", FakeConnection())
    result = benchmark(square, range(8), repeat=1)
    assert [row.backend for row in result.rows] == ["threads"]
    assert result.rows[0].note == "active connection, used as found"
    assert registry.get_backend("threads") is warm  # neither restarted nor closed
    assert "active connection" in str(result)


def test_local_backends_start_afresh_and_are_closed_afterwards(monkeypatch):
    closed = []
    warm = registry.get_backend("threads")
    close = warm.close
    monkeypatch.setattr(warm, "close", lambda: closed.append(warm) or close())
    benchmark(square, range(8), backends=["threads"], repeat=1)
    assert closed == [warm]  # the warm pool found was closed, so start-up was measured
    assert "threads" not in registry._warm  # and the one the benchmark started is gone too


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"repeat": 0}, ValueError), ({"warmup": -1}, ValueError), ({"repeat": 1.5}, ValueError)],
)
def test_invalid_counts(kwargs, error):
    with pytest.raises(error):
        benchmark(abs, [1], backends=["serial"], **kwargs)


def test_needs_a_callable_and_an_iterable():
    with pytest.raises(TypeError, match="callable"):
        benchmark(3, [1])
    with pytest.raises(TypeError, match="iterable"):
        benchmark(abs)


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
    assert str(made_up_result()) == expected
    assert (
        repr(made_up_result()) == "<BenchmarkResult 'tiny': 4 backends, fastest 'multiprocessing'>"
    )


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
    pytest.importorskip("matplotlib")
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


@pytest.mark.parametrize(
    "func",
    [lambda x: complex("nan"), lambda x: {x, float("nan")}, lambda x: frozenset({float("nan")})],
    ids=["complex-nan", "set-with-nan", "frozenset-with-nan"],
)
def test_nan_results_are_not_mismatches(func):
    # Pickled across processes, each NaN is a new object: only equal by _equal's NaN rule.
    result = benchmark(func, [0, 1], backends=["serial", "multiprocessing"], repeat=1)
    assert all(row.ok for row in result.rows), [row.error for row in result.rows]


def test_numpy_results_are_compared_by_value():
    numpy = pytest.importorskip("numpy")
    arrays = [numpy.arange(5.0), numpy.array([numpy.nan, 1.0])]
    result = benchmark(numpy.negative, arrays, backends=["serial", "threads"], repeat=1)
    assert all(row.ok for row in result.rows)
    assert not _equal(numpy.arange(3), numpy.arange(1, 4))


@pytest.mark.parametrize(
    ("got", "want", "same"),
    [
        (1, 1, True),
        (float("nan"), float("nan"), True),
        ([1, (2, 3)], [1, (2, 3)], True),
        ([1, (2, 3)], [1, [2, 3]], False),
        ({"a": [1]}, {"a": [1]}, True),
        ({"a": [1]}, {"a": [2]}, False),
        ("x", "y", False),
        (complex("nan"), complex("nan"), True),
        (complex(1, float("nan")), complex(1, float("nan")), True),
        (complex("nan"), complex(0, float("nan")), False),
        (complex("nan"), float("nan"), False),
        (1 + 2j, 1 + 2j, True),
        ({0, float("nan")}, {0, float("nan")}, True),
        (frozenset({(1, float("nan"))}), frozenset({(1, float("nan"))}), True),
        ({float("nan"), float("nan")}, {float("nan"), float("nan")}, True),
        ({float("nan"), float("nan")}, {float("nan"), 1.0}, False),
        ({0, float("nan")}, {1, float("nan")}, False),
        ({0, float("nan")}, frozenset({0, float("nan")}), False),
        ({1, 2}, {1, 2}, True),
        ({1, 2}, {1, 3}, False),
    ],
)
def test_equal(got, want, same):
    assert _equal(got, want) is same
