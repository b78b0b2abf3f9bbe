"""The cluster-setup suite, written once for every engine, and tests of the shared parts.

:class:`ClusterSuite` is not collected by itself (its name does not start with ``Test``): an
engine's test module subclasses it and provides two fixtures, ``engine`` (a
:class:`tests.cluster_fixtures.ClusterEngine`) and ``cluster`` (its session cluster), as
``tests/test_cluster_dask.py`` does. Tests check correctness only, never speed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import traceback

import psutil
import pytest

import cluster_setup
import unified_map as um
from cluster_setup.addresses import parse_address, same_endpoint
from cluster_setup.errors import (
    ClusterSetupError,
    EngineNotInstalledError,
    InvalidAddressError,
    PortInUseError,
    SchedulerFileError,
    SchedulerFileTimeoutError,
    SchedulerUnreachableError,
)
from cluster_setup.scheduler_file import write_scheduler_file
from cluster_setup.status import ClusterStatus, WorkerInfo
from tests.helpers import BlockingScript, process_tree_pids, run_python
from unified_map.errors import RemoteTraceback

MALFORMED_ADDRESSES = [
    "127.0.0.1",
    "tcp://127.0.0.1",
    "127.0.0.1:port",
    "http://127.0.0.1:8786",
    "",
    "tcp://:8786",
    "127.0.0.1:\uff18\uff17\uff18\uff16",  # full-width digits are not a port
    "[]:1",
    "[not-ip]:1",
    "[127.0.0.1]:1",  # brackets are for IPv6 only
    "::1:8786",  # IPv6 needs its brackets
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_sockets(pids) -> list[tuple[int, str, int]]:
    """``(pid, ip, port)`` of every listening TCP socket of ``pids``."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    # an IPv4 address on a dual-stack socket (Ray's) reads ::ffff:127.0.0.1
                    ip = conn.laddr.ip.removeprefix("::ffff:")
                    found.append((pid, ip, conn.laddr.port))
    return found


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sigterm_script_and_check(code: str, when) -> int:
    """Run ``code`` in a child interpreter, SIGTERM it once ``when(process, descendants)`` is
    true, and check that it exits and leaves no descendant running; return its exit code.
    Whatever is left is killed, even when a check fails."""
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not when(process, seen):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the script never got to the point of the test"
            seen |= process_tree_pids([process.pid]) - {process.pid}
            time.sleep(0.01)
        seen |= process_tree_pids([process.pid]) - {process.pid}
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        time.sleep(0.5)  # reparented children would still be running by now
        assert seen, "the script started no process?"
        assert not process_tree_pids(seen), f"processes left running after SIGTERM:\n{out}"
        return process.returncode
    finally:
        for pid in process_tree_pids(seen):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait()


def own_pid(_):
    return os.getpid()


def double_slowly_where(x):
    time.sleep(0.02)
    return 2 * x, os.getpid()


def map_while_killing_a_worker(engine, address: str) -> int:
    """Map 300 items on the connected cluster, with one more worker that is killed once it is
    busy with the map; check that every result arrived, in order. Returns the killed pid."""
    extra = engine.start_worker(address)  # the one to kill: the cluster stays whole
    extra_pids = process_tree_pids([extra.pid])
    try:
        results = um.imap(double_slowly_where, range(300), chunksize=5)
        received, busy = [], False
        for value, pid in results:  # kill it once it is busy with this map
            received.append(value)
            if pid not in extra_pids:  # a worker process the node started since (Ray's)
                extra_pids |= process_tree_pids([extra.pid])
            if pid in extra_pids:
                busy = True
                break
        engine.kill_worker(extra)
        received += [value for value, _ in results]
    finally:
        engine.stop_worker(extra)
    assert busy, "the extra worker got no task before the map ended"
    assert received == [2 * x for x in range(300)]
    return extra.pid


def fail_on_three(x):
    if x == 3:
        raise LookupError(f"no entry for {x}")
    return x


# -- shared parts, no engine needed ---------------------------------------------------------


@pytest.mark.parametrize("address", MALFORMED_ADDRESSES)
def test_malformed_address_is_a_value_error_naming_the_form(address):
    with pytest.raises(ValueError, match=r"expected 'host:port' or 'tcp://host:port'"):
        parse_address(address)


