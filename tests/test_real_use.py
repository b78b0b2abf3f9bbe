"""Safe under real use: maps from several threads, nested maps, errors that cancel the rest,
no user object kept alive, a clean stderr at exit, and a caller whose bookkeeping does not
grow with the cluster. Each test checks results, never speed."""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import os
import threading
import time
import weakref

import pytest

import unified_map as um
from tests.helpers import run_python
from unified_map.backends import acquire_backend, release_backend
from unified_map.backends.base import Backend, completed_future, default_worker_count

LOCAL_BACKENDS = ["serial", "threads", "multiprocessing", "futures", "joblib", "auto"]
POOLS = ["threads", "multiprocessing", "futures", "joblib"]


def run_with_deadline(func, seconds: float = 120):
    """``func()`` in a daemon thread; fail (instead of hanging the suite) if it never ends."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s: a deadlock?"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# -- several threads ------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOCAL_BACKENDS)
def test_maps_from_two_threads_with_different_sizes_all_succeed(name):
    # Two threads asking for different pool sizes used to close each other's pool mid-map.
    errors: list[BaseException] = []
    wrong: list = []

    # joblib resizes loky's one executor at every switch (seconds each): fewer rounds
    rounds = 40 if name == "joblib" else 150

    def loop(n_workers):
        for _ in range(rounds):
            try:
                got = um.parallel(abs, [-1, -2, -3], backend=name, n_workers=n_workers)
            except BaseException as exc:  # noqa: BLE001 - collected and reported
                errors.append(exc)
                return
            if got != [1, 2, 3]:
                wrong.append(got)

    threads = [threading.Thread(target=loop, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and wrong == []
    assert um.parallel(abs, [-4], backend=name) == [4]


def test_maps_from_two_threads_on_a_connected_cluster(dask_connection):
    def loop(offset):
        return [um.parallel(abs, range(offset, offset + 20)) for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(loop, [-10, -30])
    assert first == [[abs(x) for x in range(-10, 10)]] * 10
    assert second == [[abs(x) for x in range(-30, -10)]] * 10


def slow_identity(x):
    time.sleep(0.05)
    return x


def test_joblib_keeps_working_after_a_resize_while_another_thread_maps():
    from joblib import Parallel, delayed

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            um.parallel, slow_identity, range(40), backend="joblib", n_workers=2, chunksize=1
        )
        time.sleep(0.3)  # the 2-worker map is under way
        assert um.parallel(abs, [-1, -2], backend="joblib", n_workers=1) == [1, 2]
        assert running.result(timeout=120) == list(range(40))
    # The process-wide loky executor was not shut down under anyone: later maps still work,
    # and so does joblib itself.
    assert um.parallel(abs, [-3], backend="joblib", n_workers=2) == [3]
    assert um.parallel(abs, [-4], backend="joblib") == [4]
    assert Parallel(n_jobs=2)(delayed(abs)(x) for x in [-5, -6]) == [5, 6]


# -- nested maps ----------------------------------------------------------------------------


def inner_pid(x):
    return x, os.getpid()


def nested_sum(n, backend):
    named = um.parallel(inner_pid, range(n), backend=backend)
    default = um.parallel(inner_pid, range(n))
    pids = {pid for _, pid in named + default}
    return sum(x for x, _ in named) + sum(x for x, _ in default), pids, os.getpid()


def test_nested_maps_finish_and_run_serially_in_the_worker(backend):
    outer = functools.partial(nested_sum, backend=backend)
    results = run_with_deadline(
        lambda: um.parallel(outer, range(8), backend=backend, n_workers=2, chunksize=1)
    )
    assert [total for total, _, _ in results] == [2 * sum(range(n)) for n in range(8)]
    for _, inner_pids, outer_pid in results:
        # no pool or cluster was started inside the worker: the inner maps ran right there
        assert inner_pids <= {outer_pid}


# -- what a map keeps -----------------------------------------------------------------------


class Model:
    """Stands in for a 400 MB model bound into a function with functools.partial."""

    def __init__(self):
        self.weights = bytearray(10 * 2**20)


def predict(model, x):
    return x + len(model.weights) // 2**20


def test_the_users_objects_are_not_kept_after_the_map(backend):
    model = Model()
    alive = weakref.ref(model)
    assert um.parallel(functools.partial(predict, model), range(5), backend=backend) == [
        10,
        11,
        12,
        13,
        14,
    ]
    del model
    # A pool thread drops its last task's arguments a moment after handing the result over:
    # give it that moment, not more (the bug this guards against kept the model for good).
    deadline = time.monotonic() + 5
    while gc.collect() is not None and alive() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() is None, "the map kept the user's model alive"


@pytest.mark.parametrize("name", POOLS)
def test_n_workers_none_means_every_core_each_time(name):
    small = acquire_backend(name, 1)
    release_backend(small)
    assert small.n_workers == 1
    every = acquire_backend(name, None)
    release_backend(every)
    assert every.n_workers == default_worker_count()
    assert um.parallel(abs, [-1], backend=name, n_workers=1) == [1]
    assert um.parallel(abs, [-2], backend=name) == [2]


# -- an error cancels the rest --------------------------------------------------------------


def record_then_fail_on_0(x, log):
    with open(log, "a") as file:
        file.write(f"{x}\n")
    if x == 0:
        raise ValueError("item 0 is bad")
    time.sleep(0.5)
    return x


@pytest.mark.parametrize("name", POOLS)
def test_an_error_cancels_the_queued_chunks(name, tmp_path):
    log = tmp_path / "started"
    func = functools.partial(record_then_fail_on_0, log=str(log))
    with pytest.raises(ValueError, match="item 0 is bad"):
        um.parallel(func, range(40), backend=name, n_workers=2, chunksize=1)
    # The next map is not queued behind the failed map's leftovers: by the time it returns,
    # no more has started than what was running (one per worker) or already handed to the
    # workers' own queue (the standard executor's holds one per worker plus one), not the
    # forty items of the failed map.
    assert um.parallel(abs, [-1], backend=name, n_workers=2) == [1]
    started = log.read_text().split()
    assert len(started) <= 5, f"{len(started)} items ran after the failure: {started}"


def test_an_error_cancels_the_queued_tasks_on_a_cluster(dask_connection, tmp_path):
    log = tmp_path / "started"
    func = functools.partial(record_then_fail_on_0, log=str(log))
    with pytest.raises(ValueError, match="item 0 is bad"):
        um.parallel(func, range(40), chunksize=1)
    time.sleep(1.5)  # anything still queued on the cluster would have started by now
    started = log.read_text().split()
    # two single-threaded workers; dask may have handed each a task or two ahead
    assert len(started) <= 8, f"{len(started)} items ran after the failure: {started}"


# -- exit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*POOLS, "dask"])
def test_stderr_is_clean_at_exit_after_a_caught_error(name):
    for _ in range(2 if name != "dask" else 1):
        result = run_python(
            f"""
            import unified_map as um

            def bad(x):
                if x == 3:
                    raise ValueError("bad item")
                return x

            try:
                um.parallel(bad, range(20), backend={name!r}, chunksize=1)
            except ValueError:
                print("caught")
            print(um.parallel(abs, [-1, -2], backend={name!r}))
            """
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["caught", "[1,", "2]"]
        assert result.stderr == "", result.stderr


# -- the caller's bookkeeping ---------------------------------------------------------------


class CountingFuture(concurrent.futures.Future):
    """Counts how often the caller asks a future about its state."""

    queries = 0

    def done(self):
        CountingFuture.queries += 1
        return super().done()

    def running(self):
        CountingFuture.queries += 1
        return super().running()

    def cancelled(self):
        CountingFuture.queries += 1
        return super().cancelled()


class InstantBackend(Backend):
    """A cluster of 1,024 slots whose tasks finish at once: only the caller's work is left."""

    name = "instant"
    in_process = True

    @classmethod
    def size_for(cls, n_workers):
        return n_workers or 1024

    def submit(self, fn, /, *args, **kwargs):
        future = CountingFuture()
        value = completed_future(fn, *args)
        future.set_result(value.result())
        return future


