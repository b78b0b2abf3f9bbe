"""HPC (issue 10): scheduler files, task ranks, the ``UNIFIED_MAP_SCHEDULER`` route, workers
started from the command line, version mismatches, and simulated allocations run by
``unified-map launch``: several real processes with SLURM-like variables and a shared folder,
everything bound to 127.0.0.1 (``--host 127.0.0.1``; workers of a loopback scheduler listen on
127.0.0.1). Ray's allocation runs in a network namespace, with the Ray suite.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import cluster_setup
import unified_map as um
from cluster_setup import hpc
from cluster_setup.errors import EnvironmentMismatchWarning, SchedulerFileError
from cluster_setup.processes import process_environment
from cluster_setup.scheduler_file import (
    read_scheduler_file,
    wait_for_scheduler_file,
    write_scheduler_file,
)
from tests.helpers import is_alive, process_tree_pids

# -- scheduler files, ranks, sizes, the variable ------------------------------------------


def test_scheduler_file_is_atomic_json_and_private_only_with_a_secret(tmp_path):
    path = str(tmp_path / "s.json")
    write_scheduler_file(path, "dask", "tcp://127.0.0.1:1")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044 == 0o044
    write_scheduler_file(path, "ray", "127.0.0.1:2", {"token": "x"}, secret=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_scheduler_file(path)["token"] == "x"
    assert os.listdir(tmp_path) == ["s.json"]  # no temporary file left behind


def test_a_file_from_dasks_own_scheduler_reads_as_dask(tmp_path):
    path = tmp_path / "dask.json"
    path.write_text(json.dumps({"type": "Scheduler", "address": "tcp://10.0.0.1:8786"}))
    assert read_scheduler_file(str(path))["engine"] == "dask"


def test_a_file_left_over_from_another_job_is_waited_past(tmp_path):
    path = str(tmp_path / "s.json")
    os.environ["SLURM_JOB_ID"] = "111"
    try:
        write_scheduler_file(path, "dask", "tcp://127.0.0.1:1")
    finally:
        del os.environ["SLURM_JOB_ID"]
    with pytest.raises(TimeoutError, match="left over from job 111, not this job"):
        wait_for_scheduler_file(path, 0.3, job="222")
    assert wait_for_scheduler_file(path, 0.3, job="111")["address"] == "tcp://127.0.0.1:1"


def test_a_scheduler_file_in_a_missing_folder_is_refused_before_anything_starts(tmp_path):
    before = list(cluster_setup.dask.started)
    with pytest.raises(SchedulerFileError, match="its folder does not exist"):
        cluster_setup.dask.start_scheduler(scheduler_file=str(tmp_path / "no" / "s.json"))
    assert cluster_setup.dask.started == before


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "3"}, (1, 3)),
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, (0, 2)),
        ({"OMPI_COMM_WORLD_RANK": "4", "OMPI_COMM_WORLD_SIZE": "8"}, (4, 8)),
        ({}, (0, 1)),
    ],
)
def test_task_rank_and_size_come_from_the_launcher(environ, expected):
    assert hpc.task_rank_and_size(environ)[:2] == expected


def test_a_rank_outside_the_size_is_an_error():
    with pytest.raises(ValueError, match="SLURM_PROCID=3 is not a rank of SLURM_NTASKS=3"):
        hpc.task_rank_and_size({"SLURM_PROCID": "3", "SLURM_NTASKS": "3"})


def test_memory_sizes_in_every_usual_form():
    assert hpc.parse_memory("4GB") == 4 * 10**9
    assert hpc.parse_memory("4g") == hpc.parse_memory("4GiB") == 4 * 2**30
    assert hpc.parse_memory(1000) == 1000
    with pytest.raises(ValueError, match="invalid memory size"):
        hpc.parse_memory("lots")


def test_an_unknown_scheme_in_the_variable_is_refused(monkeypatch):
    monkeypatch.setenv("UNIFIED_MAP_SCHEDULER", "http://node1:80")
    with pytest.raises(ValueError, match="expected dask://host:port"):
        um.parallel(abs, [1])


def test_the_variable_connects_a_script_that_names_no_backend(dask_cluster):
    """``dask://host:port``: an unchanged script runs on the cluster."""
    code = textwrap.dedent(
        """
        import os, cluster_setup, unified_map as um
        pids = um.parallel(lambda x: os.getpid(), range(4))
        connection = cluster_setup.active_connection()
        print(connection.engine, connection.address, sorted(set(pids)))
        """
    )
    host_port = dask_cluster.address.removeprefix("tcp://")
    env = dict(os.environ, UNIFIED_MAP_SCHEDULER=f"dask://{host_port}")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    engine, address, pids = done.stdout.split(" ", 2)
    assert (engine, address) == ("dask", dask_cluster.address)
    assert set(json.loads(pids)) <= dask_cluster.pids()


def test_started_processes_do_not_get_the_variable(monkeypatch):
    """A task mapping on a worker must not connect to the cluster from there."""
    monkeypatch.setenv("UNIFIED_MAP_SCHEDULER", "dask://127.0.0.1:1")
    assert "UNIFIED_MAP_SCHEDULER" not in process_environment()


# -- workers started from the command line -------------------------------------------------


