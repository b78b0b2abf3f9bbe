"""The ``multiprocessing`` backend: a warm :class:`multiprocessing.pool.Pool`, the default
local engine when no cluster is connected."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.pool
import sys
import threading

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


def stop_process_pool(pool, workers) -> None:
    """``pool.terminate()``, unless one of ``workers`` died: then stop the rest by pid.

    Pool workers share locks (an idle one waits for work holding the task queue's), and
    ``terminate()`` needs them: after a worker died holding one it would hang forever. Such a
    pool is taken down by stopping its processes directly; its handler threads are daemons.
    """
    if all(worker.exitcode is None for worker in workers):
        pool.terminate()
        pool.join()
        return
    pool._worker_handler._state = multiprocessing.pool.TERMINATE  # start no replacements
    terminate_processes(list(pool._pool))
    pool._terminate.cancel()  # its exit hook would call terminate() and hang


class PoolBackend(Backend):
    """Adapts a :class:`multiprocessing.pool.Pool` (or ``ThreadPool``) to the backend
    contract: ``apply_async`` callbacks complete a :class:`concurrent.futures.Future`."""

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._pool = self._make_pool()

    def _make_pool(self):
        raise NotImplementedError

    def submit(self, fn, *args):
        future: concurrent.futures.Future = concurrent.futures.Future()
        # Pool tasks cannot be withdrawn once queued: say so, so cancel() reports False.
        future.set_running_or_notify_cancel()
        self._pool.apply_async(
            fn, args, callback=future.set_result, error_callback=future.set_exception
        )
        return future

    def close(self):
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

    def _make_pool(self):
        pool = process_context().Pool(self.n_workers)
        # The pool's own list of Process objects (private, but the only way to see a worker
        # die); watched while tasks of ours are outstanding.
        self._watched = set(pool._pool)
        self._outstanding = 0
        self._count_lock = threading.Lock()
        return pool

    def submit(self, fn, *args):
        with self._count_lock:
            if self._outstanding == 0 and any(w.exitcode is not None for w in self._watched):
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
        dead = [w for w in self._watched if w.exitcode is not None]
        if dead:
            codes = ", ".join(f"pid {w.pid} exit code {w.exitcode}" for w in dead)
            raise WorkerLostError(f"a multiprocessing worker died ({codes})")

    def close(self):
        self._watched.update(self._pool._pool)
        stop_process_pool(self._pool, self._watched)
