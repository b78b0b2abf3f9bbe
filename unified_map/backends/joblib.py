"""The ``joblib`` backend: joblib's loky process executor, reused across calls.

loky is the engine under ``joblib.Parallel``; taking its reusable executor gives futures (so
results stream in order and ``imap`` stays lazy) while keeping joblib's robust worker
management: a crashed worker is detected and reported, never waited for. The executor is the
one ``joblib.Parallel`` itself uses (``get_memmapping_executor``): asking loky directly would
hand joblib an executor without the bookkeeping it expects, and break every later
``joblib.Parallel`` (scikit-learn included) in the process.

That executor is one per process, shared by every map of every size and by
``joblib.Parallel``: a backend never shuts it down on a normal close (another thread's map, or
joblib itself, may be using it; loky stops idle workers by itself and at exit), only when a map
must stop at once (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

from joblib.executor import get_memmapping_executor

from unified_map.backends.base import Backend
from unified_map.backends.multiprocessing import call_exiting_with_parent

# joblib keeps idle loky workers this long too: long enough for a script's loop of maps.
IDLE_WORKER_TIMEOUT_SECONDS = 300


class JoblibBackend(Backend):
    """Run packed chunks on joblib's reusable loky executor.

    Examples
    --------
    >>> from unified_map.backends.base import pack, run_packed, unpack_outcome
    >>> with JoblibBackend(n_workers=1) as backend:
    ...     blob = backend.submit(run_packed, pack(abs, [-2])).result()
    >>> unpack_outcome(blob).results
    [2]
    """

    name = "joblib"
    starts_local_processes = True
    worker_lost_errors = (BrokenProcessPool,)

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._executor = self._current_executor()

    def _current_executor(self):
        # The process-wide executor at this size: loky resizes it, or replaces it when it was
        # broken or shut down (by joblib.Parallel, or by a Ctrl-C in another map).
        return get_memmapping_executor(self.n_workers, timeout=IDLE_WORKER_TIMEOUT_SECONDS)

    def lease(self):
        """Each map takes the current executor when it starts: another size or a broken
        executor since the last map means loky has a new one."""
        self._executor = self._current_executor()
        return contextlib.nullcontext()

    def submit(self, fn, /, *args, **kwargs):
        executor = self._executor
        if executor._flags.shutdown and not executor._flags.broken:
            # shut down under this map by another thread's Ctrl-C or joblib: take the new one
            # (a broken one must fail this map: its futures report the lost worker)
            executor = self._executor = self._current_executor()
        # its workers end by themselves when this process is killed (exit_with_parent)
        return executor.submit(call_exiting_with_parent, os.getpid(), fn, *args)

    def stop_task(self, future, worker_pid) -> bool:
        """Kill the worker running the task. loky marks its executor broken when a worker
        dies (and stops the other workers): later tasks go to the fresh executor joblib then
        hands out, and the map runs again the tasks the broken one held."""
        executor = self._executor
        if worker_pid not in (getattr(executor, "_processes", None) or {}):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not executor._flags.broken and time.monotonic() < deadline:
            time.sleep(0.01)  # loky notices within moments
        self._executor = self._current_executor()
        return True

    def shutdown(self, wait=True, *, cancel_futures=False):
        if not wait and cancel_futures:
            self._executor.shutdown(wait=False, kill_workers=True)