def test_a_port_out_of_range_says_so():
    with pytest.raises(ValueError, match=r"'127.0.0.1:99999': the port must be 0-65535"):
        parse_address("127.0.0.1:99999")


def test_port_0_is_offered_only_where_a_server_listens():
    with pytest.raises(ValueError) as connecting:
        parse_address("node7")
    with pytest.raises(ValueError) as listening:
        parse_address("node7", listen=True)
    assert "port 0" not in str(connecting.value)
    assert "port 0 picks a free one" in str(listening.value)


def test_address_forms():
    assert parse_address("10.1.2.3:8786").url == "tcp://10.1.2.3:8786"
    assert parse_address("tcp://node-7.cluster:0") == parse_address("node-7.cluster:0")
    assert parse_address(" 127.0.0.1:1 ").is_loopback
    assert parse_address("tcp://[::1]:8786").host == "[::1]"
    assert parse_address("[::1]:0").is_loopback


def test_error_types_subclass_the_builtins_that_fit():
    assert issubclass(InvalidAddressError, ValueError)
    assert issubclass(PortInUseError, OSError)
    assert issubclass(SchedulerUnreachableError, ConnectionError)
    assert issubclass(EngineNotInstalledError, ImportError)
    for error in (InvalidAddressError, PortInUseError, SchedulerUnreachableError):
        assert issubclass(error, ClusterSetupError)
    assert um.errors.SchedulerUnreachableError is SchedulerUnreachableError


def test_status_table_is_aligned():
    status = ClusterStatus(
        "dask",
        "tcp://127.0.0.1:8786",
        True,
        [
            WorkerInfo("tcp://127.0.0.1:40001", 4, 8 * 10**9, "a"),
            WorkerInfo("tcp://127.0.0.1:5", 12, None, "long-name"),
        ],
        "http://127.0.0.1:8787/status",
    )
    lines = str(status).splitlines()
    assert lines[0] == "dask cluster at tcp://127.0.0.1:8786: connected"
    assert lines[1] == "dashboard: http://127.0.0.1:8787/status"
    header, first, second, total = lines[2:]
    name_at, memory_at = header.index("name"), header.index("memory")
    cores_end = header.index("cores") + len("cores")  # right-aligned numbers end here
    assert first[name_at:].startswith("a ") and second[name_at:].startswith("long-name ")
    assert first[:cores_end].endswith(" 4") and second[:cores_end].endswith(" 12")
    assert total[:cores_end].endswith(" 16") and total.startswith("total: 2 workers")
    assert first[memory_at:] == "8.00 GB" and second[memory_at:] == "-"
    assert total[memory_at:] == "8.00 GB"
    assert status.total_cores == 16 and status.total_memory == 8 * 10**9


def test_status_when_not_connected_says_so():
    text = str(ClusterStatus("dask", None, False))
    assert "not connected" in text and "connect_to_scheduler" in text


# -- the suite every engine runs ------------------------------------------------------------


