"""The backend registry: names, install hints, warm reuse and resizing."""

from __future__ import annotations

import os

import pytest

import unified_map as um
from tests.helpers import run_python
from unified_map.backends import acquire_backend, backend_class, is_warm, release_backend
from unified_map.errors import BackendNotInstalledError, UnknownBackendError


def test_unknown_backend_lists_every_valid_name():
    with pytest.raises(UnknownBackendError) as caught:
        um.parallel(abs, [1], backend="sparkk")
    message = str(caught.value)
    assert "'sparkk'" in message
    for name in um.available_backends():
        assert repr(name) in message
    assert isinstance(caught.value, ValueError)


def test_available_backends_reports_installed_engines():
    backends = um.available_backends()
    assert list(backends) == sorted(backends)
    assert {"serial", "threads", "multiprocessing", "futures", "joblib", "dask"} <= set(backends)
    assert all(backends[name] for name in ("serial", "threads", "multiprocessing", "futures"))


def test_missing_engine_names_the_pip_extra():
    # Hide joblib from a fresh interpreter: the registry must say how to get it.
    result = run_python(
        """
        import sys
        sys.modules["joblib"] = None
        import unified_map as um
        try:
            um.parallel(abs, [1], backend="joblib")
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "BackendNotInstalledError" in result.stdout
    assert "pip install unified_map[joblib]" in result.stdout


def test_registered_backend_with_missing_package_names_its_extra():
    um.register_backend(
        "imaginary",
        "imaginary_engine_pkg.backend:Imaginary",
        requires="imaginary_engine_pkg",
        extra="imaginary",
    )
    assert um.available_backends()["imaginary"] is False
    with pytest.raises(BackendNotInstalledError, match=r"pip install unified_map\[imaginary\]"):
        backend_class("imaginary")


def test_register_backend_makes_a_third_party_backend_usable():
    um.register_backend("my-serial", "unified_map.backends.serial:SerialBackend")
    assert um.parallel(str, [1, 2], backend="my-serial") == ["1", "2"]


def test_register_backend_rejects_a_target_without_a_class():
    with pytest.raises(ValueError, match="package.module:Class"):
        um.register_backend("broken", "unified_map.backends.serial")


def test_local_pool_stays_warm_between_calls():
    first = set(
        um.parallel(lambda _: os.getpid(), range(200), backend="multiprocessing", chunksize=1)
    )
    again = set(
        um.parallel(lambda _: os.getpid(), range(200), backend="multiprocessing", chunksize=1)
    )
    assert os.getpid() not in first
    assert again <= first  # no new process: the same warm workers served both calls
    assert is_warm("multiprocessing")


@pytest.mark.parametrize("name", ["multiprocessing", "futures", "joblib", "threads"])
def test_pool_is_resized_when_n_workers_changes(name):
    one = acquire_backend(name, 1)
    release_backend(one)
    assert one.n_workers == 1
    assert um.parallel(lambda x: x + 1, range(10), backend=name, n_workers=1) == list(range(1, 11))
    two = acquire_backend(name, 2)
    release_backend(two)
    assert two is not one and two.n_workers == 2
    assert um.parallel(lambda x: x + 1, range(10), backend=name, n_workers=2) == list(range(1, 11))
    again = acquire_backend(name, 2)
    release_backend(again)
    assert again is two  # kept warm at its size


def test_no_backend_and_no_connection_means_auto_on_the_local_process_pool():
    import time

    import cluster_setup

    assert cluster_setup.active_connection() is None
    # a cheap map runs right here; a dear one on the warm process pool
    assert set(um.parallel(lambda _: os.getpid(), range(20))) == {os.getpid()}
    pids = um.parallel(lambda _: time.sleep(0.03) or os.getpid(), range(20), chunksize=1)
    assert set(pids[-5:]).isdisjoint({os.getpid()})
    with pytest.raises(KeyError) as caught:
        um.parallel({}.__getitem__, ["missing"])
    assert "(backend 'auto')" in "\n".join(caught.value.__notes__)


@pytest.mark.parametrize("name", ["threads", "multiprocessing"])
def test_resizing_from_another_thread_does_not_close_a_pool_in_use(name):
    import threading
    import time

    results = {}

    def slow_map():
        results["A"] = um.parallel(
            lambda x: time.sleep(0.1) or x, range(12), backend=name, n_workers=2, chunksize=1
        )

    first = threading.Thread(target=slow_map)
    first.start()
    time.sleep(0.2)  # A is mapping on the 2-worker pool when B asks for 1 worker
    results["B"] = um.parallel(abs, [-1, -2], backend=name, n_workers=1)
    first.join(timeout=120)
    assert not first.is_alive()
    assert results == {"A": list(range(12)), "B": [1, 2]}
