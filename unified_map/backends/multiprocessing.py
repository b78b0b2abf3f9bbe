"""The ``multiprocessing`` backend: a warm :class:`multiprocessing.pool.Pool`, the default
local engine when no cluster is connected."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time

from unified_map.backends.base import Backend
from unified_map.errors import WorkerLostError


def process_context():
    """The start method for local process pools.

    ``fork`` on Linux: workers start in milliseconds and scripts need no ``if __name__ ==
    "__main__"`` guard, which research scripts often lack. Elsewhere the platform default
    (``spawn``), because forking is unsafe on macOS.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Pool initializer: end this worker process soon after ``parent_pid`` is gone.

    A pool's workers normally leave when the pipe of their task queue closes. But every
    process forked later from the same parent (the workers of another pool, a Spark gateway)
    inherits that pipe's write end, so when the parent is killed outright (SIGKILL, the OOM
    killer, a walltime) the pipe never closes and the workers would wait for work for ever,
    holding whatever they inherited in turn. A thread that notices the new parent pid ends
    them instead. (``prctl(PR_SET_PDEATHSIG)`` would fire when the *thread* that forked a
    worker ends, which in a multi-threaded script is not when the parent dies.)

    Examples
    --------
    >>> with process_context().Pool(1, exit_with_parent, (os.getpid(),)) as pool:
    ...     pool.apply(abs, (-1,))  # a worker that would go if this process were killed
    1
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="unified_map-exit-with-parent", daemon=True).start()


_watched_parent: int | None = None


def call_exiting_with_parent(parent_pid: int, fn, *args):
    """``fn(*args)``, first making this worker :func:`exit_with_parent` if ``parent_pid``
    started it: for executors whose initializer is not ours to set (joblib's, which
    ``joblib.Parallel`` shares and would replace if it changed)."""
    global _watched_parent
    if _watched_parent is None and os.getppid() == parent_pid:
        _watched_parent = parent_pid
        exit_with_parent(parent_pid)
    return fn(*args)


def terminate_processes(processes, grace_seconds: float = 2.0) -> None:
    """Terminate worker processes and reap them, killing any that ignore SIGTERM."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace_seconds)
        if process.is_alive():
            process.kill()
            process.join()


def kill_process(process, wait_seconds: float = 5.0) -> None:
    """SIGKILL one worker process (it may be stuck where SIGTERM is never handled) and wait
    until it is gone, so that none outlives the item it was stopped for."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_seconds
    while process.exitcode is None and time.monotonic() < deadline:
        # the pool's own thread reaps it (join) and starts a replacement; do not race it
        time.sleep(0.01)


#: How long a pool's workers get to end on SIGTERM before they are killed.
TERMINATE_GRACE_SECONDS = 10.0


def _kill_children(workers) -> None:
    """SIGKILL the workers that are still children of this process (not reaped yet)."""
    import psutil

    for worker in workers:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if psutil.Process(worker.pid).ppid() == os.getpid():
                os.kill(worker.pid, signal.SIGKILL)


def stop_process_pool(pool, workers) -> None:
    """``pool.terminate()``, unless one of ``workers`` died: then stop the rest by pid.

    Pool workers share locks (an idle one waits for work holding the task queue's), and
    ``terminate()`` needs them: after a worker died holding one it would hang forever. Such a
    pool is taken down by stopping its processes directly; its handler threads are daemons.
    """
    if all(worker.exitcode is None for worker in workers):
        # A worker forked a moment ago can lose the SIGTERM that terminate() sends (it
        # arrived before the child reset the handler it inherited), and terminate() would
        # then wait for it for ever: what is still alive after a grace period is killed.
        watchdog = threading.Timer(TERMINATE_GRACE_SECONDS, _kill_children, ([*workers],))
        watchdog.daemon = True
        watchdog.start()
        try:
            pool.terminate()
            pool.join()
        finally:
            watchdog.cancel()
        return
    pool._worker_handler._state = multiprocessing.pool.TERMINATE  # start no replacements
    terminate_processes(list(pool._pool))
    pool._terminate.cancel()  # its exit hook would call terminate() and hang


