"""The ``threads`` backend: a warm pool of threads in this process.

Threads share memory, so nothing is pickled; they only run in parallel where ``func``
releases the GIL (I/O, numpy, most compiled code).
"""

from __future__ import annotations

from multiprocessing.pool import ThreadPool

from unified_map.backends.multiprocessing import PoolBackend


class ThreadsBackend(PoolBackend):
    """Run chunks on a :class:`multiprocessing.pool.ThreadPool`.

    ``ThreadPool`` rather than ``ThreadPoolExecutor``: its threads are daemons, so after
    Ctrl-C the interpreter can exit without waiting for a ``func`` that is still running
    (a thread cannot be stopped from outside).

    Examples
    --------
    >>> with ThreadsBackend(n_workers=2) as backend:
    ...     backend.submit(pow, 2, 10).result()
    1024
    """

    name = "threads"
    in_process = True

    def _make_pool(self):
        return ThreadPool(self.n_workers)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._cancel_waiting()
        # terminate() drops queued chunks without joining the threads, which may be deep in a
        # long func; join() then waits for them, when asked to.
        self._pool.terminate()
        if wait:
            self._pool.join()
