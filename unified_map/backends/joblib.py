"""The ``joblib`` backend: joblib's loky process executor, reused across calls.

loky is the engine under ``joblib.Parallel``; taking its reusable executor gives futures (so
results stream in order and ``imap`` stays lazy) while keeping joblib's robust worker
management: a crashed worker is detected and reported, never waited for. The executor is the
one ``joblib.Parallel`` itself uses (``get_memmapping_executor``): asking loky directly would
hand joblib an executor without the bookkeeping it expects, and break every later
``joblib.Parallel`` (scikit-learn included) in the process.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from joblib.executor import get_memmapping_executor

from unified_map.backends.base import Backend

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
        self._executor = self._get_executor()

    def _get_executor(self):
        # One process-wide executor, shared with joblib.Parallel, resized to the size asked for.
        return get_memmapping_executor(self.n_workers, timeout=IDLE_WORKER_TIMEOUT_SECONDS)

    def submit(self, fn, *args):
        if getattr(self._executor, "_broken", False):
            self._executor = self._get_executor()  # loky replaces a broken executor
        return self._executor.submit(fn, *args)

    def abort(self):
        self._executor.shutdown(wait=False, kill_workers=True)

    def close(self):
        self._executor.shutdown(wait=True)
