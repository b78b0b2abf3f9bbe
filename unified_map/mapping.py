"""``parallel``, ``imap`` and ``starmap``: validate, chunk, pick the backend, run, keep the
order, and turn a failure in a worker into the caller's exception.

Everything a backend would otherwise repeat lives here once; backends only run chunks.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import queue
import reprlib
import sys
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
    ChunkOutcome,
    inside_worker,
    pack,
    run_chunk,
    run_packed,
    unpack_outcome,
)
from unified_map.chunking import (
    MAX_BYTES_IN_FLIGHT,
    ChunkSizer,
    cost_key,
    iter_chunks,
    recall_seconds_per_item,
)
from unified_map.errors import RemoteTraceback, WorkerLostError

__all__ = ["parallel", "imap", "starmap"]

# While waiting for a chunk, look this often whether the engine lost a worker.
HEALTH_CHECK_SECONDS = 0.5

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
) -> list:
    """Apply ``func`` to every item, in parallel, and return the results as a list.

    A drop-in for ``list(map(func, *iterables))``: the same results in the same order;
    several iterables are zipped and stop at the shortest.

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

    Returns
    -------
    list
        ``[func(x) for x in ...]`` in input order.

    Raises
    ------
    Exception
        Whatever ``func`` raised, of its own type, with a note naming the failing item and,
        for work done in another process, the worker's traceback as ``__cause__``.

    Examples
    --------
    >>> import unified_map as um
    >>> um.parallel(lambda x: x * x, range(5), backend="threads")
    [0, 1, 4, 9, 16]
    >>> um.parallel(pow, [2, 3], [5, 2], backend="serial")
    [32, 9]
    """
    results = imap(
        func,
        *iterables,
        backend=backend,
        chunksize=chunksize,
        progress=progress,
        n_workers=n_workers,
    )
    return results.drain()


def starmap(
    func: Callable,
    iterable: Iterable[Iterable],
    backend: str | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    n_workers: int | None = None,
) -> list:
    """Like :func:`itertools.starmap`: call ``func(*args)`` for each ``args`` tuple.

    Parameters are those of :func:`parallel`.

    Examples
    --------
    >>> import unified_map as um
    >>> um.starmap(divmod, [(7, 2), (9, 4)], backend="serial")
    [(3, 1), (2, 1)]
    """
    return _imap(
        _Star(func) if callable(func) else func,
        iter(iterable),
        _length(iterable),
        backend=backend,
        chunksize=chunksize,
        progress=progress,
        n_workers=n_workers,
        describe_as_args=True,
    ).drain()


def imap(
    func: Callable,
    *iterables: Iterable,
    backend: str | None = None,
    chunksize: int | None = None,
    progress: bool = False,
    n_workers: int | None = None,
) -> Iterator:
    """Lazy :func:`parallel`: yield results in order as they are ready.

    Input is pulled only a few chunks ahead of the consumer, so ``imap`` works over endless
    generators when the consumer stops early, and memory stays flat on long inputs.

    Examples
    --------
    >>> import itertools
    >>> import unified_map as um
    >>> squares = um.imap(lambda x: x * x, itertools.count(), backend="threads")
    >>> list(itertools.islice(squares, 4))
    [0, 1, 4, 9]
    """
    if len(iterables) == 1:
        items, n_items, fn = iterables[0], _length(iterables[0]), func
        if type(items) not in (list, tuple):  # those are sliced into chunks, not iterated
            items = iter(items)
    else:
        lengths = [_length(it) for it in iterables]
        n_items = None if not lengths or None in lengths else min(lengths)
        # zip stops at the shortest iterable, exactly like map()
        items, fn = zip(*iterables, strict=False), _Star(func) if callable(func) else func
    return _imap(
        fn,
        items,
        n_items,
        backend=backend,
        chunksize=chunksize,
        progress=progress,
        n_workers=n_workers,
        describe_as_args=len(iterables) != 1,
        needs_iterables=not iterables,
    )


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


def _validate(func, backend, chunksize, n_workers, needs_iterables) -> None:
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}: {func!r}")
    if needs_iterables:
        raise TypeError("parallel() needs at least one iterable, like map()")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a name (str) or None, got {backend!r}")
    for name, value in (("chunksize", chunksize), ("n_workers", n_workers)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _imap(
    func,
    items,
    n_items,
    *,
    backend,
    chunksize,
    progress,
    n_workers,
    describe_as_args,
    needs_iterables=False,
) -> Iterator:
    # Checked here, before the generator starts, so bad input fails at the call.
    callee = func.func if isinstance(func, _Star) else func
    _validate(callee, backend, chunksize, n_workers, needs_iterables)
    run = _OrderedRun(
        func=func,
        items=items,
        n_items=n_items,
        name=_choose_backend(backend),
        n_workers=n_workers,
        chunksize=chunksize,
        cost_key=cost_key(callee),
        progress=progress,
        describe_as_args=describe_as_args,
    )
    return _ResultIterator(run)


class _ResultIterator:
    """What ``imap`` returns: a generator of results that ``parallel`` can also drain a whole
    chunk at a time (one ``list.extend`` per chunk instead of one ``yield`` per item)."""

    def __init__(self, run: _OrderedRun):
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
        connection = cluster_setup.active_connection()
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
    """One submitted chunk: where it starts, its items (for the error note), its future."""

    __slots__ = ("start", "items", "future", "n_bytes", "outcome")

    def __init__(self, start: int, items: list, future: concurrent.futures.Future, n_bytes: int):
        self.start, self.items, self.future, self.n_bytes = start, items, future, n_bytes
        self.outcome: ChunkOutcome | None = None

    @property
    def packed(self) -> bool:
        """Whether the chunk was pickled (it left this process), so its result was too."""
        return self.n_bytes > 0


@dataclasses.dataclass(eq=False, repr=False)  # a repr would print every input item
class _OrderedRun:
    """One map: submit chunks a bounded distance ahead, collect them, yield in order.

    The bookkeeping costs the same per chunk whatever the number of workers: finished chunks
    arrive on a queue (filled by the futures' done-callbacks) and running ones are counted,
    so nothing is rescanned per chunk, which on a cluster of a thousand slots would make the
    caller the bottleneck.
    """

    func: Callable
    items: Any  # a list or tuple (sliced into chunks) or an iterator
    n_items: int | None
    name: str
    n_workers: int | None
    chunksize: int | None
    cost_key: Hashable | None
    progress: bool
    describe_as_args: bool

    def chunk_results(self) -> Iterator[list]:
        """Each chunk's list of results, in input order."""
        # Counted as a user of the backend from start to end: another thread resizing the
        # pool or reconnecting cannot close it under this map.
        backend = acquire_backend(self.name, self.n_workers)
        try:
            with backend.lease():
                yield from self._run(backend)
        finally:
            release_backend(backend)

    def _run(self, backend) -> Iterator[list]:
        self.backend = backend
        self.pending: collections.deque[_Task] = collections.deque()  # submitted, in order
        self.finished: queue.SimpleQueue[_Task] = queue.SimpleQueue()  # done, not collected
        self.running = 0  # submitted and not yet collected
        self.bytes_in_flight = 0
        self.exhausted = False
        cost = recall_seconds_per_item(self.cost_key)
        backend.expect(None if cost is None or self.n_items is None else cost * self.n_items)
        self.sizer = ChunkSizer(
            self.chunksize,
            self.n_items,
            backend.n_workers,
            backend.target_chunk_seconds,
            key=self.cost_key,
            balance=backend.balances_load,
            max_bytes=backend.max_chunk_bytes,
        )
        self.chunks = iter_chunks(self.items, self.sizer)
        bar = self._progress_bar()
        try:
            while True:
                self._submit_more()
                if not self.pending:
                    return
                task = self.pending[0]
                while task.outcome is None:
                    self._collect()
                self.pending.popleft()
                outcome = task.outcome
                if outcome.failure is not None:
                    self._raise_failure(task, outcome)
                if bar is not None:
                    bar.update(len(outcome.results))
                yield outcome.results
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
            backend.cancel([task.future for task in self.pending if task.outcome is None])
            self.pending.clear()
            if bar is not None:
                bar.close()

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm.auto import tqdm  # imported on demand: most maps show no bar

        return tqdm(total=self.n_items, unit="item", file=sys.stderr, desc=self.backend.name)

    def _submit_more(self) -> None:
        # Keep up to max_in_flight chunks running (and their payload under a byte budget),
        # and never more than twice that waiting to be consumed: that bound is what keeps
        # imap lazy and its memory flat.
        limit = self.backend.max_in_flight
        while (
            not self.exhausted
            and self.running < limit
            and len(self.pending) < 2 * limit
            and (self.bytes_in_flight < MAX_BYTES_IN_FLIGHT or self.running == 0)
        ):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.exhausted = True
                return
            start, items = chunk
            future, n_bytes = self._submit(start, items)
            task = _Task(start, items, future, n_bytes)
            self.pending.append(task)
            self.running += 1
            self.bytes_in_flight += n_bytes
            # The callback holds the queue and the task, not this run: an engine that keeps
            # finished futures a while must not keep func (and what it binds) alive with them.
            future.add_done_callback(lambda _, put=self.finished.put, task=task: put(task))

    def _submit(self, start: int, items: list) -> tuple[concurrent.futures.Future, int]:
        if self.backend.in_process:
            return self.backend.submit(run_chunk, self.func, items), 0
        try:
            blob = pack(self.func, items)
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

    def _collect(self) -> None:
        """Wait for at least one chunk to finish (watching the engine's health meanwhile),
        then take every finished one."""
        try:
            done = [self.finished.get(timeout=HEALTH_CHECK_SECONDS)]
        except queue.Empty:
            self.backend.check_health()
            return
        while True:
            try:
                done.append(self.finished.get_nowait())
            except queue.Empty:
                break
        for task in done:
            self.running -= 1
            self.bytes_in_flight -= task.n_bytes
        if self.sizer.knows_sizes:
            # Keep the workers fed before spending time unpacking results: a worker that
            # finished waits idle until the next chunk arrives.
            self._submit_more()
        for task in done:
            if task.future.cancelled():  # not by this map, which cancels only when it ends
                raise WorkerLostError(
                    f"backend {self.backend.name!r} was stopped while this map was running "
                    "(Ctrl-C or a lost worker in a map of another thread)"
                )
            value = task.future.result()
            task.outcome = unpack_outcome(value) if task.packed else value
            self.sizer.observe(len(task.outcome.results) or 1, task.outcome.seconds)

    def _raise_failure(self, task: _Task, outcome: ChunkOutcome):
        failure = outcome.failure
        exc = failure.exception
        item = task.items[failure.index]
        what = "args " if self.describe_as_args else ""
        where = f"item {task.start + failure.index} of the input: {what}{_short_repr.repr(item)}"
        if failure.in_result:
            note = (
                f"unified_map: the result of {where} could not be sent back from backend "
                f"{self.backend.name!r}: func returned something that cannot be pickled"
            )
        else:
            note = f"unified_map: func failed on {where} (backend {self.backend.name!r})"
        _add_note(exc, note)
        if exc.__traceback__ is None:  # it came from another process: show the worker's side
            raise exc from RemoteTraceback(failure.traceback_text)
        raise exc


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
