"""Maps that survive: the error policy, retries, time limits, checkpoints and unordered
results, written once and run on every backend (see ``CONTRACT_TARGETS``).

Items run in other processes (and on clusters in other interpreters), so the tests count
calls through files in ``tmp_path``, never through variables.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import unified_map as um
from tests.helpers import is_alive, process_tree_pids
from unified_map.errors import CheckpointError, CheckpointMismatchError, RemoteTraceback

PROCESS_BACKENDS = ["multiprocessing", "futures", "joblib", "auto"]
TIMEOUT = 0.5


# -- functions run by the maps (module level: every backend can ship them) --------------------


def fail_on_3_and_7(x):
    if x in (3, 7):
        raise ValueError(f"bad item {x}")
    return x * 10


def count_call(folder, x) -> int:
    """Note one call of ``x`` in ``folder``; return how many calls of ``x`` there were."""
    path = os.path.join(folder, f"calls-{x}")
    with open(path, "a") as file:
        file.write(".")
    with open(path) as file:
        return len(file.read())


def calls(folder, x) -> int:
    path = os.path.join(str(folder), f"calls-{x}")
    return os.path.getsize(path) if os.path.exists(path) else 0


class FlakyOn:
    """Fails the first ``times`` calls of each item in ``flaky`` with ``error``."""

    def __init__(self, folder, flaky, times, error=OSError):
        self.folder, self.flaky, self.times, self.error = str(folder), flaky, times, error

    def __call__(self, x):
        n = count_call(self.folder, x)
        if x in self.flaky and n <= self.times:
            raise self.error(f"flaky {x}, call {n}")
        return x + 100


class SlowOn:
    """Runs far past the time limit on ``always`` (and on ``first`` at its first call),
    noting a heartbeat per step: the test sees whether the work really stopped."""

    def __init__(self, folder, always=(), first=()):
        self.folder, self.always, self.first = str(folder), always, first

    def __call__(self, x):
        n = count_call(self.folder, x)
        if x in self.always or (x in self.first and n == 1):
            beat = os.path.join(self.folder, f"beat-{x}-{n}")
            for _ in range(100):  # about 5 s, in Python: every engine but threads stops it
                with open(beat, "a") as file:
                    file.write(".")
                time.sleep(0.05)
        return -x


def stuck_in_c(args):
    """Blocks the worker's SIGALRM, as C code that never returns to the interpreter would
    (the worker cannot interrupt it), and notes its pid."""
    folder, x = args
    if x == 1:
        with open(os.path.join(folder, "stuck-pid"), "w") as file:
            file.write(str(os.getpid()))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return x


def sleep_on_2(x):
    if x == 2:
        time.sleep(0.8)
    return x


# -- on_error ------------------------------------------------------------------------------


def test_on_error_return_fills_failed_slots_on_every_api(backend, caplog):
    expected = [fail_on_3_and_7(x) if x not in (3, 7) else None for x in range(12)]
    with caplog.at_level(logging.WARNING, logger="unified_map"):
        results = um.parallel(
            fail_on_3_and_7, range(12), backend=backend, chunksize=4, on_error="return"
        )
    assert [r if not isinstance(r, um.Failure) else None for r in results] == expected
    failures = [r for r in results if isinstance(r, um.Failure)]
    assert [(f.index, f.item, f.attempts) for f in failures] == [(3, "3", 1), (7, "7", 1)]
    assert all(isinstance(f.exception, ValueError) for f in failures)
    assert "fail_on_3_and_7" in failures[0].traceback and "bad item 3" in failures[0].traceback
    assert "item 3 of the input: 3" in "\n".join(failures[0].exception.__notes__)
    summary = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert any("2 of 12 items failed" in m and "item 3" in m for m in summary), summary

    # starmap and imap: the same policy, the Failure yielded in its place
    starred = um.starmap(divmod, [(7, 2), (1, 0), (9, 4)], backend=backend, on_error="return")
    assert starred[0] == (3, 1) and starred[2] == (2, 1)
    assert isinstance(starred[1], um.Failure) and starred[1].item == "args (1, 0)"
    lazy = list(um.imap(fail_on_3_and_7, range(5), backend=backend, on_error="return"))
    assert lazy[:3] == [0, 10, 20] and lazy[4] == 40 and lazy[3].index == 3
    # nothing failing: the same results as without a policy
    clean = um.parallel(abs, range(-50, 50), backend=backend, on_error="return", retries=2)
    assert clean == [abs(x) for x in range(-50, 50)]


# -- retries -------------------------------------------------------------------------------


def test_retries_run_only_the_failing_item_again(backend, tmp_path):
    func = FlakyOn(tmp_path, flaky={2, 5}, times=2)
    assert um.parallel(func, range(8), backend=backend, chunksize=4, retries=2) == [
        x + 100 for x in range(8)
    ]
    assert [calls(tmp_path, x) for x in range(8)] == [1, 1, 3, 1, 1, 3, 1, 1]

    # too few retries: the Failure and the raised exception say how many attempts were made
    again = tmp_path / "again"
    again.mkdir()
    func = FlakyOn(again, flaky={1}, times=5)
    results = um.parallel(func, range(3), backend=backend, retries=1, on_error="return")
    assert results[1].attempts == 2 and isinstance(results[1].exception, OSError)
    with pytest.raises(OSError) as caught:
        um.parallel(func, [1], backend=backend, retries=1)
    assert "after 2 attempts" in "\n".join(caught.value.__notes__)

    # retry_on: other exceptions are not retried
    other = tmp_path / "other"
    other.mkdir()
    func = FlakyOn(other, flaky={0}, times=1, error=ValueError)
    results = um.parallel(
        func, [0], backend=backend, retries=3, retry_on=(OSError,), on_error="return"
    )
    assert results[0].attempts == 1 and calls(other, 0) == 1


# -- timeout -------------------------------------------------------------------------------


def _beats(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("beat-*"))


def test_timeout_fails_the_item_on_time_and_stops_its_work(backend, tmp_path):
    func = SlowOn(tmp_path, always={1}, first={3})
    started = time.monotonic()
    results = um.parallel(
        func, range(5), backend=backend, timeout=TIMEOUT, retries=1, on_error="return"
    )
    elapsed = time.monotonic() - started
    # item 1 runs out of time twice (two attempts), item 3 once and then succeeds
    assert elapsed < 2 * TIMEOUT + 20, elapsed  # generous: a loaded machine must not fail it
    assert results[0] == 0 and results[2] == -2 and results[3] == -3 and results[4] == -4
    failure = results[1]
    assert isinstance(failure, um.Failure) and isinstance(failure.exception, TimeoutError)
    assert failure.index == 1 and failure.attempts == 2
    assert "item 1 of the input: 1" in "\n".join(failure.exception.__notes__)
    if backend in ("threads", "serial"):
        assert "cannot stop a running thread" in str(failure.exception)
    else:  # the work really stopped: no more heartbeats
        time.sleep(0.3)
        beats = _beats(tmp_path)
        time.sleep(0.7)
        assert _beats(tmp_path) == beats

    # on_error="raise": the TimeoutError reaches the caller, naming the item
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        um.parallel(SlowOn(tmp_path, always={0}), [0], backend=backend, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + 20
    assert "item 0 of the input: 0" in "\n".join(caught.value.__notes__)


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_timeout_replaces_a_worker_stuck_where_it_cannot_be_interrupted(name, tmp_path):
    folder = str(tmp_path)
    started = time.monotonic()
    results = um.parallel(
        stuck_in_c,
        [(folder, x) for x in range(4)],
        backend=name,
        timeout=TIMEOUT,
        on_error="return",
    )
    assert time.monotonic() - started < TIMEOUT + 20
    assert [results[0], results[2], results[3]] == [0, 2, 3]
    assert isinstance(results[1].exception, TimeoutError)
    assert "was stopped and replaced" in str(results[1].exception)
    pid = int((tmp_path / "stuck-pid").read_text())
    deadline = time.monotonic() + 10
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(pid), "the stuck worker process was left behind"
    assert um.parallel(abs, range(-20, 0), backend=name) == list(range(20, 0, -1))


# -- ordered=False ---------------------------------------------------------------------------


def test_imap_unordered_yields_results_as_they_complete(backend):
    got = list(um.imap(sleep_on_2, range(6), backend=backend, chunksize=1, ordered=False))
    assert sorted(got) == list(range(6))
    # serial completes items in input order by definition; auto runs a map's cheap start in
    # this process, item by item, before it hands the rest to its pool; Spark returns the
    # chunks it runs as one job together, when the job ends
    if backend not in ("serial", "auto", "spark"):
        assert got.index(2) > 2, got
    failures = [
        r
        for r in um.imap(fail_on_3_and_7, range(9), backend=backend, ordered=False,
                         on_error="return")
        if isinstance(r, um.Failure)
    ]  # fmt: skip
    assert sorted(f.index for f in failures) == [3, 7]


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_resume_computes_only_the_missing_items(backend, tmp_path):
    path = tmp_path / "run.db"
    first = tmp_path / "first"
    first.mkdir()
    results = um.parallel(
        FlakyOn(first, flaky={4, 9}, times=99), range(12), backend=backend, chunksize=3,
        checkpoint=path, on_error="return",
    )  # fmt: skip
    assert [isinstance(r, um.Failure) for r in results].count(True) == 2
    second = tmp_path / "second"
    second.mkdir()
    resumed = um.parallel(
        FlakyOn(second, flaky=(), times=0), range(12), backend=backend, chunksize=3,
        checkpoint=path,
    )  # fmt: skip
    assert resumed == [x + 100 for x in range(12)]
    # the failed items were not stored: only they ran again
    assert [calls(second, x) for x in range(12)] == [int(x in (4, 9)) for x in range(12)]


KILLED_DRIVER = """
import os, sys, time
import unified_map as um

