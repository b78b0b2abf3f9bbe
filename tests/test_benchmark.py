"""unified_map.benchmark and unified_map.checking: rows, result checking, failures as rows,
warm pools closed and cluster connections used as found; the machine's details and its load.

Small workloads only and no timing assertions: these tests check what is reported, not how
fast anything is. The table and the chart are tested in ``tests/test_report.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import cluster_setup
import unified_map as um
from unified_map import backends as registry
from unified_map.backends.serial import SerialBackend
from unified_map.benchmark import (
    BenchmarkRow,
    LoadMonitor,
    Measurement,
    benchmark,
    busy_summary,
    default_backends,
)
from unified_map.checking import check_results, results_equal
from unified_map.errors import ResultMismatchError


class OffByOneBackend(SerialBackend):
    """Runs chunks in-line like serial, then corrupts the last result of each chunk."""

    name = "off-by-one"

    def submit(self, fn, /, *args, **kwargs):
        future = super().submit(fn, *args)
        outcome = future.result()
        if outcome.results:
            outcome.results[-1] += 1
        return future


class RefusesToStartBackend(SerialBackend):
    name = "refuses-to-start"

    def __init__(self, n_workers=None):
        raise RuntimeError("the cluster would not start")


@pytest.fixture(scope="module")
def registered_backends():
    """Register test backends under names of their own.

    The registry has no public way to remove a name, so they stay registered for the rest of
    the session, as ``register_backend`` users' backends do; ``ghost`` declares a package
    that is missing, so it is listed as not installed.
    """
    um.register_backend("off-by-one", f"{__name__}:OffByOneBackend")
    um.register_backend("refuses-to-start", f"{__name__}:RefusesToStartBackend")
    um.register_backend(
        "ghost",
        "no_such_package_for_unified_map.backend:GhostBackend",
        requires="no_such_package_for_unified_map",
    )
    names = ["off-by-one", "refuses-to-start", "ghost"]
    yield names
    for name in names:
        registry.close_backend(name)


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
    assert not registry.is_warm("off-by-one")  # the broken backend was closed
    assert issubclass(ResultMismatchError, um.UnifiedMapError)
    assert um.ResultMismatchError is ResultMismatchError


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
    assert not registry.is_warm("refuses-to-start") and not registry.is_warm("threads")


def test_unknown_backend_name_is_refused_before_anything_runs(registered_backends):
    calls = []

    def recorded(x):
        calls.append(x)
        return x

    registry.close_backend("serial")
    with pytest.raises(um.UnknownBackendError) as excinfo:
        benchmark(recorded, range(3), backends=["serial", "nope", "ghost"], repeat=1)
    message = str(excinfo.value)
    assert message.startswith("unknown backend 'nope'; valid backends are: ")
    assert "'serial'" in message and "'threads'" in message and "'ghost'" in message
    assert calls == []  # not even the reference map ran
    assert not registry.is_warm("serial")


def test_default_backends_are_the_installed_ones(monkeypatch, registered_backends):
    assert "ghost" not in default_backends()  # registered, but its package is missing
    assert {"serial", "threads"} <= set(default_backends())
    # The module, not the function of the same name that unified_map exports.
    module = sys.modules["unified_map.benchmark"]
    monkeypatch.setattr(
        module, "available_backends", lambda: {"serial": True, "threads": True, "spark": False}
    )
    result = benchmark(abs, [-1, 2], repeat=1, warmup=0)
    assert sorted(row.backend for row in result.rows) == ["serial", "threads"]


def test_active_connection_backend_is_used_as_found(dask_connection, dask_cluster):
    registry.close_backend("dask")  # no private local cluster from earlier tests
    assert default_backends() == ["dask"]
    result = benchmark(square, range(8), repeat=1)
    assert [row.backend for row in result.rows] == ["dask"]
    (row,) = result.rows
    assert row.ok, row.error  # its results were checked against the builtin map
    assert row.note == "active connection, used as found"
    assert row.n_workers == len(dask_cluster.worker_addresses)  # one slot per worker
    assert len(row.times) == 1 and row.speedup > 0 and row.startup_seconds >= 0
    assert result.n_items == 8 and result.baseline == "one run of the builtin map"
    # Neither closed nor replaced, and no private local cluster was started beside it.
    assert cluster_setup.active_connection() is dask_connection
    assert not registry.is_warm("dask")
    assert um.parallel(square, range(4)) == [0, 1, 4, 9]
    assert "active connection" in str(result)


def test_local_backends_start_afresh_and_are_closed_afterwards(monkeypatch):
    warm = registry.acquire_backend("threads")
    registry.release_backend(warm)
    assert registry.is_warm("threads")
    closed = []
    shutdown = warm.shutdown
    monkeypatch.setattr(
        warm, "shutdown", lambda *args, **kwargs: closed.append(warm) or shutdown(*args, **kwargs)
    )
    result = benchmark(square, range(8), backends=["threads"], repeat=1)
    assert closed == [warm]  # the warm pool found was closed, so start-up was measured
    assert not registry.is_warm("threads")  # and the one the benchmark started is gone too
    assert result.rows[0].ok and result.rows[0].note is None


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


def test_measurement_reports_each_map_and_builds_the_result():
    measurement = Measurement(square, range(6), repeat=2, warmup=1, name="squares")
    assert measurement.n_items == 6 and measurement.expected == [0, 1, 4, 9, 16, 25]
    runs = []
    rows = [measurement.measure(name, on_run=lambda: runs.append(1)) for name in ["threads"]]
    assert len(runs) == 3  # one warm-up and two timed maps
    result = measurement.result(rows)
    assert result.name == "squares" and result.repeat == 2 and result.warmup == 1
    assert result.baseline == "one run of the builtin map"
    assert rows[0].ok and rows[0].speedup > 0 and rows[0].overhead_us_per_item is not None
    with pytest.raises(ValueError, match="repeat"):
        Measurement(square, range(3), repeat=0)


def test_check_results_names_the_backend_and_the_item():
    check_results("serial", [1, 4], [1, 4])
    with pytest.raises(ResultMismatchError, match="'x' returned 1 results for 2 items"):
        check_results("x", [1], [1, 4])
    with pytest.raises(ResultMismatchError, match="at item 1: got 5, expected 4"):
        check_results("x", [1, 5], [1, 4])


@pytest.mark.parametrize(
    "func",
    [lambda x: complex("nan"), lambda x: {x, float("nan")}, lambda x: frozenset({float("nan")})],
    ids=["complex-nan", "set-with-nan", "frozenset-with-nan"],
)
def test_nan_results_are_not_mismatches(func):
    # Pickled across processes, each NaN is a new object: only equal by the NaN rule.
    result = benchmark(func, [0, 1], backends=["serial", "multiprocessing"], repeat=1)
    assert all(row.ok for row in result.rows), [row.error for row in result.rows]


def test_numpy_results_are_compared_by_value():
    import numpy

    arrays = [numpy.arange(5.0), numpy.array([numpy.nan, 1.0])]
    result = benchmark(numpy.negative, arrays, backends=["serial", "threads"], repeat=1)
    assert all(row.ok for row in result.rows)
    assert not results_equal(numpy.arange(3), numpy.arange(1, 4))


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
def test_results_equal(got, want, same):
    assert results_equal(got, want) is same


def test_overhead_per_item_is_never_negative():
    measurement = Measurement(abs, range(1000), repeat=1, warmup=0)
    rows = [
        BenchmarkRow("serial", 1, 0.0, 1.0, 1.0, 1.0),
        BenchmarkRow("faster-than-perfect", 2, 0.0, 0.3, 0.3, 0.3),  # noise, a slowed serial
        BenchmarkRow("slower", 2, 0.0, 0.7, 0.7, 0.7),
    ]
    by_name = {row.backend: row for row in measurement.result(rows).rows}
    assert by_name["faster-than-perfect"].overhead_us_per_item == 0.0
    assert by_name["slower"].overhead_us_per_item == pytest.approx(200.0)  # (0.7 - 0.5) / 1000
    assert by_name["serial"].overhead_us_per_item == 0.0


def test_machine_info_reads_versions_without_importing_engines():
    code = (
        "import json, sys\n"
        "from unified_map.benchmark import machine_info\n"
        "info = machine_info()\n"
        "heavy = [m for m in ('dask', 'distributed', 'joblib', 'pyspark', 'ray', 'numpy') "
        "if m in sys.modules]\n"
        "print(json.dumps({'info': info, 'imported': heavy}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(completed.stdout)
    assert answer["imported"] == []
    info = answer["info"]
    assert list(info) == [
        "date", "cores", "memory_bytes", "load_average", "python", "platform", "packages",
    ]  # fmt: skip
    assert info["packages"]["unified_map"] == um.__version__
    # The test extra installs numpy; engines are listed when installed, and only then.
    import importlib.metadata

    assert info["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert "no_such_package_for_unified_map" not in info["packages"]
    assert info["date"].endswith("+00:00") and len(info["load_average"]) == 3


@pytest.mark.parametrize(
    ("samples", "busy"),
    [
        ([(1.0, 0.0), (2.2, 2.0)], False),  # the run's own workers fill the cores
        ([(0.5, 0.0), (1.9, 1.0)], False),  # others, but the load stays below the cores
        ([(2.5, 0.0), (2.0, 1.5)], True),  # busy before the run started
        ([(1.0, 0.0), (3.5, 1.9)], True),  # others competed during the run
        ([], False),  # no load average on this system
    ],
)
def test_busy_means_load_above_the_cores_with_others_in_it(samples, busy):
    summary = busy_summary(samples, cores=2)
    assert summary["busy"] is busy
    assert (summary["warning"] is not None) is busy
    if busy:
        assert summary["warning"].startswith("WARNING: the machine was busy: load average up to")
        assert "on 2 cores" in summary["warning"]


def test_load_monitor_counts_the_run_own_cpu_use(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (7.0, 6.0, 5.0))
    with LoadMonitor(interval=0.02, cores=2) as monitor:
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:  # keep one core busy in this process
            pass
    assert len(monitor.samples) >= 3
    assert monitor.samples[0] == (7.0, 0.0)  # at the start nothing of it is the run's own
    assert 0.0 < monitor.samples[-1][1] < 1.0  # about one core, smoothed over a minute
    summary = monitor.summary()
    assert summary["busy"] and summary["load_average_max"] == 7.0
    assert 6.0 < summary["load_from_others_max"] <= 7.0
    assert json.loads(json.dumps(summary)) == summary


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_spin_count_measures_cpu_time_so_load_does_not_shrink_the_items():
    """Calibrated by wall time on a loaded machine, "50 ms of CPU" items came out 4 ms long.

    Here a busy process shares the one core this calibration is pinned to.
    """
    script = (
        "import os, statistics, subprocess, sys, time\n"
        "from unified_map.bench_suite import spin_count\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "def count():\n"
        "    return statistics.median(spin_count(0.05) for _ in range(3))\n"
        "idle = count()\n"
        "hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'])  # same core\n"
        "try:\n"
        "    time.sleep(0.3)\n"
        "    loaded = count()\n"
        "finally:\n"
        "    hog.kill()\n"
        "    hog.wait()\n"
        "print(loaded / idle)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert float(completed.stdout) > 0.7  # by wall time it would be about 0.5
