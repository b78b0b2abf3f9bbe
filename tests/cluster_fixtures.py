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
import time
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
    #: Whether report_status() keeps listing a worker the scheduler lost (as dead).
    lists_lost_workers: bool = False

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

    #: Regular expression that finds the address in a ``block=True`` scheduler's banner.
    scheduler_banner: str = r"scheduler at (\S+?)[,;]"
    #: Whether the session cluster's report shows a dashboard link.
    has_dashboard: bool = False
    #: ``start_worker`` options asking for 2 cores and 1.5 GB per worker, and how many
    #: workers that one call starts.
    bigger_worker_options: tuple[dict, int] = ({"memory": "1.5GB"}, 1)
    #: What the engine's memory sizes call a gigabyte, in bytes (Spark's units are binary).
    gigabyte: int = 10**9

    def scheduler_url(self, address: str) -> str:
        """How the engine's errors name the scheduler at ``"host:port"``."""
        return address


class DaskEngine(ClusterEngine):
    name = "dask"
    engine_module = "distributed"
    extra = "dask"
    scheduler_banner = r"scheduler at (tcp://\S+?)[,;]"
    has_dashboard = True
    bigger_worker_options = ({"n_workers": 2, "threads": 2, "memory": "1.5GB"}, 2)

    def scheduler_url(self, address: str) -> str:
        return f"tcp://{address}"

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


class RayEngine(ClusterEngine):
    """A Ray head (0 CPUs) and worker nodes of 1 CPU each. Several nodes on one machine stay
    on loopback only in a network namespace with nothing but ``lo``: the tests that start
    them run in one (``tests/test_cluster_ray.py``)."""

    name = "ray"
    engine_module = "ray"
    extra = "ray"
    scheduler_banner = r"\(scheduler\) at (\S+?)[,;]"
    lists_lost_workers = True
    bigger_worker_options = ({"cores": 2, "memory": "1.5GB"}, 1)

    def start_cluster(self, n_workers: int = 2) -> RunningCluster:
        setup = self.setup
        address = setup.start_scheduler("127.0.0.1:0")
        try:
            workers = setup.start_worker(address, n_workers=n_workers, memory=10**9)
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
            call = f"ray.start_scheduler({address!r}, block=True)"
        else:
            call = f"ray.start_worker({address!r}, block=True, n_workers=2)"
        return f"from cluster_setup import ray\n{call}\nprint('returned', flush=True)\n"


class SparkEngine(ClusterEngine):
    """A Spark standalone master and workers of 1 core, 1 GiB each (Spark's units are
    binary), started from pyspark's own distribution."""

    name = "spark"
    engine_module = "pyspark"
    extra = "spark"
    scheduler_banner = r"scheduler at (spark://\S+?)[,;]"
    lists_lost_workers = True
    has_dashboard = True
    bigger_worker_options = ({"cores": 2, "memory": "1536m"}, 1)
    gigabyte = 2**30

    def scheduler_url(self, address: str) -> str:
        return f"spark://{address}"

    def start_cluster(self, n_workers: int = 2) -> RunningCluster:
        setup = self.setup
        address = setup.start_scheduler("127.0.0.1:0")
        try:  # the workers start side by side
            workers = setup.start_worker(address, n_workers=n_workers, cores=1, memory="1g")
        except BaseException:
            setup.stop(address)
            raise
        processes = [p for p in setup.started if p.address == address]
        return RunningCluster(self, address, workers, processes)

    def start_worker(self, address: str, **options) -> StartedProcess:
        connection = self.setup.connection
        executors = connection and connection.context._jsc.sc().getExecutorIds().size()
        before = {p.pid for p in self.setup.started}
        self.setup.start_worker(address, **options)
        (record,) = [p for p in self.setup.started if p.pid not in before]
        if connection is not None:
            # The master launches the connected app's executor on a new worker a few seconds
            # after it joins: wait until it joined the app, so the worker takes tasks now.
            deadline = time.monotonic() + 60
            while connection.context._jsc.sc().getExecutorIds().size() <= executors:
                assert time.monotonic() < deadline, "no executor started on the new worker"
                time.sleep(0.1)
        return record

    def blocking_script(self, role: str, address: str) -> str:
        if role == "scheduler":
            call = f"spark.start_scheduler({address!r}, block=True)"
        else:
            call = f"spark.start_worker({address!r}, block=True, n_workers=2, memory='512m')"
        return f"from cluster_setup import spark\n{call}\nprint('returned', flush=True)\n"


ENGINES: dict[str, ClusterEngine] = {
    "dask": DaskEngine(),
    "ray": RayEngine(),
    "spark": SparkEngine(),
}


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


@pytest.fixture(scope="session")
def ray_cluster(request) -> RunningCluster:
    """A Ray head (0 CPUs) and two worker nodes of 1 CPU, 1 GB on 127.0.0.1, for the session.

    Only inside a network namespace that has nothing but ``lo`` (see
    ``tests/test_cluster_ray.py``): elsewhere Ray's nodes would use the outward address.
    """
    return _start_session_cluster(request, ENGINES["ray"])


@pytest.fixture
def ray_connection(ray_cluster):
    """The session's Ray cluster as the active connection, for one test only."""
    connection = cluster_setup.ray.connect_to_scheduler(ray_cluster.address, timeout=30)
    try:
        yield connection
    finally:
        connection.disconnect()
        assert cluster_setup.active_connection() is None


@pytest.fixture(scope="session")
def spark_cluster(request) -> RunningCluster:
    """A Spark master and two workers of 1 core, 1 GiB on 127.0.0.1, for the session."""
    return _start_session_cluster(request, ENGINES["spark"])


@pytest.fixture(scope="session")
def spark_context_keeper(spark_cluster):
    """Holds a connection to the session's Spark cluster between tests, so that connecting
    in each test shares its SparkContext rather than starting one (seconds each). It gives way
    (like a private local session) when a test needs another master or ``local[n]``."""
    held: dict = {}
    yield held
    if held.get("keeper") is not None:
        held["keeper"].disconnect()


@pytest.fixture
def spark_connection(spark_cluster, spark_context_keeper):
    """The session's Spark cluster as the active connection, for one test only."""
    keeper = spark_context_keeper.get("keeper")
    if keeper is None or not keeper.connected:
        keeper = cluster_setup.spark._connect(spark_cluster.address, timeout=30)
        keeper.evictable = True
        spark_context_keeper["keeper"] = keeper
    connection = cluster_setup.spark.connect_to_scheduler(spark_cluster.address, timeout=30)
    try:
        yield connection
    finally:
        connection.disconnect()
        assert cluster_setup.active_connection() is None


def _spark_target(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("backend") if callspec is not None else None
    return target if isinstance(target, str) and target.startswith("spark-") else None


def pytest_collection_modifyitems(items):
    """pyspark runs one SparkContext per process: run the contract tests of each Spark target
    together (``spark-local`` first, then ``spark-connected``), each after the other targets
    of its module, so the suite switches SparkContexts twice rather than at every test."""
    moved = [item for item in items if _spark_target(item)]
    if not moved:
        return
    module = moved[0].module
    kept = [item for item in items if not _spark_target(item)]
    same = [i for i, item in enumerate(kept) if getattr(item, "module", None) is module]
    at = same[-1] + 1 if same else items.index(moved[0])
    moved.sort(key=lambda item: _spark_target(item) != "spark-local")  # stable
    items[:] = kept[:at] + moved + kept[at:]