class PoolBackend(Backend):
    """Adapts a :class:`multiprocessing.pool.Pool` (or ``ThreadPool``) to the backend
    contract, with futures that can be withdrawn while they wait.

    A pool's own queue cannot give a task back once it holds it, so a map that failed or was
    abandoned would leave its queued chunks to run before the next map's. So the pool is only
    handed as many tasks as it has workers (plus :attr:`dispatch_ahead`, so that a worker
    finds its next task waiting); the rest wait here, as pending futures that ``cancel()``
    withdraws, and are handed over as tasks finish.
    """

    #: Tasks handed to the pool beyond one per worker.
    dispatch_ahead = 1

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._waiting: collections.deque = collections.deque()
        self._unfinished: dict = {}  # future handed to the pool -> what finishes it
        self._dispatched = 0
        self._gate = threading.Lock()
        self._pool = self._make_pool()

    def _make_pool(self):
        raise NotImplementedError

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._gate:
            if self._dispatched >= self.n_workers + self.dispatch_ahead:
                self._waiting.append((future, fn, args))
                return future
            self._dispatched += 1
        self._dispatch(future, fn, args)
        return future

    def _dispatch(self, future, fn, args) -> None:
        # Called with a slot reserved; a future cancelled while it waited gives the slot on.
        while not future.set_running_or_notify_cancel():
            task = self._next_waiting()
            if task is None:
                return
            future, fn, args = task

        def done(value, setter):
            if self._unfinished.pop(future, None) is None:
                return  # finished already: its worker was stopped (stop_task)
            setter(value)
            task = self._next_waiting()
            if task is not None:
                self._dispatch(*task)

        self._unfinished[future] = lambda exc: done(exc, future.set_exception)

        try:
            self._pool.apply_async(
                fn,
                args,
                callback=lambda value: done(value, future.set_result),
                error_callback=lambda exc: done(exc, future.set_exception),
            )
        except ValueError as exc:  # "Pool not running": stopped under this map by another
            # thread's Ctrl-C or lost worker; the map fails as for any lost worker
            lost = WorkerLostError(f"backend {self.name!r} was stopped while this map was running")
            lost.__cause__ = exc
            done(lost, future.set_exception)

    def _finish_abandoned(self, future, exc: BaseException) -> None:
        """Finish a future whose pool task will never report (its worker was killed),
        handing its slot to the next waiting task."""
        finish = self._unfinished.get(future)
        if finish is not None:
            finish(exc)

    def _next_waiting(self):
        """The next waiting task, its slot taken over; or None, the slot given back."""
        with self._gate:
            if self._waiting:
                return self._waiting.popleft()
            self._dispatched -= 1
            return None

    def _cancel_waiting(self) -> None:
        with self._gate:
            waiting, self._waiting = self._waiting, collections.deque()
        for future, _, _ in waiting:
            future.cancel()

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._cancel_waiting()
        self._pool.terminate()
        self._pool.join()


class MultiprocessingBackend(PoolBackend):
    """Run packed chunks on a :class:`multiprocessing.pool.Pool`.

    A plain ``Pool`` never notices that a worker died: the task is lost and its result never
    arrives. :meth:`check_health` watches the worker processes so that a map fails with
    :class:`~unified_map.errors.WorkerLostError` instead of hanging.

    Examples
    --------
    >>> from unified_map.backends.base import pack, run_packed, unpack_outcome
    >>> with MultiprocessingBackend(n_workers=1) as backend:
    ...     blob = backend.submit(run_packed, pack(len, ["abc"])).result()
    >>> unpack_outcome(blob).results
    [3]
    """

    name = "multiprocessing"
    starts_local_processes = True

    def __init__(self, n_workers: int | None = None):
        self._outstanding = 0  # tasks submitted and not finished, waiting ones included
        self._count_lock = threading.Lock()
        self._stopped: set = set()  # workers killed on purpose (stop_task): not a lost worker
        super().__init__(n_workers)

    def _make_pool(self):
        pool = process_context().Pool(
            self.n_workers, initializer=exit_with_parent, initargs=(os.getpid(),)
        )
        # The pool's own list of Process objects (private, but the only way to see a worker
        # die); watched while tasks of ours are outstanding.
        self._watched = set(pool._pool)
        return pool

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            if self._outstanding == 0 and any(
                w.exitcode is not None and w not in self._stopped for w in self._watched
            ):
                # A worker died while idle (OOM killer, a stray kill). No task was lost, but an
                # idle worker waits holding the pool's shared queue lock: if it died holding
                # it, every other worker is stuck for good. Start a fresh pool before use.
                stop_process_pool(self._pool, self._watched)
                self._pool = self._make_pool()
            self._outstanding += 1
        future = super().submit(fn, *args)
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self, _future) -> None:
        with self._count_lock:
            self._outstanding -= 1

    def check_health(self) -> None:
        """Raise :class:`WorkerLostError` if a worker process exited under a task."""
        self._watched.update(self._pool._pool)  # workers started since, replacements included
        dead = [w for w in self._watched if w.exitcode is not None and w not in self._stopped]
        if dead:
            codes = ", ".join(f"pid {w.pid} exit code {w.exitcode}" for w in dead)
            raise WorkerLostError(f"a multiprocessing worker died ({codes})")

    def stop_task(self, future, worker_pid) -> bool:
        """Kill the worker process running the task (the pool starts a replacement); the
        others go on undisturbed."""
        worker = next((w for w in list(self._pool._pool) if w.pid == worker_pid), None)
        if worker is None:  # not one of ours (any more): nothing to stop
            return False
        self._stopped.add(worker)
        kill_process(worker)
        self._finish_abandoned(future, TimeoutError("worker stopped at its timeout"))
        return False

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._cancel_waiting()
        self._watched.update(self._pool._pool)
        stop_process_pool(self._pool, self._watched)
