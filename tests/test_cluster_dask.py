"""Dask: the generic cluster suite on a real scheduler and two workers, plus what only
dask does (a private local cluster, chunks as bytes, remote cancel, what started processes
inherit, and dying with a killed driver)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import threading
import time

import psutil
import pytest

import cluster_setup
import unified_map as um
from cluster_setup.errors import InvalidAddressError
from tests.cluster_fixtures import ENGINES, process_tree_pids
from tests.helpers import is_alive, run_python
from tests.test_cluster_common import (
    REPO_ROOT,
    ClusterSuite,
    listening_sockets,
    map_while_killing_a_worker,
)
from unified_map.backends import acquire_backend, release_backend
from unified_map.backends.base import run_packed
from unified_map.backends.dask import SCATTER_BYTES


class TestDaskCluster(ClusterSuite):
    @pytest.fixture
    def engine(self):
        return ENGINES["dask"]

    @pytest.fixture
    def cluster(self, dask_cluster):
        return dask_cluster


def sleep_then_return(x, seconds=0.5):
    time.sleep(seconds)
    return x


def test_same_object_from_both_packages():
    assert um.cluster_setup.dask is cluster_setup.dask
    from cluster_setup import dask

    assert dask is cluster_setup.dask and dask.engine == "dask"


def test_start_local_cluster_is_private_and_stopped_on_disconnect():
    assert cluster_setup.active_connection() is None
    public_before = {p.pid for p in cluster_setup.dask.started}
    connection = cluster_setup.dask.start_local_cluster(2)
    try:
        # private: its own setup object, not made active, not among the public object's
        assert connection.setup is not cluster_setup.dask and not connection.active
        assert cluster_setup.active_connection() is None
        assert {p.pid for p in cluster_setup.dask.started} == public_before
        records = connection.setup.started
        assert sorted(r.role for r in records) == ["scheduler", "worker"]
        pids = process_tree_pids(r.pid for r in records)
        log_dirs = {os.path.dirname(r.log_path) for r in records}
        assert all(os.path.isdir(log_dir) for log_dir in log_dirs)
        assert connection.slots() == 2 and len(connection.client.nthreads()) == 2
        assert connection.client.submit(abs, -3).result(timeout=60) == 3
        assert {ip for _, ip, _ in listening_sockets(pids)} == {"127.0.0.1"}
    finally:
        connection.disconnect()
    assert not process_tree_pids(pids)
    assert not any(os.path.exists(log_dir) for log_dir in log_dirs)  # its logs go with it
    assert connection.setup.started == [] and not connection.connected
    connection.disconnect()  # twice is harmless


def test_reconnecting_lets_another_threads_running_work_finish(dask_cluster):
    # One thread runs work on the active connection (holding it in use, as a map does);
    # another connects again, which replaces and disconnects that connection: the work must
    # still complete, and the replaced client close once the work is done.
    first = cluster_setup.dask.connect_to_scheduler(dask_cluster.address, timeout=30)
    running, outcome = threading.Event(), {}

    def work():
        try:
            with first.in_use():
                future = first.client.submit(sleep_then_return, 7, 2.0, pure=False)
                running.set()
                outcome["value"] = future.result(timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
        finally:
            running.set()

    thread = threading.Thread(target=work)
    thread.start()
    second = None
    try:
        assert running.wait(60)
        second = cluster_setup.dask.connect_to_scheduler(dask_cluster.address, timeout=30)
        assert cluster_setup.active_connection() is second
        assert not first.connected and not first.active  # replaced at once...
        thread.join(60)
        assert outcome == {"value": 7}  # ...but its user's work completed
        assert first.client.status == "closed"  # and it closed once its user left
    finally:
        thread.join(60)
        first.disconnect()
        if second is not None:
            second.disconnect()
    assert cluster_setup.active_connection() is None


def test_n_workers_is_the_clusters_thread_count_when_connected(dask_connection):
    backend = acquire_backend("dask")
    try:
        assert backend.n_workers == 2 and dask_connection.slots() == 2
    finally:
        release_backend(backend)


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


def test_a_scatter_cut_off_by_a_dying_worker_sends_the_chunk_in_its_task(dask_connection):
    # What a worker killed mid-scatter does to the scheduler's scatter call (seen in CI):
    # its comm closes while the scheduler still answers. The map must not take that for a
    # lost scheduler.
    from distributed.comm.core import CommClosedError

    client = dask_connection.client
    cut_off = []

    def scatter_to_a_dying_worker(data, **kwargs):
        cut_off.append(len(data))
        raise CommClosedError("in <TCP ConnectionPool.scatter>: Stream is closed")

    client.scatter = scatter_to_a_dying_worker  # an instance attribute, removed below
    try:
        payloads = [bytes([i]) * (2 * SCATTER_BYTES // 3) for i in range(4)]
        assert um.parallel(len, payloads, chunksize=2) == [2 * SCATTER_BYTES // 3] * 4
    finally:
        del client.scatter
    assert len(cut_off) == 2  # both big chunks tried to scatter, and were sent anyway


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


# -- what started processes inherit ---------------------------------------------------------


def interpreter_folders() -> list[str]:
    """This interpreter's standard library and site-packages folders."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    found += site.getsitepackages()
    return sorted({os.path.realpath(path) for path in found})