def test_a_worker_started_from_the_command_line_imports_from_its_folder_and_is_checked(
    tmp_path, monkeypatch
):
    """The console script puts its working directory on the workers' path (as ``python -m``
    does), so the user's module there imports; a worker whose cloudpickle differs from the
    driver's (here: another version's metadata first on its path) is named, on connecting
    and in the report."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "hpc_cwd_module.py").write_text("def square(x):\n    return x * x\n")
    fake = folder / "cloudpickle-0.0.1.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: cloudpickle\nVersion: 0.0.1\n")
    console_script = os.path.join(os.path.dirname(sys.executable), "unified-map")
    dask = cluster_setup.dask
    address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
    worker = subprocess.Popen(
        [console_script, "worker", "dask", address, "--cores", "1", "--memory", "1GB"],
        cwd=folder,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in worker.stderr:  # the worker serves on: read up to the line wanted
            lines.append(line)
            if "worker(s) joined" in line or "error" in line:
                break
        assert "1 dask worker(s) joined" in line, "".join(lines)
        # the driver finds the folder last: its own cloudpickle's metadata comes first
        monkeypatch.setattr(sys, "path", [*sys.path, str(folder)])
        import hpc_cwd_module

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            connection = dask.connect_to_scheduler(address, timeout=30)
        with connection:
            assert um.parallel(hpc_cwd_module.square, range(4)) == [0, 1, 4, 9]
            status = dask.report_status()
        mismatch = [w for w in caught if issubclass(w.category, EnvironmentMismatchWarning)]
        assert len(mismatch) == 1, [str(w.message) for w in caught]
        assert "cloudpickle 0.0.1 (driver " in str(mismatch[0].message)
        (worker_address,) = status.mismatched
        assert status.mismatched[worker_address] == [
            f"cloudpickle 0.0.1 (driver {status.driver_versions['cloudpickle']})"
        ]
        assert f"MISMATCH {worker_address}: cloudpickle 0.0.1" in str(status)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        dask.stop(address)
        sys.modules.pop("hpc_cwd_module", None)


# -- simulated allocations -----------------------------------------------------------------

JOB_SCRIPT = """
import os, sys, time
import cluster_setup
import unified_map as um

results = um.parallel(abs, range(-3, 3))  # no backend: the allocation, through the variable
connection = cluster_setup.active_connection()
status = connection.setup.report_status()
print("RESULT", results, connection.engine, len(status.workers), flush=True)
if len(sys.argv) > 1:
    time.sleep(float(sys.argv[1]))
"""


class Task:
    """One task of a simulated allocation: ``unified-map launch`` with SLURM's variables."""

    def __init__(self, engine, rank, size, folder, *script_args):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(size))
        env["SLURM_JOB_ID"] = "4242"
        env.pop("UNIFIED_MAP_SCHEDULER", None)
        argv = [sys.executable, "-m", "unified_map", "launch", engine]
        argv += ["--scheduler-file", str(folder / "scheduler.json"), "--host", "127.0.0.1"]
        argv += ["--cores", "1", "--memory", "1GiB", "--timeout", "240", "--"]
        argv += [sys.executable, str(folder / "job.py"), *script_args]
        self.process = subprocess.Popen(
            argv, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.1)

    def finish(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout)
        self.reader.join(10)
        return code


def run_allocation(engine, folder, *script_args):
    """Start a 3-task allocation; return its tasks and every process they started, once
    task 0's script has its result (every rank's workers are up by then)."""
    (folder / "job.py").write_text(JOB_SCRIPT)
    tasks = [Task(engine, rank, 3, folder, *script_args) for rank in range(3)]
    try:
        tasks[0].wait_for("RESULT")
        pids = process_tree_pids([task.process.pid for task in tasks])
    except BaseException:
        kill_allocation(tasks)
        raise
    return tasks, pids


def kill_allocation(tasks):
    for pid in process_tree_pids([task.process.pid for task in tasks]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for task in tasks:
        task.process.wait()


def check_nothing_left(tasks, pids, folder):
    left = [pid for pid in pids if is_alive(pid)]
    assert not left, f"processes left running: {left}\n" + "\n".join(t.output for t in tasks)
    assert not (folder / "scheduler.json").exists()
    assert sorted(os.listdir(folder)) == ["job.py"]  # no rank marker left behind


@pytest.mark.parametrize("engine", ["dask", "spark"])
def test_an_allocation_runs_the_script_on_every_worker_and_stops_when_it_ends(engine, tmp_path):
    tasks, pids = run_allocation(engine, tmp_path)
    try:
        codes = [task.finish() for task in tasks]
    finally:
        kill_allocation(tasks)
    outputs = "\n".join(task.output for task in tasks)
    assert codes == [0, 0, 0], outputs
    assert f"RESULT [3, 2, 1, 0, 1, 2] {engine} 2" in tasks[0].output  # both workers seen
    assert "the script exited with code 0; stopping every task" in tasks[0].output
    for task in tasks[1:]:
        assert "stopping: the script ended (scheduler file removed)" in task.output
    assert " - INFO - " not in outputs  # one line per event, no engine log
    check_nothing_left(tasks, pids, tmp_path)


def test_sigterm_stops_a_whole_allocation_and_leaves_no_process(tmp_path):
    tasks, pids = run_allocation("dask", tmp_path, "600")  # the script would sleep on
    try:
        for task in tasks:  # what SLURM does at the end of the job
            task.process.send_signal(signal.SIGTERM)
        codes = [task.finish(120) for task in tasks]
    finally:
        kill_allocation(tasks)
    assert codes[0] == 128 + signal.SIGTERM and codes[1:] == [0, 0], codes
    for task in tasks:
        assert "stopping: SIGTERM received" in task.output, task.output
    check_nothing_left(tasks, pids, tmp_path)
