"""A script that started an engine session itself (``ray.init()``, a SparkSession, a dask
``Client``) and then maps with ``backend=<engine>``: the map runs on that session, which is
left running; connecting elsewhere meanwhile is a clear error (Ray and pyspark allow one
session per process); once the script ends its session, maps start their own again.

Each case runs as a script in a fresh interpreter, on the real engine, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys

import psutil
import pytest

from tests.helpers import is_alive, run_python
from tests.test_cluster_common import REPO_ROOT

# Each script starts the user's session, maps on it, checks where the items ran, and prints
# one JSON line; {engine} parts differ, the checks are the same.
SESSIONS = {
    "dask": """
from distributed import Client, LocalCluster, get_worker
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)  # made dask's default client, as dask does unless told otherwise
def where(x):
    return get_worker().address
mine = set(client.scheduler_info()["workers"])
def still_works():
    return client.submit(abs, -5).result() == 5
conflict = None  # dask allows several clients: nothing to refuse
def end():
    client.close()
    cluster.close()
""",
    "ray": """
import ray
ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
         logging_level="ERROR", log_to_driver=False)
def where(x):
    import ray
    return ray.get_runtime_context().get_job_id()
mine = {ray.get_runtime_context().get_job_id()}
def negate(x):
    return -x
def still_works():
    return ray.is_initialized() and ray.get(ray.remote(negate).remote(-3)) == 3
conflict = "ray.shutdown()"
end = ray.shutdown
""",
    "spark": """
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]").appName("the script's own")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
def where(x):
    from pyspark import TaskContext
    return TaskContext.get() is not None
mine = {True}
java = lambda: sum("java" in p.name() for p in psutil.Process().children(recursive=True))
def still_works():
    return spark.range(3).count() == 3 and java() == 1  # no second driver JVM was started
conflict = "spark.stop()"
end = spark.stop
""",
}

CHECKS = """
import json, psutil
import unified_map as um
from unified_map import cluster_setup

places = set(um.parallel(where, range(6), backend=ENGINE))
result = {"ran_on_own_session": places <= mine and bool(places), "own_works": still_works()}
if conflict is not None:  # a second session of the engine is refused, and says how to fix it
    try:
        getattr(cluster_setup, ENGINE).start_local_cluster(1).disconnect()
        result["conflict"] = "no error"
    except cluster_setup.errors.ClusterSetupError as exc:
        result["conflict"] = str(exc)
    result["own_works_after"] = still_works()
end()
result["after_end"] = um.parallel(abs, [-1, -2], backend=ENGINE)
result["children"] = [p.pid for p in psutil.Process().children(recursive=True)]
print(json.dumps(result))
"""


@pytest.mark.parametrize("engine", sorted(SESSIONS))
def test_a_map_runs_on_the_session_the_script_started_itself(engine, tmp_path):
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,  # workers on this Python, as a working setup has
        # what keeps a single Ray node on loopback, read when ray is imported
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "HOME": str(tmp_path),  # where a token Ray writes goes (~/.ray/auth_token)
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    code = f"import psutil\nENGINE = {engine!r}\n" + SESSIONS[engine] + CHECKS
    result = run_python(code, timeout=300, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["ran_on_own_session"] and found["own_works"], found
    if engine != "dask":
        assert (
            SESSIONS[engine].split("conflict = ")[1].split("\n")[0].strip('"')
            in (found["conflict"])
        ), found
        assert found["own_works_after"], found
    assert found["after_end"] == [1, 2]
    left = [pid for pid in found["children"] if is_alive(pid)]
    for pid in left:  # what the script's exit stops may take a moment
        try:
            psutil.Process(pid).wait(30)
        except psutil.NoSuchProcess:
            pass
    assert not [pid for pid in left if is_alive(pid)]