def other_python() -> str:
    """Another Python than this one when the machine has one, else this one."""
    for candidate in ("/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and os.path.realpath(candidate) != os.path.realpath(sys.executable):
            return candidate
    return sys.executable


def start_another_python(python: str) -> tuple[int, list[str], int]:
    """Run in a task: start ``python`` as a task might, and use a module of the user's."""
    import my_task_helpers  # noqa: F401 - from the user's folder, through PYTHONPATH

    result = subprocess.run(
        [python, "-c", "import re, sys, json; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]"), my_task_helpers.VALUE


def test_started_workers_get_only_the_users_import_folders(dask_cluster, tmp_path, monkeypatch):
    (tmp_path / "my_task_helpers.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = ENGINES["dask"]
    record = engine.start_worker(dask_cluster.address)
    try:
        environ = psutil.Process(record.pid).environ()
        paths = [os.path.realpath(p) for p in environ.get("PYTHONPATH", "").split(os.pathsep)]
        assert os.path.realpath(tmp_path) in paths
        ours = interpreter_folders()
        assert not [p for p in paths if any(p == f or p.startswith(f + os.sep) for f in ours)]
        assert psutil.Process(record.pid).exe() == psutil.Process().exe()  # same interpreter
        with cluster_setup.dask.connect_to_scheduler(dask_cluster.address) as connection:
            future = connection.client.submit(
                start_another_python, other_python(), workers=record.names, pure=False
            )
            returncode, their_path, value = future.result(timeout=120)
        assert returncode == 0 and value == 7
        leaked = [p for p in their_path if p and os.path.realpath(p) in ours]
        assert other_python() == sys.executable or not leaked, leaked
    finally:
        engine.stop_worker(record)


# -- the user's loggers and a clean stderr ----------------------------------------------------


def test_distributed_logger_is_left_as_the_user_set_it(dask_connection):
    logger = logging.getLogger("distributed")
    level = logger.level
    assert um.parallel(abs, [-1, -2], backend="dask") == [1, 2]
    cluster_setup.dask.report_status()
    assert logger.level == level

    received = []

    class Keep(logging.Handler):
        def emit(self, record):
            received.append(record.getMessage())

    handler = Keep(logging.WARNING)
    memory = logging.getLogger("distributed.worker.memory")
    memory.addHandler(handler)
    try:
        memory.warning("Unmanaged memory use is high")
    finally:
        memory.removeHandler(handler)
    assert received == ["Unmanaged memory use is high"]


def test_a_script_using_a_dask_cluster_prints_nothing_on_stderr():
    result = run_python(
        """
        import unified_map as um
        from cluster_setup import dask
        address = dask.start_scheduler("127.0.0.1:0")
        dask.start_worker(address, n_workers=2)
        with dask.connect_to_scheduler(address):
            print(um.parallel(abs, [-1, -2, -3]))
        local = dask.start_local_cluster(1)
        print(local.client.submit(abs, -4).result())
        local.disconnect()
        dask.connect_to_scheduler(address)
        dask.stop()
        """,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[1,", "2,", "3]", "4"]
    assert result.stderr == ""


# -- dying with the driver --------------------------------------------------------------------

DRIVER_SCRIPT = """
import json, os, time
from cluster_setup import dask
address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
dask.start_worker(address, n_workers=1)
local = dask.start_local_cluster(1)
records = dask.started + local.setup.started
print(json.dumps({
    "pids": [r.pid for r in records],
    "log_dirs": sorted({os.path.dirname(r.log_path) for r in records}),
}), flush=True)
time.sleep(600)
"""


def test_background_clusters_die_with_a_killed_driver():
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER_SCRIPT],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: set[int] = set()
    log_dirs: list[str] = []
    try:
        line = driver.stdout.readline()
        assert line, driver.stderr.read()
        started = json.loads(line)
        log_dirs = started["log_dirs"]
        # the cluster processes, their children, and whatever else the driver runs (a watch)
        pids = process_tree_pids(started["pids"]) | process_tree_pids([driver.pid])
        pids.discard(driver.pid)
        assert len(started["pids"]) == 4 and all(os.path.isdir(d) for d in log_dirs)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        deadline = time.monotonic() + 90  # a correctness bound, not a speed target
        while time.monotonic() < deadline:
            if not [p for p in pids if is_alive(p)] and not any(map(os.path.exists, log_dirs)):
                break
            time.sleep(0.2)
        assert not [p for p in pids if is_alive(p)], "cluster processes outlived the driver"
        assert not [d for d in log_dirs if os.path.exists(d)], "log folders left behind"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for log_dir in log_dirs:
            shutil.rmtree(log_dir, ignore_errors=True)
