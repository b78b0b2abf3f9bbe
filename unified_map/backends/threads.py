"""The ``threads`` backend: a warm :class:`concurrent.futures.ThreadPoolExecutor`.

Threads share memory, so nothing is pickled; they only run in parallel where ``func``
releases the GIL (I/O, numpy, most compiled code).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from unified_map.backends.base import Backend


class ThreadsBackend(Backend):
    """Run chunks on a pool of threads in this process.

    Examples
    --------
    >>> with ThreadsBackend(n_workers=2) as backend:
    ...     backend.submit(pow, 2, 10).result()
    1024
    """

    name = "threads"
    in_process = True

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self._executor = ThreadPoolExecutor(self.n_workers, thread_name_prefix="unified_map")

    def submit(self, fn, *args):
        return self._executor.submit(fn, *args)

    def abort(self):
        # A running thread cannot be stopped from outside; drop everything queued behind it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self):
        self._executor.shutdown(wait=True, cancel_futures=True)