class ClusterSuite:
    """Tests of the four verbs, stop(), routing, errors and faults for one engine."""

    @pytest.fixture
    def connection(self, engine, cluster):
        connection = engine.setup.connect_to_scheduler(cluster.address, timeout=30)
        try:
            yield connection
        finally:
            connection.disconnect()

    # the verbs

    def test_start_scheduler_returns_a_tcp_address_on_loopback(self, engine, cluster):
        schemes = engine.setup._schemes()  # dask: ("tcp",)
        address = parse_address(cluster.address, schemes=schemes)
        assert address.scheme == schemes[0] and address.host == "127.0.0.1" and address.port > 0
        assert len(cluster.worker_addresses) == 2

    def test_everything_started_listens_on_loopback_only(self, engine, cluster):
        listening = listening_sockets(cluster.pids())
        assert listening, "the cluster listens nowhere?"
        assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening
        address = parse_address(cluster.address, schemes=engine.setup._schemes())
        assert address.port in {port for _, _, port in listening}

    def test_connect_makes_the_connection_active_until_the_block_ends(self, engine, cluster):
        assert cluster_setup.active_connection() is None
        with engine.setup.connect_to_scheduler(cluster.address) as connection:
            assert cluster_setup.active_connection() is connection
            assert connection.backend_name == engine.name and connection.connected
        assert cluster_setup.active_connection() is None and not connection.connected
        connection.disconnect()  # twice is harmless

    def test_maps_without_a_connection_run_locally_before_and_after_one(self, engine, cluster):
        # Ray and Spark allow one session per process: connecting ends the backend's local
        # instance, and the next map without a connection must start it again.
        assert um.parallel(abs, [-1, -2], backend=engine.name) == [1, 2]
        with engine.setup.connect_to_scheduler(cluster.address, timeout=30):
            assert um.parallel(abs, [-3]) == [3]
        assert um.parallel(abs, [-4, -5], backend=engine.name) == [4, 5]

    def test_connecting_again_replaces_the_active_connection(self, engine, cluster):
        first = engine.setup.connect_to_scheduler(cluster.address)
        second = engine.setup.connect_to_scheduler(cluster.address)
        try:
            assert cluster_setup.active_connection() is second
            assert not first.connected and second.connected
            first.disconnect()  # no longer active: must not clear the new one
            assert cluster_setup.active_connection() is second
        finally:
            engine.setup.disconnect()
        assert cluster_setup.active_connection() is None

    def test_parallel_without_backend_runs_on_the_connected_cluster(self, cluster, connection):
        pids = set(um.parallel(own_pid, range(16), chunksize=1))
        assert pids <= cluster.pids() and os.getpid() not in pids
        assert um.parallel(lambda x: x + 1, range(500)) == list(range(1, 501))

    def test_backend_named_explicitly_uses_the_connection(self, engine, cluster, connection):
        pids = set(um.parallel(own_pid, range(16), backend=engine.name, chunksize=1))
        assert pids <= cluster.pids()

    def test_connect_disconnect_reconnect_across_maps(self, engine, cluster):
        with engine.setup.connect_to_scheduler(cluster.address):
            assert set(um.parallel(own_pid, range(4), backend=engine.name)) <= cluster.pids()
        # no connection: the backend runs on a local cluster of its own, not on this one
        local = set(um.parallel(own_pid, range(4), backend=engine.name, chunksize=1))
        assert not local & cluster.pids() and os.getpid() not in local
        with engine.setup.connect_to_scheduler(cluster.address):
            assert set(um.parallel(own_pid, range(4), backend=engine.name)) <= cluster.pids()

    def test_report_status_while_connected(self, engine, cluster, connection, capsys):
        status = engine.setup.report_status()
        printed = capsys.readouterr().out
        assert status.connected and status.engine == engine.name
        assert status.scheduler_address == cluster.address
        assert sorted(w.address for w in status.workers) == sorted(cluster.worker_addresses)
        assert all(w.cores == 1 and w.memory == engine.gigabyte for w in status.workers)
        assert status.total_cores == 2
        if engine.has_dashboard:
            assert status.dashboard_link and status.dashboard_link.startswith("http://127.0.0.1:")
        assert printed.strip() == str(status)
        for address in cluster.worker_addresses:
            assert address in printed
        assert "total: 2 workers" in printed

    def test_report_status_when_not_connected(self, engine, cluster, capsys):
        status = engine.setup.report_status()
        assert not status.connected and status.workers == []
        assert "not connected" in capsys.readouterr().out
        # it still lists what this process started
        assert {pid for _, pid, _ in status.started} >= {p.pid for p in cluster.processes}

    def test_start_worker_joins_with_the_resources_asked_for(self, engine, cluster, connection):
        options, n_new = engine.bigger_worker_options  # dask: 2 workers of 2 threads
        record = engine.start_worker(cluster.address, **options)
        try:
            status = engine.setup.report_status()
            new = [w for w in status.workers if w.address not in cluster.worker_addresses]
            assert [(w.cores, w.memory) for w in new] == [(2, 1.5 * engine.gigabyte)] * n_new
            assert status.total_cores == 2 + 2 * n_new
        finally:
            engine.stop_worker(record)
        assert not process_tree_pids([record.pid])

    def test_stop_stops_only_what_it_was_asked_to(self, engine, cluster):
        address = engine.setup.start_scheduler("127.0.0.1:0", dashboard_port=None)
        (record,) = [p for p in engine.setup.started if p.address == address]
        pids = process_tree_pids([record.pid])
        # without a dashboard too, nothing listens beyond 127.0.0.1
        assert {ip for _, ip, _ in listening_sockets(pids)} == {"127.0.0.1"}
        connection = engine.setup.connect_to_scheduler(address)
        engine.setup.stop(address)
        assert not connection.connected and cluster_setup.active_connection() is None
        assert not process_tree_pids(pids)
        assert process_tree_pids(p.pid for p in cluster.processes) == cluster.pids()
        engine.setup.stop(address)  # nothing left: harmless

    def test_stop_finds_the_cluster_under_any_name_of_its_address(self, engine):
        # Started at localhost:0, joined and connected as localhost:PORT, stopped by the
        # address start_scheduler returned: every process stops, the connection closes.
        before = {p.pid for p in engine.setup.started}
        returned = engine.setup.start_scheduler("localhost:0", dashboard_port=None)
        alias = f"localhost:{parse_address(returned, schemes=engine.setup._schemes()).port}"
        try:
            engine.setup.start_worker(alias)
            ours = [p for p in engine.setup.started if p.pid not in before]
            assert sorted(p.role for p in ours) == ["scheduler", "worker"]
            pids = process_tree_pids(p.pid for p in ours)
            connection = engine.setup.connect_to_scheduler(alias)
            engine.setup.stop(returned)
            assert not connection.connected and cluster_setup.active_connection() is None
            assert not [p for p in engine.setup.started if p.pid not in before]
            assert not process_tree_pids(pids)
        finally:
            engine.setup.stop(alias)
            engine.setup.stop(returned)

    # errors

    @pytest.mark.parametrize("address", ["127.0.0.1", "tcp://127.0.0.1", "127.0.0.1:port"])
    def test_malformed_address_in_every_verb(self, engine, address):
        for verb in (
            engine.setup.start_scheduler,
            engine.setup.start_worker,
            engine.setup.connect_to_scheduler,
        ):
            with pytest.raises(ValueError, match="host:port"):
                verb(address)

    def test_port_in_use_fails_at_once(self, engine):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            started = time.monotonic()
            with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}.*already in use"):
                engine.setup.start_scheduler(f"127.0.0.1:{port}")
            assert time.monotonic() - started < 2
        assert not [p for p in engine.setup.started if str(port) in p.address]

    def test_unreachable_scheduler_is_a_connection_error_within_the_timeout(self, engine):
        address = f"127.0.0.1:{free_port()}"
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=re.escape(engine.scheduler_url(address))):
            engine.setup.connect_to_scheduler(address, timeout=2)
        assert time.monotonic() - started < 2 + 5
        assert cluster_setup.active_connection() is None
        before = len(engine.setup.started)
        with pytest.raises(ConnectionError, match=re.escape(engine.scheduler_url(address))):
            engine.setup.start_worker(address, timeout=2)
        assert len(engine.setup.started) == before

    def test_silent_listener_is_unreachable_not_a_hang(self, engine):
        # Something accepts TCP at the address but never answers (a stopped scheduler, a
        # foreign service): the verbs must give up with our error, not wait forever.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            address = f"127.0.0.1:{silent.getsockname()[1]}"
            before = len(engine.setup.started)
            for verb in (engine.setup.connect_to_scheduler, engine.setup.start_worker):
                started = time.monotonic()
                with pytest.raises(SchedulerUnreachableError, match=re.escape(address)):
                    verb(address, timeout=2)
                assert time.monotonic() - started < 30  # a bound against hanging, not speed
            assert cluster_setup.active_connection() is None
            assert len(engine.setup.started) == before

    def test_missing_engine_gives_the_install_hint(self, engine):
        result = run_python(
            f"""
            import sys
            sys.modules[{engine.engine_module!r}] = None  # as if it were not installed
            import unified_map as um
            from cluster_setup import {engine.name} as setup
            calls = [
                lambda: setup.start_scheduler("127.0.0.1:0"),
                lambda: setup.start_worker("127.0.0.1:1"),
                lambda: setup.connect_to_scheduler("127.0.0.1:1"),
                lambda: um.parallel(abs, [1], backend={engine.name!r}),
            ]
            for call in calls:
                try:
                    call()
                except ImportError as exc:
                    print(type(exc).__name__, exc)
                else:
                    print("no error")
            print(sorted(p.pid for p in setup.started))
            """,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 5 and lines[-1] == "[]", result.stdout
        for line in lines[:4]:
            assert f"pip install unified_map[{engine.extra}]" in line, line

    # faults

    def test_exception_in_func_keeps_its_type_and_the_connection_works(self, connection):
        with pytest.raises(LookupError, match="no entry for 3") as caught:
            um.parallel(fail_on_three, range(10), chunksize=2)
        notes = "\n".join(caught.value.__notes__)
        assert "item 3 of the input: 3" in notes
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "fail_on_three" in caught.value.__cause__.traceback_text
        printed = "".join(traceback.format_exception(caught.value))
        assert "fail_on_three" in printed and "item 3" in printed
        assert um.parallel(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]

    def test_worker_killed_mid_map_loses_no_result(self, engine, cluster, connection):
        extra_pid = map_while_killing_a_worker(engine, cluster.address)
        assert not process_tree_pids([extra_pid])
        assert um.parallel(abs, [-1, -2]) == [1, 2]

    def test_sigterm_while_a_block_true_call_starts_leaves_nothing(self, engine):
        # SIGTERM as soon as the scheduler process exists, before it is ready.
        code = engine.blocking_script("scheduler", "127.0.0.1:0")
        returncode = sigterm_script_and_check(code, lambda process, seen: bool(seen))
        assert returncode in (0, 128 + signal.SIGTERM)

    def test_sigterm_to_a_script_stops_its_background_processes(self, engine):
        code = (
            "import time\n"
            "from tests.cluster_fixtures import ENGINES\n"
            f"ENGINES[{engine.name!r}].start_cluster(n_workers=1)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n"
        )

        def ready(process, seen):
            return bool(seen) and "ready" in process.stdout.readline()

        assert sigterm_script_and_check(code, ready) == 128 + signal.SIGTERM

    def test_a_map_on_a_cluster_whose_workers_all_died_fails_instead_of_waiting(
        self, engine, monkeypatch
    ):
        from unified_map.backends.cluster import ClusterBackend

        private = engine.start_cluster(n_workers=1)  # not the session's: its worker dies
        pids = private.pids()
        try:
            with engine.setup.connect_to_scheduler(private.address, timeout=30) as connection:
                assert um.parallel(abs, [-1, -2]) == [1, 2]
                for record in private.processes:
                    if record.role == "worker":
                        os.killpg(record.pid, signal.SIGKILL)
                        record.popen.wait()
                deadline = time.monotonic() + 120  # until the scheduler noticed
                while connection.slots() > 0:
                    assert time.monotonic() < deadline, "the scheduler never lost its worker"
                    time.sleep(0.5)
                status = engine.setup.report_status()
                assert status.workers == []
                # Ray and Spark keep listing a lost worker as dead; dask forgets it
                assert len(status.lost) == (1 if engine.lists_lost_workers else 0), status
                monkeypatch.setattr(ClusterBackend, "no_workers_seconds", 2.0)
                with pytest.raises(um.WorkerLostError, match=r"has had no worker for 2 s"):
                    um.parallel(abs, range(10))
        finally:
            engine.setup.stop(private.address)
            for pid in process_tree_pids(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert not process_tree_pids(pids)

    def test_dead_scheduler_is_reported_and_raised_as_unreachable(self, engine, capsys):
        private = engine.start_cluster(n_workers=1)  # not the session's: this one dies
        pids = private.pids()
        try:
            with engine.setup.connect_to_scheduler(private.address, timeout=30):
                assert um.parallel(abs, [-1, -2]) == [1, 2]
                for record in private.processes:  # a crash of the whole cluster
                    os.killpg(record.pid, signal.SIGKILL)
                    record.popen.wait()
                capsys.readouterr()
                status = engine.setup.report_status()
                printed = capsys.readouterr().out
                assert not status.connected and status.scheduler_address == private.address
                assert f"{private.address}: scheduler unreachable" in printed
                with pytest.raises(SchedulerUnreachableError, match=re.escape(private.address)):
                    um.parallel(abs, range(10))
        finally:
            engine.setup.stop(private.address)
            for pid in process_tree_pids(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert cluster_setup.active_connection() is None
        assert not process_tree_pids(pids)

    def test_block_true_serves_until_sigterm_and_leaves_nothing(self, engine, tmp_path):
        scheduler = BlockingScript(engine.blocking_script("scheduler", "127.0.0.1:0"))
        try:
            address = scheduler.wait_for(engine.scheduler_banner)
            worker = BlockingScript(engine.blocking_script("worker", address))
            try:
                worker.wait_for(r"2 \S+ worker\(s\) joined")
                with engine.setup.connect_to_scheduler(address):
                    assert len(engine.setup.report_status().workers) == 2
                worker.terminate_and_check()
            finally:
                worker.kill()
            scheduler.terminate_and_check()
        finally:
            scheduler.kill()

    # HPC: scheduler files, shipping code, the environment check (issue 10)

    def test_a_scheduler_file_is_written_when_ready_and_workers_join_through_it(
        self, engine, tmp_path
    ):
        path = str(tmp_path / "scheduler.json")
        address = engine.setup.start_scheduler("127.0.0.1:0", scheduler_file=path)
        try:
            document = json.loads(open(path).read())
            assert document["engine"] == engine.name
            assert same_endpoint(document["address"], address)
            secret = engine.setup._scheduler_file_payload(address)[1]
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == (0 if secret else 0o044)
            joined = engine.setup.start_worker(scheduler_file=path, timeout=60)
            assert len(joined) == 1
            pids = process_tree_pids([p.pid for p in engine.setup.started if p.address == address])
        finally:
            engine.setup.stop(address)
        assert not os.path.exists(path)  # removed with its scheduler
        assert not process_tree_pids(pids)

    def test_connect_through_a_scheduler_file(self, engine, cluster, tmp_path):
        path = str(tmp_path / "scheduler.json")
        write_scheduler_file(path, engine.name, cluster.address)
        with engine.setup.connect_to_scheduler(scheduler_file=path, timeout=30) as connection:
            assert same_endpoint(connection.address, cluster.address)
            assert um.parallel(abs, [-1, -2]) == [1, 2]

    def test_a_missing_or_malformed_scheduler_file_is_a_clear_error(self, engine, tmp_path):
        path = str(tmp_path / "scheduler.json")
        before = [p.pid for p in engine.setup.started]
        for verb in (engine.setup.start_worker, engine.setup.connect_to_scheduler):
            with pytest.raises(SchedulerFileTimeoutError, match=re.escape(path)):
                verb(scheduler_file=path, timeout=0.5)
        with open(path, "w") as file:
            file.write('{"engine": "dask", "addr')  # cut short, and stays so
        with pytest.raises(SchedulerFileError, match="not valid JSON"):
            engine.setup.start_worker(scheduler_file=path, timeout=30)
        other = "spark" if engine.name != "spark" else "dask"
        write_scheduler_file(path, other, "127.0.0.1:1")
        with pytest.raises(SchedulerFileError, match=f"written by a {other} scheduler"):
            engine.setup.connect_to_scheduler(scheduler_file=path, timeout=30)
        assert [p.pid for p in engine.setup.started] == before  # nothing was started
        assert cluster_setup.active_connection() is None

    def test_py_files_make_a_module_the_workers_cannot_see_importable(
        self, engine, cluster, tmp_path, monkeypatch
    ):
        # a module and a package, in a folder that is on no worker's path
        name = f"shipped_{engine.name}_{os.getpid()}"
        (tmp_path / f"{name}_mod.py").write_text("def triple(x):\n    return 3 * x\n")
        package = tmp_path / f"{name}_pkg"
        package.mkdir()
        (package / "__init__.py").write_text("from .inner import negate\n")
        (package / "inner.py").write_text("def negate(x):\n    return -x\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        module = importlib.import_module(f"{name}_mod")
        pkg = importlib.import_module(f"{name}_pkg")
        files = [str(tmp_path / f"{name}_mod.py"), str(package)]
        with engine.setup.connect_to_scheduler(cluster.address, timeout=30, py_files=files):
            assert um.parallel(module.triple, range(4)) == [0, 3, 6, 9]
            assert um.parallel(pkg.negate, range(3)) == [0, -1, -2]

    def test_report_status_shows_each_workers_versions(self, engine, cluster, connection):
        status = engine.setup.report_status()
        assert status.driver_versions["python"] == platform.python_version()
        assert set(status.driver_versions) == {"python", engine.setup.engine_package or
                                               engine.name, "cloudpickle"}  # fmt: skip
        assert all(w.versions == status.driver_versions for w in status.workers), status
        assert status.mismatched == {}
        assert "driver: python " in str(status) and "MISMATCH" not in str(status)
