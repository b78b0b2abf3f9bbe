"""``parallel``, ``imap`` and ``starmap``: validate, chunk, pick the backend, run, keep the
order, and turn a failure in a worker into the caller's exception.

Everything a backend would otherwise repeat lives here once; backends only run chunks.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import math
import os
import queue
import reprlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from unified_map._cluster import cluster_setup
from unified_map.backends import (
    DEFAULT_LOCAL_BACKEND,
    acquire_backend,
    backend_class,
    discard_backend,
    release_backend,
)
from unified_map.backends.base import (
    ChunkFailure,
    ChunkOutcome,
    ItemPolicy,
    inside_worker,
    pack,
    pack_func,
    pack_items,
    run_chunk,
    run_packed,
    unpack_outcome,
)
from unified_map.checkpoint import Checkpoint
from unified_map.chunking import (
    MAX_BYTES_IN_FLIGHT,
    ChunkSizer,
    cost_key,
    iter_chunks,
    recall_seconds_per_item,
)
from unified_map.errors import RemoteTraceback, WorkerLostError
from unified_map.options import Failure, MapOptions

__all__ = ["parallel", "imap", "starmap"]

# While waiting for a chunk, look this often whether the engine lost a worker.
HEALTH_CHECK_SECONDS = 0.5
#: With ``timeout=``, how long past the limit the driver waits for an item sent to another
#: process before it stops it: the task's clock starts when it is sent, and reaching a
#: worker takes a moment. (A worker stops its item at the limit itself where it can.)
TIMEOUT_GRACE_SECONDS = 2.0
#: ...and how much longer it waits for the tasks sent before the engine answered anything in
#: this map (a cluster starting up, a pool spawning its workers).
START_UP_SECONDS = 30.0

logger = logging.getLogger("unified_map")

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60


def parallel(
    func: Callable,
    *iterables: Iterable,
    backend: str | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    n_workers: int | None = None,
    on_error: str = "raise",
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_mode: str = "resume",
) -> list:
    """Apply ``func`` to every item, in parallel, and return the results as a list.

    A drop-in for ``list(map(func, *iterables))``: the same results in the same order;
    several iterables are zipped and stop at the shortest. The keywords from ``on_error`` on
    make long maps survive failures, hangs and a killed job; they behave the same on every
    backend (see :doc:`long_runs`).

    Parameters
    ----------
    func : callable
        Any callable; lambdas, closures and functions defined in ``__main__`` or a notebook
        work on every backend (process and cluster backends ship them with cloudpickle).
    *iterables : iterable
        Lists, ranges, generators: anything ``map`` accepts.
    backend : str, optional
        A name from :func:`~unified_map.available_backends`. ``None`` uses the active cluster
        connection (see :mod:`cluster_setup`) or, with none, a local process pool.
    chunksize : int, optional
        Items per task. ``None`` learns it from timings: big chunks for tiny functions, small
        ones for slow functions.
    progress : bool, default False
        Show a tqdm progress bar over items on stderr.
    n_workers : int, optional
        Size of a local pool (default: every available core). Pools stay warm between calls
        and are resized when this changes.
    on_error : {"raise", "return"}, default "raise"
        ``"raise"``: the first failing item stops the map and its exception reaches the
        caller. ``"return"``: the map runs to the end; a failed item's slot holds a
        :class:`~unified_map.Failure` and a summary line is logged (logger ``unified_map``).
    retries : int, default 0
        Run an item whose ``func`` raised again, up to this many more times, before it counts
        as failed. Only the failing item runs again, not its chunk. A worker lost by the
        engine does not use up retries.
    retry_on : exception type or tuple of them, default ``(Exception,)``
        Only exceptions of these types are retried.
    timeout : float, optional
        Seconds one item may run. A later item fails with ``TimeoutError`` and the map does
        not wait for it more than about ``timeout + 2`` s; process workers are interrupted or
        replaced, cluster tasks cancelled. ``threads`` and ``serial`` cannot stop a running
        thread: the item fails on time, its func goes on in the background. With a timeout
        each item is a task of its own (``chunksize`` may only be 1).
    checkpoint : str or os.PathLike, optional
        An SQLite file where finished results are saved as they arrive. Running the same
        map with the same file computes only the items it does not hold yet.
    checkpoint_mode : {"resume", "overwrite"}, default "resume"
        ``"overwrite"`` forgets the results an existing checkpoint holds and starts over.

    Returns
    -------
    list
        ``[func(x) for x in ...]`` in input order (with ``Failure`` slots under
        ``on_error="return"``).

    Raises
    ------
    Exception
        Whatever ``func`` raised, of its own type, with a note naming the failing item (and
        the attempts made, after retries) and, for work done in another process, the
        worker's traceback as ``__cause__``.
    CheckpointError
        The checkpoint file is not a unified_map checkpoint, or a result cannot be pickled
        into it; :class:`~unified_map.errors.CheckpointMismatchError` when the input differs
        from the one stored.

    Examples
    --------
    >>> import unified_map as um
    >>> um.parallel(lambda x: x * x, range(5), backend="threads")
    [0, 1, 4, 9, 16]
    >>> um.parallel(pow, [2, 3], [5, 2], backend="serial")
    [32, 9]
    >>> um.parallel(lambda x: 10 // x, [5, 0, 2], backend="serial", on_error="return")
    [2, Failure(index=1, item=0, exception=ZeroDivisionError('integer division or modulo by zero'), attempts=1), 5]
    """  # noqa: E501 - a doctest's output line
    options = MapOptions.from_keywords(locals())
    return _imap(func, iterables, options).drain()


def starmap(
    func: Callable,
    iterable: Iterable[Iterable],
    backend: str | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    n_workers: int | None = None,
    on_error: str = "raise",
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_mode: str = "resume",
) -> list:
    """Like :func:`itertools.starmap`: call ``func(*args)`` for each ``args`` tuple.

    Parameters are those of :func:`parallel`.

    Examples
    --------
    >>> import unified_map as um
    >>> um.starmap(divmod, [(7, 2), (9, 4)], backend="serial")
    [(3, 1), (2, 1)]
    >>> [type(r).__name__ for r in um.starmap(divmod, [(7, 0), (9, 4)], on_error="return")]
    ['Failure', 'tuple']
    """
    options = MapOptions.from_keywords(locals())
    return _imap(func, iterable, options, star=True).drain()


def imap(
    func: Callable,
    *iterables: Iterable,
    backend: str | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    n_workers: int | None = None,
    on_error: str = "raise",
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_mode: str = "resume",
    ordered: bool = True,
) -> Iterator:
    """Lazy :func:`parallel`: yield results in order as they are ready.

    Input is pulled only a few chunks ahead of the consumer, so ``imap`` works over endless
    generators when the consumer stops early, and memory stays flat on long inputs. The
    other parameters are those of :func:`parallel`, plus:

    Parameters
    ----------
    ordered : bool, default True
        ``False`` yields results as they complete, like ``Pool.imap_unordered``: a slow
        item does not hold back the rest. Pair it with ``on_error="return"`` to know which
        item failed (:attr:`Failure.index <unified_map.Failure.index>`), or yield
        ``(index, value)`` pairs from ``func`` to know which item each result belongs to.

    Examples
    --------
    >>> import itertools
    >>> import unified_map as um
    >>> squares = um.imap(lambda x: x * x, itertools.count(), backend="threads")
    >>> list(itertools.islice(squares, 4))
    [0, 1, 4, 9]
    >>> sorted(um.imap(abs, [-3, 1, -2], backend="threads", ordered=False))
    [1, 2, 3]
    """
    options = MapOptions.from_keywords(locals())
    return _imap(func, iterables, options)


class _Star:
    """``func(*args)`` as a one-argument callable; a class so that it pickles by value."""

    __slots__ = ("func",)

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, args):
        return self.func(*args)


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


def _imap(func, iterables, options: MapOptions, star: bool = False) -> Iterator:
    """Check everything, then start the map lazily: bad input fails at the call, before any
    work (and before a generator is first advanced)."""
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}: {func!r}")
    if star:  # starmap: one iterable of argument tuples
        items, n_items, fn, describe_as_args = iter(iterables), _length(iterables), func, True
        fn = _Star(func)
    elif len(iterables) == 1:
        items, n_items, fn, describe_as_args = iterables[0], _length(iterables[0]), func, False
        if type(items) not in (list, tuple):  # those are sliced into chunks, not iterated
            items = iter(items)
    elif not iterables:
        raise TypeError("parallel() needs at least one iterable, like map()")
    else:
        lengths = [_length(it) for it in iterables]
        n_items = None if None in lengths else min(lengths)
        # zip stops at the shortest iterable, exactly like map()
        items, fn, describe_as_args = zip(*iterables, strict=False), _Star(func), True
    if options.timeout is not None and options.chunksize not in (None, 1):
        raise ValueError(
            f"timeout= runs each item as a task of its own, so that it can be stopped alone: "
            f"chunksize={options.chunksize} cannot be combined with it (leave it out)"
        )
    name = _choose_backend(options.backend)
    # Opened now: a file that is not a checkpoint, or that cannot be written, fails at the
    # call rather than after the first chunks ran.
    checkpoint = None
    if options.checkpoint is not None:
        checkpoint = Checkpoint(options.checkpoint, options.checkpoint_mode)
    run = _Run(
        func=fn,
        items=items,
        n_items=n_items,
        name=name,
        options=options,
        cost_key=cost_key(func),
        describe_as_args=describe_as_args,
        checkpoint=checkpoint,
    )
    return _ResultIterator(run)


class _ResultIterator:
    """What ``imap`` returns: a generator of results that ``parallel`` can also drain a whole
    chunk at a time (one ``list.extend`` per chunk instead of one ``yield`` per item)."""

    def __init__(self, run: _Run):
        self._chunks = run.chunk_results()
        # chain, not a generator method: that would hold self in its frame, a reference cycle
        # that keeps an abandoned imap (and its running tasks) alive until the cyclic GC runs.
        self._items = itertools.chain.from_iterable(self._chunks)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._items)

    def close(self) -> None:
        """Stop early: withdraw the work not yet done."""
        self._chunks.close()

    def drain(self) -> list:
        """Every remaining result, as a list."""
        out: list | None = None
        for chunk in self._chunks:
            if out is None and type(chunk) is list:
                out = chunk  # a list of results nobody else holds: extend it, do not copy it
            elif out is None:
                out = list(chunk)
            else:
                out.extend(chunk)
        return [] if out is None else out


def _choose_backend(name: str | None) -> str:
    """The backend name a map runs on; fails at once on an unknown or missing backend."""
    if name is None or name == "auto":
        connection = cluster_setup.connect_from_environment()  # or UNIFIED_MAP_SCHEDULER's
        if connection is not None:  # a cluster the user connected to: always the place
            name = connection.backend_name
        elif name is None:
            name = DEFAULT_LOCAL_BACKEND
    backend_class(name)  # raise UnknownBackendError / BackendNotInstalledError now
    if inside_worker():
        # A map nested in a worker's task runs there, serially: the outer map already keeps
        # every worker busy (on `threads` the inner map would queue behind the very tasks
        # that wait for it), pool workers may not have children, and a cluster task must not
        # start a cluster of its own.
        return "serial"
    return name


class _Task:
    """One chunk of the map: where it starts, its items (for the error note and the
    checkpoint), its future while it runs, its outcome once known."""

    __slots__ = (
        "start",
        "items",
        "future",
        "n_bytes",
        "outcome",
        "sent",
        "started",
        "attempts",
        "lost_ok",
    )

    def __init__(self, start: int, items: list):
        self.start, self.items = start, items
        self.future: concurrent.futures.Future | None = None
        self.n_bytes = 0
        self.outcome: ChunkOutcome | None = None
        self.sent = 0.0  # when it was last submitted
        self.started: float | None = None  # set by an in-process task when it starts
        self.attempts = 0  # runs the driver has seen end (timeout=: retries are the driver's)
        self.lost_ok = 0  # times it may be sent again after a worker was stopped under it

    @property
    def packed(self) -> bool:
        """Whether the chunk was pickled (it left this process), so its result was too."""
        return self.n_bytes > 0


def _run_started(task: _Task, func, items, policy):
    """In-process task with a time limit: note when it really starts (it may wait in the
    pool's queue first), for the driver's deadline."""
    task.started = time.monotonic()
    return run_chunk(func, items, policy)


def _thread_future(fn, *args) -> concurrent.futures.Future:
    """Run ``fn(*args)`` on a daemon thread of its own: a backend that runs tasks in the
    caller's thread (``serial``) could not return at a deadline otherwise."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()

    def target():
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            future.set_exception(exc)

    threading.Thread(target=target, name="unified_map timed item", daemon=True).start()
    return future


@dataclasses.dataclass(eq=False, repr=False)  # a repr would print every input item
class _Run:
    """One map: submit chunks a bounded distance ahead, collect them, yield them in order
    (or as they complete), and apply the map's error policy, time limit and checkpoint.

    The bookkeeping costs the same per chunk whatever the number of workers: finished chunks
    arrive on a queue (filled by the futures' done-callbacks) and running ones are counted,
    so nothing is rescanned per chunk, which on a cluster of a thousand slots would make the
    caller the bottleneck. (With ``timeout=`` the running chunks, at most one per worker
    slot, are scanned for overdue ones.)
    """

    func: Callable
    items: Any  # a list or tuple (sliced into chunks) or an iterator
    n_items: int | None
    name: str
    options: MapOptions
    cost_key: Hashable | None
    describe_as_args: bool
    checkpoint: Checkpoint | None = None

    def chunk_results(self) -> Iterator[list]:
        """Each chunk's list of results, in input order (or completion order)."""
        self.n_failed = 0
        self.first_failure: Failure | None = None
        self.n_seen = 0
        self.spool: str | None = None
        try:
            # Counted as a user of the backend from start to end: another thread resizing
            # the pool or reconnecting cannot close it under this map.
            backend = acquire_backend(self.name, self.options.n_workers)
            try:
                with backend.lease():
                    yield from self._run(backend)
            finally:
                release_backend(backend)
        finally:
            if self.checkpoint is not None:
                self.checkpoint.close()
            if self.spool is not None:
                shutil.rmtree(self.spool, ignore_errors=True)
            if self.n_failed:
                self._log_summary()

    def _log_summary(self) -> None:
        first = self.first_failure
        logger.warning(
            "unified_map: %d of %d items failed (on_error='return'); first: item %d (%s): %s",
            self.n_failed,
            self.n_seen,
            first.index,
            first.item,
            _describe(first.exception),
        )

    def _run(self, backend) -> Iterator[list]:
        options = self.options
        self.backend = backend
        self.shared_func = None  # func as the backend keeps it for this map (splits_tasks)
        # Submitted chunks not yet yielded, in input order (a dict: removable from anywhere).
        self.pending: dict[_Task, None] = {}
        self.in_flight: dict[_Task, None] = {}  # running: submitted, outcome not known
        self.completed: collections.deque[_Task] = collections.deque()  # for ordered=False
        self.finished: queue.SimpleQueue = queue.SimpleQueue()  # (task, future), done
        self.running = 0
        self.bytes_in_flight = 0
        self.exhausted = False
        self.timed = options.timeout is not None
        self.answered: float | None = None  # when the first task of this map came back
        self.policy = ItemPolicy(
            retries=0 if self.timed else options.retries,  # timed: the driver retries
            retry_on=options.retry_on,
            timeout=options.timeout,
            keep_going=options.returns_failures,
        )
        if self.timed:
            # A map with a time limit per item has items that may take long: auto sends it
            # to its process pool at once, where an item can be stopped.
            backend.expect(math.inf)
            if backend.starts_local_processes:
                self.spool = tempfile.mkdtemp(prefix="unified_map-")
                self.policy = dataclasses.replace(self.policy, spool=self.spool)
        cost = recall_seconds_per_item(self.cost_key)
        if not self.timed:
            backend.expect(None if cost is None or self.n_items is None else cost * self.n_items)
        self.sizer = ChunkSizer(
            1 if self.timed else options.chunksize,
            self.n_items,
            backend.n_workers,
            backend.target_chunk_seconds,
            key=self.cost_key,
            balance=backend.balances_load,
            max_bytes=backend.max_chunk_bytes,
            chunks_per_worker=backend.chunks_per_worker,
            guided=backend.guided_chunks,
        )
        self.chunks = self._segments()
        bar = self._progress_bar()
        try:
            while True:
                self._submit_more()
                if not self.pending:
                    return
                task = self._next_ready()
                del self.pending[task]
                results = self._settle(task)
                if bar is not None:
                    bar.update(len(results))
                yield results
        except KeyboardInterrupt:
            # Stop the workers now rather than let them finish work nobody will collect.
            discard_backend(backend, abort=True)
            raise
        except WorkerLostError:
            discard_backend(backend, abort=True)
            raise
        except backend.worker_lost_errors as exc:
            discard_backend(backend, abort=True)
            raise WorkerLostError(f"backend {backend.name!r} lost a worker: {exc}") from exc
        finally:
            backend.cancel([t.future for t in self.in_flight if t.future is not None])
            self.pending.clear()
            self.in_flight.clear()
            if bar is not None:
                bar.close()

    def _segments(self) -> Iterator[tuple[str, int, list]]:
        """The input cut into chunks; with a checkpoint, each cut again into the runs of
        items it holds and those still to compute."""
        for start, items in iter_chunks(self.items, self.sizer):
            self.n_seen += len(items)
            if self.checkpoint is None:
                yield "missing", start, items
            else:
                yield from self.checkpoint.split(start, items)

    def _next_ready(self) -> _Task:
        """The next chunk to yield: the first in input order once it is done, or with
        ``ordered=False`` whichever is done first."""
        if self.options.ordered:
            task = next(iter(self.pending))
            while task.outcome is None:
                self._collect()
            return task
        while not self.completed:
            self._collect()
        return self.completed.popleft()

    def _progress_bar(self):
        if not self.options.progress:
            return None
        from tqdm.auto import tqdm  # imported on demand: most maps show no bar

        return tqdm(total=self.n_items, unit="item", file=sys.stderr, desc=self.backend.name)

    @property
    def _limit(self) -> int:
        # With a time limit, no more tasks than worker slots: a task is then running from
        # the moment it is sent, and the driver's clock can start there.
        if self.timed:
            return max(1, self.backend.n_workers)
        if not self.sizer.knows_sizes:
            # Probing the cost with one-item chunks: one per worker is enough; more would
            # only be one-item tasks whose overhead the measured sizes avoid.
            return max(1, self.backend.n_workers)
        return self.backend.max_in_flight

    def _submit_more(self) -> None:
        # Keep up to max_in_flight chunks running (and their payload under a byte budget),
        # and never more than twice that waiting to be consumed: that bound is what keeps
        # imap lazy and its memory flat.
        limit = self._limit
        while (
            not self.exhausted
            and self.running < limit
            and len(self.pending) < 2 * limit
            and (self.bytes_in_flight < MAX_BYTES_IN_FLIGHT or self.running == 0)
        ):
            segment = next(self.chunks, None)
            if segment is None:
                self.exhausted = True
                return
            kind, start, values = segment
            if kind == "stored":  # read back from the checkpoint: nothing to run
                task = _Task(start, values)
                task.outcome = ChunkOutcome(values)
                self.pending[task] = None
                self._completed(task)
                continue
            task = _Task(start, values)
            self.pending[task] = None
            self._send(task)

    def _send(self, task: _Task) -> None:
        """Submit ``task`` (again, after a retry or a lost worker) and start its clock."""
        policy = self.policy
        if policy.spool is not None:
            policy = dataclasses.replace(policy, tag=f"{task.start}.{task.attempts}")
        task.started = None
        task.future, task.n_bytes = self._submit(task, policy)
        self.in_flight[task] = None
        self.running += 1
        self.bytes_in_flight += task.n_bytes
        task.sent = time.monotonic()
        # The callback holds the queue and the task, not this run: an engine that keeps
        # finished futures a while must not keep func (and what it binds) alive with them.
        task.future.add_done_callback(lambda f, put=self.finished.put, task=task: put((task, f)))

    def _submit(self, task: _Task, policy: ItemPolicy) -> tuple[concurrent.futures.Future, int]:
        start, items = task.start, task.items
        if self.backend.in_process:
            if not self.timed:
                return self.backend.submit(run_chunk, self.func, items, policy), 0
            if self.backend.runs_in_caller:
                return _thread_future(_run_started, task, self.func, items, policy), 0
            return self.backend.submit(_run_started, task, self.func, items, policy), 0
        if self.backend.splits_tasks:
            return self._submit_split(task, policy)
        try:
            blob = pack(self.func, items) if policy.plain else pack(self.func, items, policy)
        except Exception as exc:
            what = _unpicklable_part(self.func, items, start)
            _add_note(
                exc,
                f"unified_map: could not pickle {what} to send it to backend "
                f"{self.backend.name!r}; backend='threads' needs no pickling",
            )
            raise
        self.sizer.observe_bytes(len(items), len(blob))
        return self.backend.submit(run_packed, blob), len(blob)

    def _submit_split(self, task: _Task, policy: ItemPolicy):
        """Submit to a backend that keeps ``func`` on the cluster (sent once per map) and
        takes the items' large buffers out of band."""
        try:
            if self.shared_func is None:
                self.shared_func = self.backend.share_func(pack_func(self.func))
            header, buffers = pack_items(task.items, None if policy.plain else policy)
        except Exception as exc:
            what = _unpicklable_part(self.func, task.items, task.start)
            _add_note(
                exc,
                f"unified_map: could not pickle {what} to send it to backend "
                f"{self.backend.name!r}; backend='threads' needs no pickling",
            )
            raise
        n_bytes = len(header) + sum(buffer.raw().nbytes for buffer in buffers)
        self.sizer.observe_bytes(len(task.items), n_bytes)
        return self.backend.submit_split(self.shared_func, header, buffers), n_bytes

    def _collect(self) -> None:
        """Wait for at least one chunk to finish (watching the engine's health, and the
        deadlines of ``timeout=``, meanwhile), then take every finished one."""
        wait = HEALTH_CHECK_SECONDS
        if self.timed:
            wait = min(wait, max(0.0, self._earliest_deadline() - time.monotonic()))
        try:
            done = [self.finished.get(timeout=wait)]
        except queue.Empty:
            if self.timed:
                self._stop_overdue()
            self.backend.check_health()
            return
        while True:
            try:
                done.append(self.finished.get_nowait())
            except queue.Empty:
                break
        if self.answered is None:
            self.answered = time.monotonic()
        arrived = []
        for task, future in done:
            if future is not task.future or task not in self.in_flight:
                continue  # a run the driver stopped or sent again meanwhile
            del self.in_flight[task]
            self.running -= 1
            self.bytes_in_flight -= task.n_bytes
            arrived.append(task)
        if self.sizer.knows_sizes:
            # Keep the workers fed before spending time unpacking results: a worker that
            # finished waits idle until the next chunk arrives.
            self._submit_more()
        for task in arrived:
            self._arrive(task)
        if self.timed:
            self._stop_overdue()

    def _arrive(self, task: _Task) -> None:
        future = task.future
        if task.lost_ok and (future.cancelled() or self._lost_worker(future)):
            # Collateral of a worker this map stopped (a pool that breaks as a whole when
            # one worker is killed): run it again; it does not count as an attempt.
            task.lost_ok -= 1
            self._send(task)
            return
        if future.cancelled():  # not by this map, which cancels only when it ends
            raise WorkerLostError(
                f"backend {self.backend.name!r} was stopped while this map was running "
                "(Ctrl-C or a lost worker in a map of another thread)"
            )
        value = future.result()
        outcome = unpack_outcome(value) if task.packed else value
        task.attempts += 1
        if self.timed and self._should_retry(task, outcome):
            self._send(task)
            return
        for failure in outcome.failures:
            failure.attempts += task.attempts - 1  # earlier runs of this (one-item) task
        task.outcome = outcome
        self.sizer.observe(len(outcome.results) or 1, outcome.seconds)
        if self.checkpoint is not None:
            self.checkpoint.store(
                task.start, task.items, outcome.results, {f.index for f in outcome.failures}
            )
        self._completed(task)

    def _completed(self, task: _Task) -> None:
        if not self.options.ordered:
            self.completed.append(task)

    def _lost_worker(self, future) -> bool:
        exc = future.exception()
        return isinstance(exc, (WorkerLostError, *self.backend.worker_lost_errors))

    def _should_retry(self, task: _Task, outcome: ChunkOutcome) -> bool:
        failure = outcome.failure
        return (
            failure is not None
            and task.attempts <= self.options.retries
            and isinstance(failure.exception, Exception)
            and isinstance(failure.exception, self.options.retry_on)
        )

    # -- timeout= ----------------------------------------------------------------------------

    def _deadline(self, task: _Task) -> float | None:
        """When the driver gives up on ``task``: ``timeout`` after it started, for a task
        run in this process; for others, which cannot tell when they start, ``timeout`` plus
        :data:`TIMEOUT_GRACE_SECONDS` after it was sent, or after the engine's first answer
        in this map if that came later (an engine starting up, a pool spawning workers,
        does not use up the first items' time: up to :data:`START_UP_SECONDS` is allowed)."""
        if self.backend.in_process:
            return None if task.started is None else task.started + self.options.timeout
        limit = self.options.timeout + TIMEOUT_GRACE_SECONDS
        if self.answered is None:
            return task.sent + limit + START_UP_SECONDS
        return max(task.sent, self.answered) + limit

    def _earliest_deadline(self) -> float:
        deadlines = [self._deadline(task) for task in self.in_flight]
        return min((d for d in deadlines if d is not None), default=math.inf)

    def _stop_overdue(self) -> None:
        now = time.monotonic()
        for task in list(self.in_flight):
            deadline = self._deadline(task)
            if deadline is None or now < deadline or task.future.done():
                continue  # a finished one is collected as usual
            self._stop(task)

    def _stop(self, task: _Task) -> None:
        """Give up on an item that ran past its time: stop its work (replace the worker
        process, cancel the cluster task) and fail or retry it."""
        future, task.future = task.future, None
        del self.in_flight[task]
        self.running -= 1
        self.bytes_in_flight -= task.n_bytes
        pid = self._worker_pid(task)
        if self.backend.stop_task(future, pid):
            for other in self.in_flight:  # the pool broke as a whole: they run again
                other.lost_ok += 1
        task.attempts += 1
        seconds = self.options.timeout
        if self.backend.in_process:
            how = (
                f"backend {self.backend.name!r} cannot stop a running thread: func goes on "
                "running in the background until it returns"
            )
        elif pid is not None:
            how = f"its worker process (pid {pid}) was stopped and replaced"
        else:
            how = f"its task was cancelled on backend {self.backend.name!r}"
        error = TimeoutError(f"item ran longer than timeout={seconds:g} s; {how}")
        if task.attempts <= self.options.retries and isinstance(error, self.options.retry_on):
            self._send(task)
            return
        text = f"TimeoutError: {error} (stopped by the driver; no traceback from the worker)\n"
        failure = ChunkFailure(0, error, text, attempts=task.attempts)
        keep = self.options.returns_failures
        task.outcome = ChunkOutcome([None] * len(task.items) if keep else [], [failure], seconds)
        self._completed(task)

    def _worker_pid(self, task: _Task) -> int | None:
        """The local worker process running ``task``, as it noted in the spool."""
        if self.spool is None:
            return None
        path = os.path.join(self.spool, f"{task.start}.{task.attempts}")
        try:
            with open(path) as file:
                return int(file.read())
        except (OSError, ValueError):
            return None  # not started yet: it waited in a queue

    # -- failures ----------------------------------------------------------------------------

    def _settle(self, task: _Task) -> list:
        """The chunk's results as the caller gets them: failures raised, or put in their
        slots as :class:`Failure` under ``on_error="return"``."""
        outcome = task.outcome
        if not outcome.failures:
            return outcome.results
        if not self.options.returns_failures:
            self._raise_failure(task, outcome.failures[0])
        for failure in outcome.failures:
            if not isinstance(failure.exception, Exception):  # KeyboardInterrupt and such
                self._raise_failure(task, failure)
        results = outcome.results
        for failure in outcome.failures:
            exc = failure.exception
            _add_note(exc, self._note(task, failure))
            stand_in = Failure(
                index=task.start + failure.index,
                item=self._short_item(task, failure),
                exception=exc,
                traceback=failure.traceback_text,
                attempts=failure.attempts,
            )
            results[failure.index] = stand_in
            self.n_failed += 1
            if self.first_failure is None:
                self.first_failure = stand_in
        return results

    def _short_item(self, task: _Task, failure: ChunkFailure) -> str:
        what = "args " if self.describe_as_args else ""
        return what + _short_repr.repr(task.items[failure.index])

    def _note(self, task: _Task, failure: ChunkFailure) -> str:
        where = f"item {task.start + failure.index} of the input: {self._short_item(task, failure)}"
        if failure.in_result:
            return (
                f"unified_map: the result of {where} could not be sent back from backend "
                f"{self.backend.name!r}: func returned something that cannot be pickled"
            )
        attempts = f" after {failure.attempts} attempts" if failure.attempts > 1 else ""
        return f"unified_map: func failed on {where} (backend {self.backend.name!r}){attempts}"

    def _raise_failure(self, task: _Task, failure: ChunkFailure):
        exc = failure.exception
        _add_note(exc, self._note(task, failure))
        if exc.__traceback__ is None:  # it came from another process: show the worker's side
            raise exc from RemoteTraceback(failure.traceback_text)
        raise exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unpicklable_part(func, items: list, start: int) -> str:
    """Name what would not pickle: ``func`` itself, or the first item that does not."""
    try:
        pack(func, [])
    except Exception:  # noqa: BLE001
        return f"func {_short_repr.repr(func)}"
    for offset, item in enumerate(items):
        try:
            pack(func, [item])
        except Exception:  # noqa: BLE001
            return f"item {start + offset} of the input ({_short_repr.repr(item)})"
    return "the chunk"


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10 has the attribute (PEP 678) but does not print it
        # exceptiongroup, the backport, teaches traceback printing to show __notes__.
        import exceptiongroup  # noqa: F401

        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