folder, backend = sys.argv[1], sys.argv[2]

def work(x):
    with open(os.path.join(folder, "calls"), "a") as file:
        file.write(f"{x}\\n")
    time.sleep(0.02)
    return x * x

print(um.parallel(work, range(N), backend=backend, chunksize=2,
                  checkpoint=os.path.join(folder, "run.db")))
"""


# Each backend as a killed job would run it: a local pool, or a private local cluster that
# the driver started and that must die with it.
@pytest.mark.parametrize(
    "name", ["serial", "multiprocessing", "futures", "joblib", "dask", "spark", "ray"]
)
def test_driver_killed_mid_map_resumes_from_its_checkpoint(name, tmp_path):
    n = 300
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(KILLED_DRIVER).replace("N", str(n)))
    run = [sys.executable, str(script), str(tmp_path), name]
    db = tmp_path / "run.db"
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}  # ~/.ray left alone

    driver = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _stored(db) < 40:
            assert driver.poll() is None, driver.stderr.read().decode()
            time.sleep(0.02)
        children = process_tree_pids([driver.pid]) - {driver.pid}
        driver.send_signal(signal.SIGKILL)  # no clean-up of any kind
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stderr.close()
    # the killed driver's pool workers finish the task they hold, then go by themselves
    _reap(children)
    stored = _stored(db)
    assert 40 <= stored < n
    first_calls = (tmp_path / "calls").read_text().split()
    # nothing stored was lost: every stored item ran in the first run
    assert stored <= len(first_calls)

    (tmp_path / "calls").unlink()
    rerun = subprocess.run(run, capture_output=True, text=True, timeout=180, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == str([x * x for x in range(n)])
    rerun_calls = sorted(map(int, (tmp_path / "calls").read_text().split()))
    assert len(rerun_calls) == n - stored  # only what was missing ran again
    assert len(set(rerun_calls)) == len(rerun_calls)
    # at most the chunks in flight at the kill were computed twice
    recomputed = len(first_calls) - stored
    assert recomputed <= 2 * 64, recomputed


def _stored(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _reap(pids, seconds: float = 30) -> None:
    """Children of the killed driver (pool workers, a local cluster) must go by themselves."""
    deadline = time.monotonic() + seconds
    while process_tree_pids(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = process_tree_pids(pids)
    for pid in left:  # never leave them to the next test, but fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by the killed driver: {left}"


def test_changed_input_is_an_error_naming_the_position(tmp_path):
    path = tmp_path / "run.db"
    assert um.parallel(abs, [1, -2, 3, -4], backend="serial", checkpoint=path) == [1, 2, 3, 4]
    with pytest.raises(CheckpointMismatchError, match="item 2 of the input differs"):
        um.parallel(abs, [1, -2, 30, -4], backend="serial", checkpoint=path)
    assert um.parallel(
        abs, [1, -2, 30, -4], backend="threads", checkpoint=path, checkpoint_mode="overwrite"
    ) == [1, 2, 30, 4]
    # a longer input resumes too: only the new positions are computed
    assert um.parallel(abs, [1, -2, 30, -4, -5], backend="serial", checkpoint=path)[-1] == 5


def test_corrupted_or_foreign_file_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CheckpointError, match="not a unified_map checkpoint"):
        um.parallel(abs, [1], backend="serial", checkpoint=garbage)
    with pytest.raises(CheckpointError, match="not a unified_map checkpoint"):
        um.parallel(abs, [1], backend="serial", checkpoint=garbage, checkpoint_mode="overwrite")
    assert garbage.read_bytes().startswith(b"this is not")  # never deleted by unified_map

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE measurements (t REAL)")
    with pytest.raises(CheckpointError, match="SQLite file but not a unified_map checkpoint"):
        um.imap(abs, [1], backend="serial", checkpoint=foreign)  # at the call, not later

    damaged = tmp_path / "damaged.db"
    um.parallel(str, range(2000), backend="serial", checkpoint=damaged)
    data = bytearray(damaged.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # overwrite a page of the results table
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        um.parallel(str, range(2000), backend="serial", checkpoint=damaged)


def return_a_lock(x):
    import threading

    return threading.Lock()


def test_results_that_cannot_be_pickled_fail_at_the_first_one(tmp_path):
    folder = str(tmp_path)

    def locked(x):
        count_call(folder, "all")
        return return_a_lock(x)

    with pytest.raises(CheckpointError, match=r"result of item \d+ cannot be pickled"):
        um.parallel(locked, range(1000), backend="threads", checkpoint=tmp_path / "run.db")
    assert calls(tmp_path, "all") < 100  # it stopped at the first chunks, not at the end


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -3}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"on_error": "ignore"}, ValueError),
        ({"checkpoint_mode": "append"}, ValueError),
        ({"retry_on": "OSError"}, TypeError),
        ({"retry_on": ()}, TypeError),
        ({"checkpoint": 3}, TypeError),
        ({"timeout": 5, "chunksize": 10}, ValueError),
    ],
)
def test_invalid_values_fail_before_any_work(bad, error, tmp_path):
    folder = str(tmp_path)

    def noted(x):
        count_call(folder, "any")
        return x

    for api in (um.parallel, um.imap):
        with pytest.raises(error):
            api(noted, range(3), backend="threads", **bad)
    with pytest.raises(error):
        um.starmap(noted, [(1,)], backend="threads", **bad)
    with pytest.raises(TypeError):
        um.imap(noted, range(3), backend="threads", ordered="no")
    with pytest.raises(TypeError):
        um.parallel(noted, range(3), backend="threads", ordered=False)  # imap only
    assert calls(tmp_path, "any") == 0


def test_remote_failures_keep_the_worker_traceback():
    results = um.parallel(fail_on_3_and_7, range(5), backend="multiprocessing",
                          on_error="return")  # fmt: skip
    assert "fail_on_3_and_7" in results[3].traceback
    with pytest.raises(ValueError) as caught:
        um.parallel(fail_on_3_and_7, range(5), backend="multiprocessing", retries=1)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "after 2 attempts" in "\n".join(caught.value.__notes__)
