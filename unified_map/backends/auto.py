"""The ``auto`` backend: the builtin ``map``'s speed for small maps, a process pool's for big ones.

Most ``map`` calls in research scripts are small, and a process pool makes them slower than
the builtin ``map``: sending work to another process costs more than doing it. ``auto`` runs a
map in this process, timing it as it goes, as long as all of it would take less than a pool's
fixed cost (:data:`IN_PROCESS_SECONDS`); once the map has cost that much (or a cost remembered
from an earlier call says it will), the rest goes to the warm process pool. The one difference
users must know: chunks run in this process see and may change this process's globals, as
with the builtin ``map`` (a pool's workers get copies).
"""

from __future__ import annotations

import time

from unified_map.backends import POOL_BACKEND, acquire_backend, discard_backend
from unified_map.backends import release_backend as _release
from unified_map.backends.base import Backend, completed_future

#: A map that computes for less than this in total runs in this process: a warm pool's fixed
#: cost per call is 1-3 ms here, and starting one (fork) 10-20 ms.
IN_PROCESS_SECONDS = 0.02


class AutoBackend(Backend):
    """Run a map in this process while it is cheap, then on the warm process pool.

    The default backend when no cluster connection is active. Made afresh for each map (its
    decision is the map's own); the pool it hands work to is the warm ``multiprocessing`` pool
    every map shares.

    Examples
    --------
    >>> import unified_map as um
    >>> um.parallel(abs, [-1, -2, 3], backend="auto")  # tiny: done right here
    [1, 2, 3]
    """

    name = "auto"

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._requested = n_workers
        self._spent = 0.0
        self._known_cheap = False
        self._pool: Backend | None = None

    @classmethod
    def per_map_instance(cls, n_workers: int | None = None) -> AutoBackend:
        return cls(n_workers)

    @property
    def in_process(self) -> bool:  # type: ignore[override]
        """True until the map hands its work to the pool."""
        return self._pool is None

    @property
    def runs_in_caller(self) -> bool:  # type: ignore[override]
        """True until the map hands its work to the pool."""
        return self._pool is None

    @property
    def starts_local_processes(self) -> bool:  # type: ignore[override]
        """True once the map runs on the process pool."""
        return self._pool is not None

    @property
    def worker_lost_errors(self):  # type: ignore[override]
        return () if self._pool is None else self._pool.worker_lost_errors

    @property
    def balances_load(self) -> bool:  # type: ignore[override]
        """A map known to be cheap runs as one chunk, as the serial backend would."""
        return not self._known_cheap

    @property
    def max_in_flight(self) -> int:
        # In process, a chunk is done when submitted: running ahead would only cost laziness.
        return 1 if self._pool is None else self._pool.max_in_flight

    def expect(self, seconds: float | None) -> None:
        """Told what the whole map should cost (from a cost remembered from an earlier call):
        a map known to be dear goes to the pool from its first chunk."""
        if seconds is None:
            return
        if seconds > IN_PROCESS_SECONDS:
            self._use_pool()
        else:
            self._known_cheap = True

    def submit(self, fn, /, *args, **kwargs):
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        start = time.perf_counter()
        future = completed_future(fn, *args)
        self._spent += time.perf_counter() - start
        if self._spent > IN_PROCESS_SECONDS:
            self._use_pool()  # from the next chunk on
        return future

    def _use_pool(self) -> None:
        if self._pool is None:
            self._pool = acquire_backend(POOL_BACKEND, self._requested)

    def check_health(self) -> None:
        if self._pool is not None:
            self._pool.check_health()

    def cancel(self, futures) -> None:
        if self._pool is not None:
            self._pool.cancel(futures)

    def stop_task(self, future, worker_pid) -> bool:
        if self._pool is not None:
            return self._pool.stop_task(future, worker_pid)
        return False

    def shutdown(self, wait=True, *, cancel_futures=False):
        pool, self._pool = self._pool, None
        if pool is None:
            return
        _release(pool)
        if cancel_futures and not wait:  # Ctrl-C or a lost worker: the pool stops too
            discard_backend(pool, abort=True)