def test_the_callers_bookkeeping_per_chunk_does_not_grow_with_the_cluster():
    um.register_backend("instant", "tests.test_real_use:InstantBackend")
    for slots in (16, 1024):
        CountingFuture.queries = 0
        n_chunks = 8 * slots
        xs = range(n_chunks)
        assert um.parallel(abs, xs, backend="instant", n_workers=slots, chunksize=1) == list(xs)
        per_chunk = CountingFuture.queries / n_chunks
        assert per_chunk <= 4, f"{per_chunk:.0f} future queries per chunk with {slots} slots"


class ThreadedOutOfProcessBackend(Backend):
    """Runs packed chunks on threads, as if they left the process, and records how many
    payload bytes were submitted and not yet finished at most."""

    name = "bytes-recorder"
    in_process = False
    max_chunk_bytes = 64 * 2**20
    outstanding = 0
    most = 0
    lock = threading.Lock()

    def __init__(self, n_workers=None):
        super().__init__(n_workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(4)

    @classmethod
    def size_for(cls, n_workers):
        return 256

    def submit(self, fn, /, *args, **kwargs):
        size = len(args[0])
        cls = type(self)
        with cls.lock:
            cls.outstanding += size
            cls.most = max(cls.most, cls.outstanding)

        def run():
            time.sleep(0.02)
            with cls.lock:
                cls.outstanding -= size
            return fn(*args)

        return self._pool.submit(run)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_payload_in_flight_is_bounded_in_bytes(monkeypatch):
    monkeypatch.setattr("unified_map.mapping.MAX_BYTES_IN_FLIGHT", 30 * 2**20)
    um.register_backend("bytes-recorder", "tests.test_real_use:ThreadedOutOfProcessBackend")
    payloads = [bytes([i]) * (5 * 2**20) for i in range(24)]
    assert um.parallel(len, payloads, backend="bytes-recorder", chunksize=1) == [5 * 2**20] * 24
    # 256 slots would take every chunk at once; the budget holds it to 30 MB plus one chunk
    assert ThreadedOutOfProcessBackend.most <= 36 * 2**20


def exit_on_3(x):
    if x == 3:
        os._exit(7)  # a hard crash of the worker process
    time.sleep(0.05)
    return x


@pytest.mark.parametrize("name", ["threads", "multiprocessing", "futures"])
def test_a_map_whose_pool_another_thread_stopped_fails_instead_of_hanging(name):
    # Another thread's map lost a worker (or was interrupted) and stopped the shared pool:
    # this map must end, with its results or with WorkerLostError, never wait forever.
    crash = exit_on_3 if name != "threads" else None

    def long_map():
        try:
            return um.parallel(slow_identity, range(60), backend=name, n_workers=2, chunksize=1)
        except um.WorkerLostError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_with_deadline, long_map)
        time.sleep(0.5)
        if crash is not None:
            with pytest.raises(um.WorkerLostError):
                um.parallel(crash, range(8), backend=name, n_workers=2, chunksize=1)
        else:  # threads cannot crash: stop the pool the way a Ctrl-C in that map would
            backend = acquire_backend(name, 2)
            release_backend(backend)
            from unified_map.backends import discard_backend

            discard_backend(backend, abort=True)
        outcome = running.result(timeout=180)
    assert outcome == list(range(60)) or isinstance(outcome, um.WorkerLostError)
    assert um.parallel(abs, [-1, -2], backend=name, n_workers=2) == [1, 2]
