"""What happens when things go wrong in workers: crashes, Ctrl-C, things that will not pickle.

Process backends only: these faults cannot happen to in-process backends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import unified_map as um
from tests.helpers import is_alive, run_python
from unified_map.errors import UnpicklableRemoteError, WorkerLostError

PROCESS_BACKENDS = ["multiprocessing", "futures", "joblib"]


def exit_on_3(x):
    if x == 3:
        os._exit(7)  # a hard crash: no exception, the worker process is simply gone
    return x


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_crashed_worker_fails_the_map_instead_of_hanging(name):
    with pytest.raises(WorkerLostError):
        um.parallel(exit_on_3, range(8), backend=name, chunksize=1)
    # The broken pool was replaced: the next call works.
    assert um.parallel(abs, [-1, -2], backend=name) == [1, 2]


def return_a_lock(x):
    import threading

    return threading.Lock()


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_exception_that_cannot_be_rebuilt_keeps_its_name_and_text(name):
    # In a fresh interpreter: once distributed is imported, tblib's pickling hooks (which it
    # installs) can rebuild such exceptions, and the caller then gets the type itself.
    result = run_python(
        f"""
        import unified_map as um
        from unified_map.errors import UnpicklableRemoteError

        class NeedsTwoArgs(Exception):
            def __init__(self, code, detail):
                super().__init__(f"{{code}}: {{detail}}")  # pickles, but cannot be rebuilt

        def fail(x):
            raise NeedsTwoArgs(x, "bad")

        try:
            um.parallel(fail, [5], backend={name!r})
        except UnpicklableRemoteError as exc:
            print(exc.type_name, "|", exc, "|", "fail" in exc.__cause__.traceback_text)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "__main__.NeedsTwoArgs | __main__.NeedsTwoArgs: 5: bad | True"


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_result_that_cannot_be_pickled_names_the_item(name):
    with pytest.raises(UnpicklableRemoteError, match="result could not be pickled") as caught:
        um.parallel(return_a_lock, range(3), backend=name, chunksize=3)
    notes = "\n".join(caught.value.__notes__)
    assert "the result of item 0 of the input: 0 could not be sent back" in notes
    assert "func failed" not in notes  # func did not fail: its result could not travel


@pytest.mark.parametrize("name", ["serial", "threads"])
def test_in_process_backends_need_no_pickling(name):
    import threading

    locks = um.parallel(lambda _: threading.Lock(), range(3), backend=name)
    assert all(hasattr(lock, "acquire") for lock in locks)


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_function_defined_in_main_script_without_guard(tmp_path, name):
    script = tmp_path / "research.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import unified_map as um

            def shift(x, by=100):
                return x + by

            print(um.parallel(shift, range(5), backend={name!r}))
            print(um.parallel(lambda x: x * 3, range(3), backend={name!r}))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[100, 101, 102, 103, 104]", "[0, 3, 6]"]


def _wait_for_lines(path, count, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().split()) >= count:
            return [int(pid) for pid in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError(f"workers did not start within {timeout}s")


def _gone(pid):
    return not is_alive(pid)


@pytest.mark.parametrize("name", PROCESS_BACKENDS + ["threads"])
def test_ctrl_c_stops_the_map_and_its_workers(tmp_path, name):
    pids_file = tmp_path / "pids"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, time
                import unified_map as um

                def slow(x):
                    with open({str(pids_file)!r}, "a") as f:
                        f.write(f"{{os.getpid()}}\\n")
                    time.sleep(60)

                try:
                    um.parallel(slow, range(20), backend={name!r}, n_workers=2, chunksize=1)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = _wait_for_lines(pids_file, 2)
        child.send_signal(signal.SIGINT)  # what Ctrl-C sends to the main process
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "interrupted" in out, err
    if name == "threads":
        return  # threads die with their process, which has exited
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = [pid for pid in pids if not _gone(pid)]
    for pid in leftovers:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


def test_interpreter_exit_shuts_pools_down():
    result = run_python(
        """
        import unified_map as um, psutil
        um.parallel(abs, range(10), backend="multiprocessing", n_workers=2)
        um.parallel(abs, range(10), backend="futures", n_workers=2)
        print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)))
        """
    )
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) >= 4
    time.sleep(0.5)
    assert [pid for pid in pids if not _gone(pid)] == []


