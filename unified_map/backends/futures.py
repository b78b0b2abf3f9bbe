"""The ``futures`` backend: a warm :class:`concurrent.futures.ProcessPoolExecutor`."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from unified_map.backends.base import Backend
from unified_map.backends.multiprocessing import (
    exit_with_parent,
    kill_process,
    process_context,
    terminate_processes,
)


class FuturesBackend(Backend):
    """Run packed chunks on a process pool from the standard library.

    Examples
    --------
    >>> from unified_map.backends.base import pack, run_packed, unpack_outcome
    >>> with FuturesBackend(n_workers=1) as backend:
    ...     blob = backend.submit(run_packed, pack(abs, [-4])).result()
    >>> unpack_outcome(blob).results
    [4]
    """

    name = "futures"
    starts_local_processes = True
    worker_lost_errors = (BrokenProcessPool,)

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._executor = _new_executor(self.n_workers)

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args)

    def stop_task(self, future, worker_pid) -> bool:
        """Kill the worker running the task. A ProcessPoolExecutor breaks as a whole when a
        worker dies, so later tasks go to a fresh one; the map runs again the tasks the
        broken one held."""
        old = self._executor
        worker = (getattr(old, "_processes", None) or {}).get(worker_pid)
        if worker is None:
            return False
        self._executor = _new_executor(self.n_workers)
        kill_process(worker)
        old.shutdown(wait=False, cancel_futures=True)  # it stops its other workers itself
        return True

    def shutdown(self, wait=True, *, cancel_futures=False):
        if wait:
            self._executor.shutdown(wait=True, cancel_futures=True)
            return
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        terminate_processes(processes)


def _new_executor(n_workers: int) -> ProcessPoolExecutor:
    # workers end by themselves when this process is killed (see exit_with_parent)
    return ProcessPoolExecutor(
        n_workers,
        mp_context=process_context(),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )
