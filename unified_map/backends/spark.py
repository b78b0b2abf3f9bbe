"""The ``spark`` backend: chunks run as Spark tasks on the active Spark connection, or on a
private ``local[n]`` session started on first use when none is active (what every cluster
backend shares is in :mod:`unified_map.backends.cluster`; this module is what is Spark's own).

A Spark job costs about 80 ms and each task 25-40 ms more, whatever it carries, so chunks
submitted close together are run as one job with one task per worker core, each task running
its share of the chunks (opaque pickled ``bytes``) one after the other. Several jobs run at
once from a small pool of threads, each in a job group of its own: ``imap`` stays lazy, and a
map that stops early, fails or is interrupted cancels its Spark jobs, not just the caller.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import threading
import time
import uuid
import weakref

import pyspark  # noqa: F401 - fail here, with the install hint, when it is missing

from unified_map.backends.cluster import ClusterBackend

#: Jobs a connection runs at once: one runs while the next is being formed and sent.
MAX_JOBS = 2
#: A job takes at most this share of the chunks a map keeps in flight.
JOBS_IN_FLIGHT = 2
#: A burst of submissions is gathered into one job once none came for this long.
LINGER_SECONDS = 0.005
#: ...or at the latest this long after the first of them.
MAX_LINGER_SECONDS = 0.05


class _ChunkFuture(concurrent.futures.Future):
    """The future of one chunk; ``group`` is the Spark job group running it, once it runs."""

    def __init__(self, runner: _JobRunner, fn, args):
        super().__init__()
        self.runner = runner
        self.call = (fn, args)
        self.group: str | None = None

    def cancel(self) -> bool:
        """Cancel the chunk; the Spark job running it is cancelled once none of its chunks
        is wanted any more."""
        cancelled = super().cancel()
        if cancelled:
            self.runner.chunk_cancelled(self)
        return cancelled

    def deliver(self, setter, value) -> None:
        if not self.done():  # else it was cancelled meanwhile
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                setter(value)


def _run_calls(calls):
    """Task side: run each ``(fn, args)`` of this partition in turn."""
    return [fn(*args) for fn, args in calls]


class _JobRunner:
    """Turns submitted chunks into Spark jobs on one connection's SparkContext."""

    def __init__(self, backend: SparkBackend, connection):
        self.backend = backend
        self.connection = connection
        self.pending: collections.deque[_ChunkFuture] = collections.deque()
        self.cond = threading.Condition()
        self.running: dict[str, list[_ChunkFuture]] = {}
        self.cancelled: set[str] = set()
        self.closed = False
        self.last_submit = 0.0
        self.prefix = f"unified_map-{uuid.uuid4().hex[:8]}"
        self.count = itertools.count()
        self.threads = [
            threading.Thread(target=self._loop, name=f"unified_map spark job {i}", daemon=True)
            for i in range(MAX_JOBS)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, fn, args) -> _ChunkFuture:
        future = _ChunkFuture(self, fn, args)
        with self.cond:
            self.pending.append(future)
            self.last_submit = time.monotonic()
            self.cond.notify()
        return future

    def cancel(self, futures) -> None:
        """Cancel the job groups every unfinished chunk of which is in ``futures``."""
        cancelled = set(map(id, futures))
        with self.cond:
            groups = [
                group
                for group, chunks in self.running.items()
                if group not in self.cancelled
                and all(id(f) in cancelled or f.done() for f in chunks)
            ]
        self._cancel_groups(groups)

    def chunk_cancelled(self, future: _ChunkFuture) -> None:
        with self.cond:
            chunks = self.running.get(future.group, ())
            wanted = [f for f in chunks if not f.done()]
            groups = [future.group] if chunks and not wanted else []
            groups = [group for group in groups if group not in self.cancelled]
        self._cancel_groups(groups)

    def _cancel_groups(self, groups: list[str]) -> None:
        with self.cond:
            self.cancelled.update(groups)
        for group in groups:
            # A job being sent right now is not in its group yet, and cancelling a group
            # cancels only its running jobs: cancel again until the job thread has left it.
            threading.Thread(
                target=self._cancel_group, args=(group,), daemon=True, name=f"cancel {group}"
            ).start()

    def _cancel_group(self, group: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self.cond:
                if group not in self.running:
                    self.cancelled.discard(group)
                    return
            with contextlib.suppress(Exception):
                self.connection.context.cancelJobGroup(group)
            time.sleep(0.1)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _take(self) -> list[_ChunkFuture] | None:
        """The next job's chunks: a burst of submissions, at most a few per worker core."""
        with self.cond:
            while not self.closed:
                while self.pending and self.pending[0].cancelled():
                    self.pending.popleft()
                if self.pending:
                    break
                self.cond.wait()
            if self.closed:
                return None
            first = time.monotonic()
            limit = max(1, self.backend.max_in_flight // JOBS_IN_FLIGHT)
            while len(self.pending) < limit and not self.closed:
                now = time.monotonic()
                quiet_until = self.last_submit + LINGER_SECONDS
                if now >= quiet_until or now - first >= MAX_LINGER_SECONDS:
                    break
                self.cond.wait(quiet_until - now)
            chunks = []
            while self.pending and len(chunks) < limit:
                future = self.pending.popleft()
                if not future.cancelled():
                    chunks.append(future)
            return chunks

    def _loop(self) -> None:
        while True:
            chunks = self._take()
            if chunks is None:
                return
            try:
                self._run(chunks)
            except BaseException as exc:  # noqa: BLE001 - never leave a future pending
                for future in chunks:
                    future.deliver(future.set_exception, exc)

    def _run(self, chunks: list[_ChunkFuture]) -> None:
        if not chunks:
            return
        context = self.connection.context
        group = f"{self.prefix}-{next(self.count)}"
        with self.cond:  # a chunk cancelled from now on finds its job group
            chunks = [future for future in chunks if not future.cancelled()]
            if not chunks:
                return
            for future in chunks:
                future.group = group
            self.running[group] = chunks
        calls = []
        for future in chunks:
            calls.append(future.call)
            future.call = None  # holds the chunk's bytes: not a moment longer than needed
        try:
            slots = max(1, min(len(calls), self.connection.slots()))
            # one task per core, each with a contiguous share of the chunks, in input order
            size, extra = divmod(len(calls), slots)
            bounds = list(itertools.accumulate([size + (i < extra) for i in range(slots)]))
            parts = [calls[a:b] for a, b in itertools.pairwise([0, *bounds])]
            context.setJobGroup(group, "unified_map", interruptOnCancel=True)
            with self.cond:
                if group in self.cancelled or all(f.done() for f in chunks):
                    raise concurrent.futures.CancelledError("SPARK_JOB_CANCELLED")
            results = context.parallelize(parts, len(parts)).map(_run_calls).collect()
        except BaseException as exc:  # noqa: BLE001 - delivered through the futures
            if "SPARK_JOB_CANCELLED" in str(exc) or "cancelled job group" in str(exc):
                for future in chunks:
                    future.cancel()
                return
            error = self.backend.settle_error(self.connection, exc)
            for future in chunks:
                future.deliver(future.set_exception, error)
        else:
            flat = [value for part in results for value in part]
            for future, value in zip(chunks, flat, strict=True):
                future.deliver(future.set_result, value)
        finally:
            with self.cond:
                self.running.pop(group, None)


_runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_runners_lock = threading.Lock()


class SparkBackend(ClusterBackend):
    """Run packed chunks as Spark tasks.

    On the active Spark connection (``cluster_setup.spark.connect_to_scheduler``), or, with
    none active, on a private ``local[n]`` session (one JVM, ``n`` task threads, 4 GB of
    driver memory) started on first use, reused by later maps and stopped at exit (see
    :class:`~unified_map.backends.cluster.ClusterBackend`). pyspark allows one SparkContext per
    process: that session gives way when a connection to a master is made.

    Examples
    --------
    >>> from unified_map.backends.base import pack, run_packed, unpack_outcome
    >>> with SparkBackend(n_workers=1) as backend:
    ...     blob = backend.submit(run_packed, pack(abs, [-3, 4])).result()
    >>> unpack_outcome(blob).results
    [3, 4]
    """

    name = "spark"
    engine = "spark"

    @property
    def max_in_flight(self) -> int:
        """Eight chunks per core: a job takes at most half of them (four per core), so that
        the next job is formed and sent while one runs, and whole jobs, not chunks, overlap."""
        return 8 * self.n_workers

    #: A task costs tens of milliseconds: chunks should compute for longer than elsewhere.
    target_chunk_seconds = 0.5
    #: A Spark task costs 25-40 ms in Python and a job ends with its slowest task: two equal
    #: chunks per core on a sized input, not four shrinking ones (40 CPU-bound items of 50 ms
    #: on 2 workers: 1.15 s instead of 1.6 s, where the tail of one-item chunks cost a job).
    chunks_per_worker = 2
    guided_chunks = False
    one_session_per_process = True

    def _submit(self, connection, fn, *args):
        return _runner(self, connection).submit(fn, args)

    def stop_task(self, future, worker_pid) -> bool:
        """Cancel the Spark job running the chunk (Spark stops its Python worker). A job
        reports only when all its tasks end, so the job's other chunks are cancelled with
        it: the map sends them again."""
        future.cancel()
        runner, group = getattr(future, "runner", None), getattr(future, "group", None)
        if runner is None or group is None:  # not running yet: cancelling it was enough
            return False
        runner._cancel_groups([group])
        return True

    def _cancel(self, connection, futures) -> None:
        """Cancel the Spark job groups running only chunks in ``futures``."""
        with _runners_lock:
            runner = _runners.get(connection)
        if runner is not None:
            runner.cancel(futures)


def _runner(backend: SparkBackend, connection) -> _JobRunner:
    """The job runner of ``connection`` (one per connection, closed with it)."""
    with _runners_lock:
        runner = _runners.get(connection)
        if runner is None or runner.closed:
            runner = _runners[connection] = _JobRunner(backend, connection)
            connection._on_close.append(runner.close)
        runner.backend = backend
        return runner