def test_joblib_backend_and_joblib_parallel_share_the_process_peacefully():
    from joblib import Parallel, delayed

    assert um.parallel(abs, [-1, -2], backend="joblib", n_workers=2) == [1, 2]
    assert Parallel(n_jobs=2)(delayed(abs)(x) for x in [-3, -4]) == [3, 4]
    assert um.parallel(abs, [-5], backend="joblib", n_workers=2) == [5]
    assert Parallel(n_jobs=2)(delayed(abs)(x) for x in [-6]) == [6]


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_unpicklable_func_or_item_is_named(name):
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError) as caught:
        um.parallel(lambda x: (lock, x), [1, 2], backend=name)
    assert "could not pickle func" in "\n".join(caught.value.__notes__)
    with pytest.raises(TypeError) as caught:
        um.parallel(id, [1, lock, 3], backend=name, chunksize=3)
    notes = "\n".join(caught.value.__notes__)
    assert "could not pickle item 1 of the input" in notes and "backend='threads'" in notes


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_nested_parallel_in_a_worker_runs_serially_and_exits_cleanly(name):
    # In a child interpreter, since the failure this guards against is a hang at exit.
    result = run_python(
        f"""
        import os
        import unified_map as um

        def inner(x):
            return (x, os.getpid())

        def outer(n):
            nested = um.parallel(inner, range(n), backend={name!r})  # explicitly nested
            default = um.parallel(inner, range(n))                   # default backend
            assert {{pid for _, pid in nested + default}} <= {{os.getpid()}}, "pool in worker"
            return sum(x for x, _ in nested) + sum(x for x, _ in default)

        print(um.parallel(outer, range(6), backend={name!r}, chunksize=1))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([2 * sum(range(n)) for n in range(6)])


def test_worker_that_died_while_idle_does_not_fail_the_next_map():
    import time as clock

    pool_pids = set(
        um.parallel(
            lambda _: os.getpid(), range(20), backend="multiprocessing", n_workers=2, chunksize=1
        )
    )
    os.kill(next(iter(pool_pids)), signal.SIGKILL)  # a worker of our own warm pool, idle
    clock.sleep(0.5)  # multiprocessing replaces it meanwhile
    slow = um.parallel(
        lambda x: clock.sleep(0.6) or x,
        range(4),
        backend="multiprocessing",
        n_workers=2,
        chunksize=1,
    )
    assert slow == [0, 1, 2, 3]


@pytest.mark.parametrize("name", [*PROCESS_BACKENDS, "dask"])
def test_the_workers_traceback_names_the_users_file_and_line(tmp_path, name):
    # cloudpickle blanks the file name of functions it pickles by value (a script's, a
    # notebook's, closures): the traceback must still point at the user's file.
    script = tmp_path / "research.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import unified_map as um

            def helper(x):
                return 10 / (x - 2)

            def bad(x):
                return helper(x) + 1

            um.parallel(bad, range(4), backend={name!r}, chunksize=1)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert f'File "{script}", line 8, in bad' in result.stderr, result.stderr
    assert f'File "{script}", line 5, in helper' in result.stderr
    assert "return 10 / (x - 2)" in result.stderr  # the source line, read on the worker
    assert "<dynamic-code>" not in result.stderr


def test_an_uncaught_error_prints_the_item_and_the_workers_traceback():
    # What a script's user reads on the terminal, on every supported Python: 3.10 does not
    # print PEP 678 notes by itself.
    result = run_python(
        """
        import unified_map as um

        def invert(x):
            return 1 / x

        um.parallel(invert, [4, 2, 0, 1], backend="multiprocessing", chunksize=1)
        """
    )
    assert result.returncode == 1
    err = result.stderr
    assert "unified_map: func failed on item 2 of the input: 0" in err, err
    assert "ZeroDivisionError: division by zero" in err
    assert "in invert" in err  # the worker's traceback, shown above the caller's


# A driver with warm pools of every local process backend and a Spark session, in the order
# that used to leave orphans: the fork pools inherit the Spark gateway's stdin pipe and each
# other's task queues, so no pipe closed when the driver was killed outright.
KILLED_DRIVER = """
import json, os, psutil, time
import unified_map as um
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
assert um.parallel(abs, [-1, -2], backend="spark") == [1, 2]
for name in ("multiprocessing", "futures", "joblib"):
    assert um.parallel(abs, range(-50, 0), backend=name, chunksize=5) == list(range(50, 0, -1))
print(json.dumps([p.pid for p in psutil.Process().children(recursive=True)]), flush=True)
time.sleep(600)
"""


def test_a_killed_driver_leaves_no_worker_or_jvm_behind():
    """SIGKILL (the OOM killer, a job's walltime): no exit handler runs, yet every pool
    worker and the Spark JVM must go by themselves."""
    driver = subprocess.Popen(
        [sys.executable, "-c", KILLED_DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pids: list[int] = []
    try:
        line = driver.stdout.readline()
        assert line, driver.stderr.read().decode()[-3000:]
        pids = json.loads(line)
        assert len(pids) >= 7, pids  # 2 + 2 + 2 pool workers, a JVM (and their helpers)
        driver.kill()
        driver.wait(30)
        deadline = time.monotonic() + 60  # a correctness bound, not a speed target
        while [pid for pid in pids if is_alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: psutil.Process(pid).cmdline()[:3] for pid in pids if is_alive(pid)}
        assert not left, f"outlived the killed driver: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
        driver.stderr.close()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
