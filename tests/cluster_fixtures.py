"""Session-wide real clusters on 127.0.0.1, started once and always stopped (see conftest).

Each engine is described once by a small :class:`ClusterEngine` subclass: how to start a
scheduler and workers through its ``cluster_setup`` object, the code of a ``block=True`` job
script, and the module whose absence must produce the install hint. The generic suite in
``tests/test_cluster_common.py`` runs on every engine listed in :data:`ENGINES`; the Spark
and Ray issues add a subclass, a session fixture and a ``<engine>_connection`` fixture.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import pytest

import cluster_setup
from cluster_setup.base import ClusterSetup
from cluster_setup.processes import StartedProcess
from tests.helpers import is_alive, process_tree_pids


@dataclass
class RunningCluster:
    """A cluster a fixture started: its scheduler address and the processes behind it."""

    engine: ClusterEngine
    address: str
    worker_addresses: list[str]
    processes: list[StartedProcess] = field(default_factory=list)

    def pids(self) -> set[int]:
        """Every live process of the cluster: the started ones and their descendants."""
        return process_tree_pids([p.pid for p in self.processes])


class ClusterEngine:
    """How the generic cluster suite drives one engine. Subclass once per engine."""

    #: attribute of :mod:`cluster_setup` and name of the unified_map backend
    name: str = ""
    #: top-level module whose absence must give ``pip install unified_map[<extra>]``
    engine_module: str = ""
    extra: str = ""

    @property
    def setup(self) -> ClusterSetup:
        return getattr(cluster_setup, self.name)

    def start_cluster(self, n_workers: int = 2) -> RunningCluster:
        """Start a scheduler and ``n_workers`` single-core workers, each its own process."""
        raise NotImplementedError

    def start_worker(self, address: str, **options) -> StartedProcess:
        """Start one more worker process and return its record."""
        raise NotImplementedError

    def stop_worker(self, record: StartedProcess) -> None:
        """Stop a worker started by :meth:`start_worker`, and nothing else."""
        self.setup.stop_process(record)

    def kill_worker(self, record: StartedProcess) -> None:
        """Kill a worker the hard way (SIGKILL to its own process group), as a crash would."""
        os.killpg(record.pid, signal.SIGKILL)
        record.popen.wait()

    def blocking_script(self, role: str, address: str) -> str:
        """Python source of a job script running ``start_<role>(..., block=True)``."""
        raise NotImplementedError


class DaskEngine(ClusterEngine):
    name = "dask"
    engine_module = "distributed"
    extra = "dask"

    def start_cluster(self, n_workers: int = 2) -> RunningCluster:
        setup = self.setup
        address = setup.start_scheduler("127.0.0.1:0", dashboard_port=0)
        try:
            workers = []
            for _ in range(n_workers):
                workers += setup.start_worker(address, n_workers=1, threads=1, memory="1GB")
        except BaseException:
            setup.stop(address)
            raise
        processes = [p for p in setup.started if p.address == address]
        return RunningCluster(self, address, workers, processes)

    def start_worker(self, address: str, **options) -> StartedProcess:
        before = {p.pid for p in self.setup.started}
        self.setup.start_worker(address, **options)
        (record,) = [p for p in self.setup.started if p.pid not in before]
        return record

    def blocking_script(self, role: str, address: str) -> str:
        if role == "scheduler":
            call = f"dask.start_scheduler({address!r}, block=True, dashboard_port=None)"
        else:
            call = f"dask.start_worker({address!r}, block=True, n_workers=2)"
        return f"from cluster_setup import dask\n{call}\nprint('returned', flush=True)\n"


ENGINES: dict[str, ClusterEngine] = {"dask": DaskEngine()}


def _start_session_cluster(request, engine: ClusterEngine) -> RunningCluster:
    cluster = engine.start_cluster()
    pids = cluster.pids()

    def stop():
        engine.setup.stop(cluster.address)
        left = [pid for pid in pids if is_alive(pid)]
        assert not left, f"{engine.name} cluster processes left running: {left}"

    request.addfinalizer(stop)
    return cluster


@pytest.fixture(scope="session")
def dask_cluster(request) -> RunningCluster:
    """A scheduler and two single-threaded workers on 127.0.0.1 free ports, for the session."""
    return _start_session_cluster(request, ENGINES["dask"])


@pytest.fixture
def dask_connection(dask_cluster):
    """The session's dask cluster as the active connection, for one test only."""
    connection = cluster_setup.dask.connect_to_scheduler(dask_cluster.address, timeout=30)
    try:
        yield connection
    finally:
        connection.disconnect()
        assert cluster_setup.active_connection() is None
