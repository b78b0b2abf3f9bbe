"""``unified-map launch`` on a simulated 3-task allocation, per engine, next to the same
engine's scheduler and workers started by its own command line.

Three processes with SLURM's variables (``SLURM_PROCID``/``SLURM_NTASKS``) and a shared
temporary folder, everything on 127.0.0.1. Two figures each, in seconds from the start:
the script's first result, and every rank stopped.

- launch: 3 x ``unified-map launch ENGINE --scheduler-file F --host 127.0.0.1 -- python job.py``;
  the job runs ``unified_map.parallel(abs, ...)`` with no backend (the variable route).
- native: the engine's own daemons (dask: ``dask scheduler --scheduler-file`` and 2 x ``dask
  worker --scheduler-file``; spark: pyspark's ``spark-class`` Master and 2 Workers) plus a
  driver using the engine's own client (``Client(scheduler_file=...)``, ``SparkContext``);
  then SIGTERM to the daemons.

Run: ``python benchmarks/launch.py [--engines dask,spark] [--repeat 1]``. Ray only inside a
network namespace with nothing but ``lo`` (``unshare -n``, as tests/test_cluster_ray.py does):
``--engines ray`` there.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, table  # noqa: E402

PYTHON = sys.executable
BIN = os.path.dirname(PYTHON)

JOB = """
import sys, time
import unified_map as um
results = um.parallel(abs, range(-4, 4))
print("FIRST", time.time(), flush=True)
"""

NATIVE_DRIVER = {
    "dask": """
import sys, time
from distributed import Client
client = Client(scheduler_file=sys.argv[1], timeout=120)
client.wait_for_workers(2, timeout=120)
client.gather(client.map(abs, range(-4, 4)))
print("FIRST", time.time(), flush=True)
client.close()
""",
    "spark": """
import sys, time
from pyspark import SparkConf, SparkContext
conf = SparkConf().setMaster(sys.argv[1]).set("spark.driver.host", "127.0.0.1")
conf = conf.set("spark.driver.bindAddress", "127.0.0.1").set("spark.ui.enabled", "false")
context = SparkContext(conf=conf)
context.setLogLevel("ERROR")
context.parallelize(range(-4, 4), 2).map(abs).collect()
print("FIRST", time.time(), flush=True)
context.stop()
""",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_result(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("FIRST "):
            return float(line.split()[1])
    raise RuntimeError(f"the job printed no result:\n{output}")


def run_launch(engine: str, folder: str) -> tuple[float, float]:
    job = os.path.join(folder, "job.py")
    with open(job, "w") as file:
        file.write(JOB)
    path = os.path.join(folder, "scheduler.json")
    start = time.time()
    tasks = []
    for rank in range(3):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS="3", SLURM_JOB_ID="1")
        command = [os.path.join(BIN, "unified-map"), "launch", engine, "--scheduler-file", path]
        command += ["--host", "127.0.0.1", "--cores", "1", "--memory", "1GiB", "--", PYTHON, job]
        tasks.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        )
    outputs = [task.communicate(600)[0] for task in tasks]
    stopped = time.time()
    if any(task.returncode for task in tasks):
        raise RuntimeError(f"launch failed: {[t.returncode for t in tasks]}\n{outputs[0]}")
    return first_result(outputs[0]) - start, stopped - start


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_native(engine: str, folder: str) -> tuple[float, float]:
    start_time = time.time()
    daemons = []
    if engine == "dask":
        path = os.path.join(folder, "dask-scheduler.json")
        dask = os.path.join(BIN, "dask")
        daemons.append(start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--no-dashboard", "--scheduler-file", path]))  # fmt: skip
        for _ in range(2):
            daemons.append(start([dask, "worker", "--scheduler-file", path, "--host",
                                  "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                                  "--memory-limit", "1GiB", "--no-dashboard"]))  # fmt: skip
        target = path
    else:
        import pyspark

        home = os.path.dirname(pyspark.__file__)
        spark_class = os.path.join(home, "bin", "spark-class")
        env = dict(os.environ, SPARK_HOME=home, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=PYTHON)
        port = free_port()
        daemons.append(start([spark_class, "org.apache.spark.deploy.master.Master", "--host",
                              "127.0.0.1", "--port", str(port), "--webui-port",
                              str(free_port())], env))  # fmt: skip
        for _ in range(2):
            daemons.append(start([spark_class, "org.apache.spark.deploy.worker.Worker",
                                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                  "--webui-port", str(free_port()),
                                  f"spark://127.0.0.1:{port}"], env))  # fmt: skip
        target = f"spark://127.0.0.1:{port}"
    try:
        driver = subprocess.run(
            [PYTHON, "-c", NATIVE_DRIVER[engine], target],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if driver.returncode:
            raise RuntimeError(f"native driver failed:\n{driver.stderr[-2000:]}")
    finally:
        for daemon in reversed(daemons):  # workers first
            os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    return first_result(driver.stdout) - start_time, time.time() - start_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="dask,spark", help="comma-separated engines")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (median)")
    args = parser.parse_args()
    header("benchmarks/launch.py: a simulated 3-task allocation, launch vs the engine's own CLI")
    rows = []
    for engine in args.engines.split(","):
        measured = {"launch": [], "native": []}
        for _ in range(args.repeat):
            for kind, run in (("launch", run_launch), ("native", run_native)):
                if kind == "native" and engine not in NATIVE_DRIVER:
                    continue
                with tempfile.TemporaryDirectory() as folder:
                    measured[kind].append(run(engine, folder))
        figures = {
            kind: tuple(statistics.median(v[i] for v in values) for i in (0, 1))
            for kind, values in measured.items()
            if values
        }
        launch = figures["launch"]
        native = figures.get("native")
        rows.append(
            [
                engine,
                f"{launch[0]:.1f}",
                f"{launch[1]:.1f}",
                f"{native[0]:.1f}" if native else "-",
                f"{native[1]:.1f}" if native else "-",
                f"{launch[1] / native[1]:.2f}x" if native else "-",
            ]
        )
        print(f"{engine}: done", flush=True)
    print()
    headers = ["engine", "launch: first result s", "launch: all stopped s"]
    headers += ["native: first result s", "native: all stopped s", "launch/native (stopped)"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
