"""Dask: the generic cluster suite on a real scheduler and two workers, plus what only the
dask backend does (local cluster on first use, chunks as bytes, remote cancel)."""

from __future__ import annotations

import gc
import logging
import os
import time

import pytest

import cluster_setup
import unified_map as um
from cluster_setup.errors import InvalidAddressError
from tests.cluster_fixtures import ENGINES, process_tree_pids
from tests.helpers import run_python
from tests.test_cluster_common import ClusterSuite, map_while_killing_a_worker
from unified_map.backends import get_backend
from unified_map.backends.base import pack, run_packed, unpack_outcome
from unified_map.backends.dask import SCATTER_BYTES, DaskBackend


class TestDaskCluster(ClusterSuite):
    @pytest.fixture
    def engine(self):
        return ENGINES["dask"]

    @pytest.fixture
    def cluster(self, dask_cluster):
        return dask_cluster


def sleep_then_return(x):
    time.sleep(0.5)
    return x


def test_same_object_from_both_packages():
    assert um.cluster_setup.dask is cluster_setup.dask
    from cluster_setup import dask

    assert dask is cluster_setup.dask and dask.engine == "dask"


def test_local_cluster_is_started_once_logged_and_closed(caplog):
    assert cluster_setup.active_connection() is None
    backend = DaskBackend(n_workers=2)
    try:
        with caplog.at_level(logging.INFO, logger="unified_map.backends.dask"):
            first = backend.submit(run_packed, pack(abs, [-1])).result(timeout=60)
            second = backend.submit(run_packed, pack(abs, [-2])).result(timeout=60)
        assert unpack_outcome(first).results == [1] and unpack_outcome(second).results == [2]
        logged = [r for r in caplog.records if r.name == "unified_map.backends.dask"]
        assert len(logged) == 1 and logged[0].levelno == logging.INFO
        assert "local dask cluster" in logged[0].getMessage()
        assert "127.0.0.1" in logged[0].getMessage()
        local = backend._local
        pids = process_tree_pids(p.pid for p in local.setup.started)
        log_dir = local.setup._log_dir
        assert len(local.client.nthreads()) == 2 and backend.n_workers == 2
    finally:
        backend.close()
    assert not process_tree_pids(pids)
    backend.close()  # twice is harmless
    del local
    gc.collect()
    assert not os.path.exists(log_dir)  # its processes' logs go with the private setup


def test_n_workers_is_the_clusters_thread_count_when_connected(dask_connection):
    assert get_backend("dask").n_workers == 2


def test_chunks_are_submitted_as_one_bytes_blob(dask_connection, monkeypatch):
    client = dask_connection.client
    submitted = []
    original = client.submit

    def spy(fn, *args, **kwargs):
        submitted.append((fn, args, kwargs))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(client, "submit", spy)
    assert um.parallel(abs, range(-100, 100), chunksize=50) == [abs(x) for x in range(-100, 100)]
    assert len(submitted) == 4
    for fn, args, kwargs in submitted:
        assert fn is run_packed and len(args) == 1 and isinstance(args[0], bytes)
        assert kwargs == {"pure": False}


def test_big_chunks_are_scattered_to_a_worker_not_sent_in_the_graph(dask_connection, recwarn):
    client = dask_connection.client
    scattered = []
    original = client.scatter

    def spy(data, **kwargs):
        scattered.append(len(data))
        return original(data, **kwargs)

    client.scatter = spy  # an instance attribute: gone with the connection's client
    try:
        payloads = [bytes([i]) * (2 * SCATTER_BYTES // 3) for i in range(4)]
        assert um.parallel(len, payloads, chunksize=2) == [2 * SCATTER_BYTES // 3] * 4
        assert um.parallel(len, ["small"] * 4, chunksize=2) == [5] * 4
    finally:
        del client.scatter
    assert len(scattered) == 2 and min(scattered) >= SCATTER_BYTES  # only the two big chunks
    assert not [w for w in recwarn if "large graph" in str(w.message)]


def test_worker_killed_holding_scattered_chunks_loses_no_result(
    dask_cluster, dask_connection, monkeypatch
):
    # Dask cannot recompute scattered data: a chunk whose worker died before running it is
    # sent again, inside its task this time.
    monkeypatch.setattr("unified_map.backends.dask.SCATTER_BYTES", 0)  # scatter every chunk
    client = dask_connection.client
    resubmitted = []
    original = client.submit

    def spy(fn, *args, **kwargs):
        if args and isinstance(args[0], bytes):  # the chunk itself, not a scattered future
            resubmitted.append(fn)
        return original(fn, *args, **kwargs)

    client.submit = spy
    try:
        map_while_killing_a_worker(ENGINES["dask"], dask_cluster.address)
    finally:
        del client.submit
    assert resubmitted, "no chunk was lost with the worker: nothing was tested"


def test_stopping_early_cancels_the_remote_tasks(dask_connection):
    results = um.imap(sleep_then_return, range(40), chunksize=1)
    assert next(results) == 0
    results.close()  # the consumer stops: the queued dask tasks are withdrawn

    def n_tasks(dask_scheduler):
        return len(dask_scheduler.tasks)

    client = dask_connection.client
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(n_tasks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(n_tasks) == 0


@pytest.mark.parametrize("address", ["[::1]:0", "tcp://[::1]:8786"])
def test_ipv6_addresses_are_refused_up_front(address):
    setup = cluster_setup.dask
    before = len(setup.started)
    with pytest.raises(InvalidAddressError, match=r"IPv6 address .*IPv4 addresses"):
        setup.start_scheduler(address, dashboard_port=None)
    with pytest.raises(InvalidAddressError, match=r"IPv6 address"):
        setup.start_worker(address.replace(":0", ":8786"))
    assert len(setup.started) == before


def test_ipv6_worker_host_is_refused_up_front(dask_cluster):
    before = len(cluster_setup.dask.started)
    with pytest.raises(InvalidAddressError, match=r"IPv6 address '::1'"):
        cluster_setup.dask.start_worker(dask_cluster.address, host="::1")
    assert len(cluster_setup.dask.started) == before


def test_a_foreign_service_is_unreachable_and_leaves_no_noise_at_exit():
    # A service that answers in another protocol and keeps the connection open (dask reads
    # "HTTP/1.1" as the length of a frame of exabytes).
    result = run_python(
        """
        import socket, threading
        from cluster_setup import dask
        from cluster_setup.errors import SchedulerUnreachableError
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        kept = []

        def answer():
            while True:
                connection, _ = server.accept()
                connection.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")
                kept.append(connection)

        threading.Thread(target=answer, daemon=True).start()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        try:
            dask.connect_to_scheduler(address, timeout=2)
        except SchedulerUnreachableError as exc:
            print("unreachable", address in str(exc))
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unreachable True", result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr
