"""The parts of cluster_setup that need no engine: addresses, processes (stopping a tree,
the environment of started processes, dying with the parent), status tables, connections
and the active connection, and the loader that keeps a user's ``cluster_setup.py`` apart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import cluster_setup
from cluster_setup.addresses import parse_address, same_endpoint
from cluster_setup.connection import ClusterConnection, activate, active_connection
from cluster_setup.errors import SchedulerUnreachableError
from cluster_setup.processes import (
    make_log_dir,
    process_environment,
    remove_log_dir,
    start_process,
    stop_processes,
    user_import_folders,
)
from cluster_setup.status import format_table
from tests.helpers import is_alive, process_tree_pids

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("localhost:8786", "tcp://127.0.0.1:8786", True),
        ("tcp://127.0.0.1:8786", "127.0.0.1:8786", True),
        ("localhost:8786", "127.0.0.1:8787", False),
        ("10.0.0.1:8786", "127.0.0.1:8786", False),
        ("not an address", "not an address", True),
    ],
)
def test_same_endpoint_compares_resolved_hosts_and_ports(a, b, same):
    assert same_endpoint(a, b) is same


def test_other_schemes_are_parsed_when_allowed():
    assert parse_address("spark://node7:7077", schemes=("spark",)).url == "spark://node7:7077"
    assert parse_address("node7:7077", schemes=("spark",)).scheme == "spark"
    with pytest.raises(ValueError, match="'spark://host:port'"):
        parse_address("tcp://node7:7077", schemes=("spark",))


# -- status ----------------------------------------------------------------------------------


def test_format_table_aligns_columns_and_trims_trailing_spaces():
    lines = format_table([("a", "bb", "c"), ("long", "1", "")], right_aligned={1})
    assert lines == ["a     bb  c", "long   1"]


# -- processes -------------------------------------------------------------------------------

# A process whose child leaves its process group (a daemon that calls setsid): only a walk
# of the process tree finds it.
ESCAPING_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_stop_processes_stops_the_whole_tree_even_outside_the_group(tmp_path):
    log = tmp_path / "out.log"
    record = start_process("demo", "-", [sys.executable, "-c", ESCAPING_PARENT], log_path=log)
    child = None
    try:
        deadline = time.monotonic() + 60
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(log.read_text().split()[0])
        assert os.getpgid(child) != record.pid and is_alive(child)
        stop_processes([record], grace=5)
        assert not record.running
        deadline = time.monotonic() + 10
        while is_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(child), "the child that left the process group still runs"
    finally:
        if child is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(child).kill()
        stop_processes([record], grace=1)


# A child in a process group of its own (as Ray gives each task worker), orphaned when its
# parent exits (as Ray's agents outlive a killed raylet): neither the tree nor the group of
# the process we started reaches it any more; its session does.
ORPHAN_IN_OWN_GROUP = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         process_group=0)
print(child.pid, flush=True)
os._exit(0)  # the parent is gone at once: the child is re-parented to init
"""


def test_stop_processes_stops_orphans_of_its_session(tmp_path):
    log = tmp_path / "out.log"
    record = start_process("demo", "-", [sys.executable, "-c", ORPHAN_IN_OWN_GROUP], log_path=log)
    child = None
    try:
        record.popen.wait(60)
        child = int(log.read_text().split()[0])
        assert os.getpgid(child) == child and os.getsid(child) == record.pid
        assert is_alive(child)
        stop_processes([record], grace=5)
        deadline = time.monotonic() + 10
        while is_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(child), "an orphan of the started process's session still runs"
    finally:
        if child is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(child).kill()


def test_user_import_folders_are_the_users_own(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    folders = user_import_folders()
    assert os.path.realpath(tmp_path) in folders and os.path.realpath(os.getcwd()) in folders
    import sysconfig

    for key in ("stdlib", "purelib"):
        interpreter = os.path.realpath(sysconfig.get_paths()[key])
        assert not [f for f in folders if f == interpreter or f.startswith(interpreter + os.sep)]
    env = process_environment({"EXTRA": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == folders and env["EXTRA"] == "1"


PARENT_SCRIPT = """
import json, os, sys, time
from cluster_setup.processes import make_log_dir, start_process
log_dir = make_log_dir("cluster_setup-test-")
records = [
    start_process("demo", "-", [sys.executable, "-c", "import time; time.sleep(300)"])
    for _ in range(2)
]
forked = None
if FORK and not (forked := os.fork()):  # a forked child (a pool worker) outlives the parent
    time.sleep(300)
    os._exit(0)
print(json.dumps({"pids": [r.pid for r in records], "log_dir": log_dir, "forked": forked}),
      flush=True)
sys.stdin.read()  # until the test kills us
"""


@pytest.mark.parametrize("fork", [False, True], ids=["alone", "with-a-forked-child"])
def test_started_processes_and_log_folders_die_with_a_killed_parent(fork):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT.replace("FORK", str(fork))],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: set[int] = set()
    started = {"forked": None}
    try:
        started = json.loads(parent.stdout.readline())
        pids = process_tree_pids([parent.pid]) - {parent.pid}  # the two, and the watch
        pids.discard(started["forked"])  # alive until the test ends: it is not ours to stop
        assert set(started["pids"]) < pids and os.path.isdir(started["log_dir"])
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 60  # a correctness bound, not a speed target
        while time.monotonic() < deadline and (
            any(is_alive(pid) for pid in pids) or os.path.exists(started["log_dir"])
        ):
            time.sleep(0.1)
        assert not [pid for pid in pids if is_alive(pid)], "processes outlived their parent"
        assert not os.path.exists(started["log_dir"]), "the log folder was left behind"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids | {started["forked"]} - {None}:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def test_a_parent_that_exits_normally_leaves_no_watch_behind():
    code = """
        import sys
        from cluster_setup.processes import (
            make_log_dir, remove_log_dir, start_process, stop_processes,
        )
        record = start_process("demo", "-", [sys.executable, "-c", "import time; time.sleep(300)"])
        remove_log_dir(make_log_dir("cluster_setup-test-"))
        stop_processes([record], grace=5)
        """
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT)
    children: set[int] = set()
    while parent.poll() is None:
        children |= process_tree_pids([parent.pid]) - {parent.pid}
        time.sleep(0.01)
    assert parent.returncode == 0 and children  # the demo process and the watch
    assert not [pid for pid in children if is_alive(pid)]


def test_log_dirs_are_made_and_removed():
    path = make_log_dir("cluster_setup-test-")
    assert os.path.isdir(path)
    remove_log_dir(path)
    remove_log_dir(path)  # twice is harmless
    assert not os.path.exists(path)


# -- connections -----------------------------------------------------------------------------


class CountingConnection(ClusterConnection):
    """The smallest engine connection: counts its closes."""

    backend_name = "counting"

    def __init__(self, address="tcp://127.0.0.1:1"):
        super().__init__(None, address)
        self.closes = 0
        self.slot_queries = 0

    @property
    def reachable(self) -> bool:
        return not self.closes

    def _count_slots(self) -> int:
        self.slot_queries += 1
        return 3

    def _close(self) -> None:
        self.closes += 1


def test_disconnect_while_in_use_closes_when_the_last_user_leaves():
    connection = CountingConnection()
    with connection.in_use():
        with connection.in_use():
            connection.disconnect()
            assert not connection.connected and connection.closes == 0
        assert connection.closes == 0  # one user left
    assert connection.closes == 1
    connection.disconnect()
    assert connection.closes == 1
    with pytest.raises(SchedulerUnreachableError, match="127.0.0.1:1"), connection.in_use():
        pass


def test_activate_replaces_and_disconnects_the_previous_connection():
    first, second = CountingConnection(), CountingConnection()
    try:
        activate(first)
        assert active_connection() is first and cluster_setup.active_connection() is first
        activate(second)
        assert active_connection() is second and first.closes == 1 and not first.connected
        first.disconnect()  # no longer active: must not clear the new one
        assert active_connection() is second
    finally:
        activate(None)
    assert active_connection() is None and second.closes == 1


def test_activate_from_many_threads_closes_every_replaced_connection_once():
    connections = [CountingConnection() for _ in range(200)]
    threads = [
        threading.Thread(target=lambda chunk=chunk: [activate(c) for c in chunk])
        for chunk in (connections[i::4] for i in range(4))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last = active_connection()
    activate(None)
    assert last in connections
    assert [c.closes for c in connections] == [1] * len(connections)


def test_slots_are_cached_briefly():
    connection = CountingConnection()
    assert connection.slots() == connection.slots() == 3 and connection.slot_queries == 1


# -- a user's own cluster_setup.py ------------------------------------------------------------

USER_SCRIPT = """
{first}
print(cluster_setup.MINE)
print(unified_map.parallel(abs, [-1], backend="serial"))
print(unified_map.cluster_setup.dask.engine)
print(unified_map.cluster_setup is not cluster_setup)
print(unified_map.errors.SchedulerUnreachableError
      is unified_map.cluster_setup.errors.SchedulerUnreachableError)
"""


@pytest.mark.parametrize(
    "first",
    ["import unified_map\nimport cluster_setup", "import cluster_setup\nimport unified_map"],
)
def test_a_users_own_cluster_setup_module_does_not_break_unified_map(tmp_path, first):
    (tmp_path / "cluster_setup.py").write_text("MINE = 1\n")
    code = USER_SCRIPT.format(first=first)
    (tmp_path / "job.py").write_text(code)
    for command in ([sys.executable, "job.py"], [sys.executable, "-c", code]):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1", "[1]", "dask", "True", "True"], result.stdout


def test_elsewhere_unified_map_uses_the_top_level_cluster_setup():
    import unified_map
    from unified_map._cluster import cluster_setup as loaded

    assert loaded is cluster_setup and unified_map.cluster_setup is cluster_setup
