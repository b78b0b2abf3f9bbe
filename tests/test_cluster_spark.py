"""Spark: the generic cluster suite on a real standalone master and two workers, plus what
only Spark does (a private ``local[n]`` session, one SparkContext per process, Java checks,
chunks as Spark jobs that are cancelled with their job group)."""

from __future__ import annotations

import sys
import time

import pytest

import cluster_setup
import unified_map as um
from cluster_setup._spark import memory_megabytes
from cluster_setup.errors import EngineNotInstalledError
from tests.cluster_fixtures import ENGINES
from tests.helpers import process_tree_pids, run_python
from tests.test_cluster_common import REPO_ROOT, ClusterSuite, listening_sockets
from unified_map.backends import acquire_backend, release_backend
from unified_map.backends.base import run_packed
from unified_map.backends.spark import _JobRunner


class TestSparkCluster(ClusterSuite):
    @pytest.fixture
    def engine(self):
        return ENGINES["spark"]

    @pytest.fixture
    def cluster(self, spark_cluster):
        return spark_cluster

    @pytest.fixture
    def connection(self, spark_connection):
        # the same connection the suite makes, sharing the session's SparkContext
        return spark_connection


def sleep_then_return(x, seconds=0.5):
    time.sleep(seconds)
    return x


def interpreter(_):
    return sys.executable


def test_same_object_from_both_packages():
    assert um.cluster_setup.spark is cluster_setup.spark
    from cluster_setup import spark

    assert spark is cluster_setup.spark and spark.engine == "spark"


def test_a_master_listens_on_loopback_without_a_rest_port(spark_cluster):
    listening = listening_sockets(spark_cluster.pids())
    assert {ip for _, ip, _ in listening} == {"127.0.0.1"}
    assert 6066 not in {port for _, _, port in listening}  # REST submission server is off


def test_connected_maps_run_this_interpreter_as_spark_tasks(spark_connection):
    assert spark_connection.slots() == 2
    backend = acquire_backend("spark")
    try:
        assert backend.n_workers == 2
    finally:
        release_backend(backend)
    assert set(um.parallel(interpreter, range(8), chunksize=1)) == {sys.executable}
    # the driver too stays on loopback
    gateway = spark_connection.context._gateway.proc.pid
    assert {ip for _, ip, _ in listening_sockets(process_tree_pids([gateway]))} == {"127.0.0.1"}


def test_chunks_travel_as_bytes_and_run_as_one_job_of_one_task_per_core(
    spark_connection, monkeypatch
):
    jobs = []
    original = _JobRunner._run

    def spy(self, chunks):
        jobs.append([future.call for future in chunks])
        return original(self, chunks)

    monkeypatch.setattr(_JobRunner, "_run", spy)
    assert um.parallel(abs, range(-100, 100), chunksize=25) == [abs(x) for x in range(-100, 100)]
    calls = [call for job in jobs for call in job]
    assert len(calls) == 8 and len(jobs) < 8  # submitted together: grouped into jobs
    for fn, args in calls:
        assert fn is run_packed and len(args) == 1 and isinstance(args[0], bytes)


def test_stopping_early_cancels_the_spark_job_group(spark_connection):
    tracker = spark_connection.context.statusTracker()
    results = um.imap(sleep_then_return, range(40), chunksize=1)
    assert next(results) == 0
    started = time.monotonic()
    results.close()  # the consumer stops: the running Spark jobs are cancelled
    while tracker.getActiveJobsIds() and time.monotonic() - started < 30:
        time.sleep(0.05)
    assert not tracker.getActiveJobsIds()
    assert time.monotonic() - started < 3  # cancelled, not run to the end (40 x 0.5 s)
    assert um.parallel(abs, [-1, -2]) == [1, 2]


def test_local_session_is_private_and_stopped_on_disconnect():
    assert cluster_setup.active_connection() is None
    connection = cluster_setup.spark.start_local_cluster(2)
    try:
        assert connection.setup is not cluster_setup.spark and not connection.active
        assert connection.address == "local[2]" and connection.slots() == 2
        assert connection.context.parallelize([-1, -2], 2).map(abs).collect() == [1, 2]
        conf = dict(connection.context.getConf().getAll())
        assert conf["spark.driver.memory"] == "4g" and conf["spark.ui.enabled"] == "false"
    finally:
        connection.disconnect()
    assert not connection.reachable and not connection.connected


def test_twenty_payloads_of_10_mb_go_out_and_back_in_local_mode():
    payloads = [bytes([i]) * 10_000_000 for i in range(20)]
    assert um.parallel(bytes, payloads, backend="spark") == payloads


@pytest.mark.parametrize("java", ["missing", "old"])
def test_no_java_or_an_old_one_is_a_clear_error_before_any_jvm(java, tmp_path, monkeypatch):
    if java == "old":
        fake = tmp_path / "bin" / "java"
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
        fake.chmod(0o755)
        expected = r"11\.0\.22.*too old.*Java 17 or later"
    else:
        expected = r"no Java was found.*Java 17 or later"
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    setup = cluster_setup.spark
    before = list(setup.started)
    for call in (
        lambda: setup.start_scheduler("127.0.0.1:0"),
        lambda: setup.start_worker("127.0.0.1:1"),
        lambda: setup.connect_to_scheduler("127.0.0.1:1"),
    ):
        with pytest.raises(EngineNotInstalledError, match=expected):
            call()
    assert setup.started == before


def test_memory_is_checked_in_sparks_own_form():
    with pytest.raises(ValueError, match="like '512m' or '2g'"):
        cluster_setup.spark.start_worker("127.0.0.1:1", memory="1.5GB")
    assert memory_megabytes("2G") == 2048 and memory_megabytes(3 * 2**30) == 3072


def test_a_script_using_spark_prints_nothing_on_stderr():
    result = run_python(
        """
        import unified_map as um
        print(um.parallel(abs, [-1, -2, -3], backend="spark"))
        print(um.parallel(lambda x: print("from a task") or x, [4], backend="spark"))
        """,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[1,", "2,", "3]", "[4]"]
    assert result.stderr == "from a task\n"  # what a task prints is kept; Spark's noise is not
