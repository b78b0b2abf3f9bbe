"""The backend contract, documented once, and the code that runs a chunk on any engine.

A backend is a small :class:`concurrent.futures.Executor`: ``submit(fn, *args)`` runs
``fn(*args)`` on its engine and returns a :class:`~concurrent.futures.Future`;
``shutdown(wait, cancel_futures=...)`` releases the engine. Chunk sizing,
zipping, ordering, progress, laziness and error reporting all live in
:mod:`unified_map.mapping`, so a backend only has to move work and results.

Backends whose tasks leave this process (``in_process = False``) are handed an opaque
``bytes`` blob made by :func:`pack` and must run :func:`run_packed` on it. Shipping one blob
rather than ``(func, list)`` means every engine sees a single small object: dask, for one,
serialises a plain list element by element, about 40x slower than one pickled blob.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import math
import os
import pickle
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from unified_map.chunking import MIN_CHUNKS_PER_WORKER, TARGET_CHUNK_SECONDS
from unified_map.errors import UnpicklableRemoteError
from unified_map.timeouts import ItemTimeout, item_clock

# How deep this thread is in running chunks: above 0 inside a worker's task (any backend).
_worker_state = threading.local()


@dataclass
class ChunkFailure:
    """What went wrong in a chunk: where, the exception, and the worker's traceback text."""

    index: int
    exception: BaseException
    traceback_text: str
    #: True when ``func`` succeeded but its result could not be pickled to travel back.
    in_result: bool = False
    #: How many times the item was run (more than 1 after retries).
    attempts: int = 1


@dataclass
class ChunkOutcome:
    """The result of running ``func`` over one chunk of items.

    Without ``keep_going`` (the default policy), ``results`` holds the values computed before
    the first failure (all of them when there is none). With it, ``results`` has one slot per
    item and a failed item's slot holds None; ``failures`` lists every failed item.
    ``seconds`` is the compute time measured where the chunk ran, which the auto chunker uses.
    """

    results: list = field(default_factory=list)
    failures: list[ChunkFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failure(self) -> ChunkFailure | None:
        """The first failure, or None."""
        return self.failures[0] if self.failures else None


@dataclass(frozen=True)
class ItemPolicy:
    """How a worker runs each item of a chunk: the part of a map's options that travels.

    Attributes
    ----------
    retries : int
        Run a failing item again, right away in the same task, up to this many more times.
    retry_on : tuple of exception types
        Only exceptions of these types are retried (never a BaseException that is not an
        Exception, such as KeyboardInterrupt).
    timeout : float or None
        Seconds an item may run before it fails with ``TimeoutError``.
    keep_going : bool
        After a failed item, go on with the rest of the chunk (``on_error="return"``).
    interrupt : bool
        Stop an item at its timeout in the worker (only in a worker process, never in the
        caller's: see :mod:`unified_map.timeouts`).
    spool : str or None
        A local directory where a worker notes its pid per task (``tag``), so that the driver
        can stop a local worker process whose item does not stop.
    tag : str
        Names the task in ``spool``.
    """

    retries: int = 0
    retry_on: tuple = (Exception,)
    timeout: float | None = None
    keep_going: bool = False
    interrupt: bool = False
    spool: str | None = None
    tag: str = ""

    @property
    def plain(self) -> bool:
        """The default: stop at the first failure, no retries, no time limit."""
        return not (self.retries or self.timeout is not None or self.keep_going)


_PLAIN = ItemPolicy()


def run_chunk(func: Callable, items: list, policy: ItemPolicy | None = None) -> ChunkOutcome:
    """Apply ``func`` to each item, stopping at the first exception and recording it
    (or, as ``policy`` says, retrying items, timing them and going on after a failure).

    Examples
    --------
    >>> run_chunk(abs, [-1, 2]).results
    [1, 2]
    >>> run_chunk(lambda x: 1 / x, [1, 0]).failure.index
    1
    >>> outcome = run_chunk(lambda x: 1 / x, [0, 2], ItemPolicy(keep_going=True, retries=1))
    >>> outcome.results, outcome.failure.index, outcome.failure.attempts
    ([None, 0.5], 0, 2)
    """
    if policy is not None and not policy.plain:
        return _run_with_policy(func, items, policy)
    results: list = []
    start = time.perf_counter()
    _worker_state.depth = getattr(_worker_state, "depth", 0) + 1
    try:
        # extend(map(...)) is the fastest loop CPython has, and keeps the results computed
        # before an exception, so len(results) is the index of the failing item.
        results.extend(map(func, items))
    except BaseException as exc:  # noqa: BLE001 - SystemExit and the like too: a pool
        # thread or process that let them escape would die and leave its task unfinished.
        failure = ChunkFailure(len(results), exc, traceback.format_exc())
        return ChunkOutcome(results, [failure], time.perf_counter() - start)
    finally:
        _worker_state.depth -= 1
    if len(results) < len(items):
        return ChunkOutcome(
            results, [_stop_iteration_failure(len(results))], time.perf_counter() - start
        )
    return ChunkOutcome(results, [], time.perf_counter() - start)


def _stop_iteration_failure(index: int, attempts: int = 1) -> ChunkFailure:
    # func raised StopIteration, which map() takes for "no more items": the rest of the
    # chunk would vanish silently. Report it as PEP 479 does for generators.
    return ChunkFailure(
        index,
        RuntimeError("func raised StopIteration"),
        "StopIteration raised by func (reported as RuntimeError, as PEP 479 does for "
        "generators: map() would silently drop the remaining items)\n",
        attempts=attempts,
    )


def _run_with_policy(func: Callable, items: list, policy: ItemPolicy) -> ChunkOutcome:
    """:func:`run_chunk` with retries, a time limit per item, or going on after failures.

    With no time limit the loop is still ``extend(map(...))``, resumed after each failure:
    a map in which nothing fails costs what a plain one does.
    """
    results: list = []
    failures: list[ChunkFailure] = []
    start = time.perf_counter()
    if policy.spool:
        _note_worker(policy)
    clock = item_clock() if policy.timeout is not None and policy.interrupt else None
    _worker_state.depth = getattr(_worker_state, "depth", 0) + 1
    try:
        with clock or contextlib.nullcontext():
            call = func if clock is None else _timed(func, clock, policy.timeout)
            remaining = iter(items)
            while len(results) < len(items):
                try:
                    results.extend(map(call, remaining))
                    if len(results) == len(items):
                        break
                    # StopIteration from func ended map() early: the item it was raised on
                    first: BaseException = RuntimeError("func raised StopIteration")
                    first_text = _stop_iteration_failure(0).traceback_text
                except BaseException as exc:  # noqa: BLE001 - see run_chunk
                    first, first_text = _as_item_error(exc, policy), traceback.format_exc()
                value, failure = _retry(call, items[len(results)], first, first_text, policy)
                if failure is None:
                    results.append(value)
                    continue
                failure.index = len(results)
                failures.append(failure)
                if not policy.keep_going or not isinstance(failure.exception, Exception):
                    break  # a BaseException such as KeyboardInterrupt stops the chunk
                results.append(None)
    finally:
        _worker_state.depth -= 1
    return ChunkOutcome(results, failures, time.perf_counter() - start)


def _retry(call, item, exc, text, policy: ItemPolicy):
    """Run ``item`` again while its exception is one to retry: ``(value, None)`` once it
    succeeds, or ``(None, ChunkFailure)`` with the last exception."""
    attempts = 1
    while (
        attempts <= policy.retries
        and isinstance(exc, Exception)
        and isinstance(exc, policy.retry_on)
    ):
        attempts += 1
        try:
            return call(item), None
        except BaseException as again:  # noqa: BLE001 - see run_chunk
            exc, text = _as_item_error(again, policy), traceback.format_exc()
            if isinstance(again, StopIteration):
                text = _stop_iteration_failure(0).traceback_text
    return None, ChunkFailure(0, exc, text, attempts=attempts)


def _as_item_error(exc: BaseException, policy: ItemPolicy) -> BaseException:
    if isinstance(exc, ItemTimeout):
        error = TimeoutError(f"item ran longer than timeout={policy.timeout:g} s")
        error.__cause__ = None
        return error
    if isinstance(exc, StopIteration):
        return RuntimeError("func raised StopIteration")
    return exc


def _timed(func: Callable, clock, seconds: float) -> Callable:
    def timed_call(item):
        clock.arm(seconds)
        try:
            return func(item)
        finally:
            clock.disarm()

    return timed_call


def _note_worker(policy: ItemPolicy) -> None:
    """Write this process's pid where the driver looks when it must stop this task."""
    try:
        with open(os.path.join(policy.spool, policy.tag), "w") as file:
            file.write(str(os.getpid()))
    except OSError:  # the map ended meanwhile and removed its spool: nothing to note
        pass


class _KeepFileNames(cloudpickle.Pickler):
    """cloudpickle, but the code of functions pickled by value keeps its file name.

    cloudpickle writes ``<dynamic-code>`` where a code object's file name was (to make its
    payload independent of where a function was defined). A worker's traceback would then
    read ``File "<dynamic-code>", line 6, in bad``, with no file and no source line, for
    every function of a script, notebook or closure. Here the name is put back, for nested
    code objects too, so the traceback names the user's file and, where the worker can read
    it, shows the line.
    """

    def reducer_override(self, obj):
        if type(obj) is types.CodeType and _code_reduce is not None:
            constructor, args = _code_reduce(obj)
            return constructor, tuple(
                obj.co_filename if arg == _BLANKED_FILE_NAME else arg for arg in args
            )
        return super().reducer_override(obj)


try:  # cloudpickle's own reducer of code objects, to change only the file name it writes
    from cloudpickle.cloudpickle import _code_reduce
except ImportError:  # pragma: no cover - another cloudpickle: file names stay blank
    _code_reduce = None
_BLANKED_FILE_NAME = "<dynamic-code>"


def pack(func: Callable, items: list, policy: ItemPolicy | None = None) -> bytes:
    """Serialise a task with cloudpickle, so lambdas and ``__main__`` functions travel too;
    their code keeps its file name, so a worker's traceback points at the user's file.

    Examples
    --------
    >>> double = lambda x: 2 * x
    >>> func, items = pickle.loads(pack(double, [1]))
    >>> func(*items), func.__code__.co_filename == double.__code__.co_filename
    (2, True)
    """
    buffer = io.BytesIO()
    task = (func, items) if policy is None or policy.plain else (func, items, policy)
    _KeepFileNames(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(task)
    return buffer.getvalue()


def inside_worker() -> bool:
    """True while this thread runs a chunk of a map, on any backend.

    A map started from there (a nested ``parallel``) runs serially in that worker: the outer
    map already keeps every worker busy, so a nested map queued on the same pool would wait
    for the tasks that wait for it (a deadlock on ``threads``), pool workers may not have
    children, and a cluster task must not start a cluster of its own.

    Examples
    --------
    >>> inside_worker()
    False
    >>> unpack_outcome(run_packed(pack(lambda _: inside_worker(), [0]))).results
    [True]
    """
    return getattr(_worker_state, "depth", 0) > 0


def run_packed(blob: bytes) -> bytes:
    """Worker side of a packed task: unpack, run the chunk, pack the outcome.

    Examples
    --------
    >>> unpack_outcome(run_packed(pack(str, [1, 2]))).results
    ['1', '2']
    """
    func, items, *policy = cloudpickle.loads(blob)
    return _run_and_dump(func, items, policy[0] if policy else None, None)


def pack_func(func: Callable) -> bytes:
    """``func`` alone, pickled as :func:`pack` does: sent once per map by backends that keep
    it on the cluster (see :func:`pack_items`)."""
    buffer = io.BytesIO()
    _KeepFileNames(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(func)
    return buffer.getvalue()


def pack_items(items: list, policy: ItemPolicy | None = None) -> tuple[bytes, list]:
    """A chunk's items (and policy) pickled with their large binary data out of band: a
    header, and the buffers of numpy arrays and the like as zero-copy views, which an engine
    with shared memory (Ray's object store) moves without pickling them again.

    Examples
    --------
    >>> import numpy
    >>> header, buffers = pack_items([numpy.arange(3)])
    >>> len(buffers), bytes(buffers[0].raw()) == numpy.arange(3).tobytes()
    (1, True)
    >>> outcome = unpack_outcome(run_split(pack_func(sum), header, buffers))
    >>> outcome.results == [3]
    True
    """
    buffers: list = []
    buffer = io.BytesIO()
    task = (items, None if policy is None or policy.plain else policy)
    pickler = cloudpickle.Pickler(buffer, protocol=5, buffer_callback=buffers.append)
    pickler.dump(task)
    return buffer.getvalue(), buffers


def run_split(func: bytes | Callable, header, buffers) -> tuple[bytes, list]:
    """Worker side of a task packed by :func:`pack_func` and :func:`pack_items`: the outcome
    comes back the same way, a header and out-of-band buffers (:func:`unpack_outcome`).

    The items' arrays are read-only views of the engine's buffers where it hands out
    read-only memory (Ray), as with the engine's own idioms."""
    if not callable(func):
        func = cloudpickle.loads(func)
    items, policy = pickle.loads(header, buffers=buffers)
    buffers_out: list = []
    header_out = _run_and_dump(func, items, policy, buffers_out)
    return header_out, buffers_out


def _run_and_dump(func: Callable, items: list, policy: ItemPolicy | None, buffers: list | None):
    """Run a chunk in a worker and pickle its outcome (into ``buffers`` out of band, when a
    list is given)."""
    if policy is not None:
        # Only here, in a worker process, may an item be interrupted at its time limit.
        policy = dataclasses.replace(policy, interrupt=True)
    outcome = run_chunk(func, items, policy) if policy is not None else run_chunk(func, items)
    for failure in outcome.failures:
        # The worker's traceback travels as text (traceback_text). Where tblib's pickling is
        # installed (distributed installs it at import) the exception would otherwise carry
        # the worker's frames, and the caller would not attach them as a RemoteTraceback.
        failure.exception.__traceback__ = None
        if not _round_trips(failure.exception):
            # e.g. an exception whose __init__ takes other arguments than it passes to
            # super(): it pickles but cannot be rebuilt, so send its type name and text.
            exc = failure.exception
            failure.exception = UnpicklableRemoteError(_qualname(type(exc)), str(exc))
    try:
        return _dump_outcome(outcome, buffers)
    except Exception as exc:  # noqa: BLE001 - a return value of func that cannot travel back
        keep_going = policy is not None and policy.keep_going
        if buffers is not None:
            buffers.clear()
        return _dump_outcome(_without_unpicklable(outcome, exc, keep_going), buffers)


def _writeable_copy(buffer) -> memoryview:
    """A writeable copy of ``buffer`` (numpy, when there, copies fastest)."""
    try:
        import numpy
    except ImportError:
        return memoryview(bytearray(buffer))
    return memoryview(numpy.frombuffer(buffer, dtype=numpy.uint8).copy())


def _dump_outcome(outcome: ChunkOutcome, buffers: list | None) -> bytes:
    if buffers is None:
        return cloudpickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    buffer = io.BytesIO()
    cloudpickle.Pickler(buffer, protocol=5, buffer_callback=buffers.append).dump(outcome)
    return buffer.getvalue()


def _without_unpicklable(outcome: ChunkOutcome, exc: Exception, keep_going: bool) -> ChunkOutcome:
    """The outcome with results that cannot be pickled turned into failures: the first one
    ends the chunk, or, going on after failures, each one fills its slot."""
    text = traceback.format_exc()

    def failure(index):
        error = UnpicklableRemoteError(_qualname(type(exc)), f"result could not be pickled: {exc}")
        return ChunkFailure(index, error, text, in_result=True)

    failures = {f.index: f for f in outcome.failures}
    if not keep_going:
        index = _first_unpicklable(outcome.results)
        if index < len(outcome.results):
            return ChunkOutcome(outcome.results[:index], [failure(index)], outcome.seconds)
        return ChunkOutcome(outcome.results, [], outcome.seconds)  # pragma: no cover
    results = list(outcome.results)
    for index, value in enumerate(results):
        if index not in failures and not _pickles(value):
            results[index] = None
            failures[index] = failure(index)
    return ChunkOutcome(results, sorted(failures.values(), key=lambda f: f.index), outcome.seconds)


def _pickles(value) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:  # noqa: BLE001
        return False
    return True


def _round_trips(exc: BaseException) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return False
    return True


def _first_unpicklable(values: list) -> int:
    for index, value in enumerate(values):
        if not _pickles(value):
            return index
    return len(values)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unpack_outcome(blob) -> ChunkOutcome:
    """Caller side of a packed task: the :class:`ChunkOutcome` a worker sent back, as one
    blob (:func:`run_packed`) or as a header and out-of-band buffers (:func:`run_split`),
    which are copied: results are ordinary, writeable objects, as from the builtin ``map``.
    """
    if isinstance(blob, tuple):
        header, buffers = blob
        return pickle.loads(header, buffers=[_writeable_copy(b) for b in buffers])
    return pickle.loads(blob)


def default_worker_count() -> int:
    """Cores this process may use: its CPU affinity (as set by HPC batch systems), capped by a
    cgroup CPU quota (containers, SLURM with cgroups), which affinity does not show.

    Examples
    --------
    >>> 1 <= default_worker_count() <= (os.cpu_count() or 1)
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota)) if quota is not None else cores


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole cores, or None if unlimited.

    Reads cgroup v2 (``cpu.max``: ``"quota period"`` or ``"max period"``) or v1
    (``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = tempfile.mkdtemp()
    >>> _ = (pathlib.Path(root) / "cpu.max").write_text("150000 100000\\n")
    >>> cgroup_cpu_limit(root)
    2
    >>> _ = (pathlib.Path(root) / "cpu.max").write_text("max 100000\\n")
    >>> cgroup_cpu_limit(root) is None
    True
    """
    try:
        with open(os.path.join(root, "cpu.max")) as file:
            quota, period = file.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as file:
                quota = file.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as file:
                period = file.read().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for "no quota"
        return None
    return max(1, math.ceil(quota_us / period_us))


class Backend(concurrent.futures.Executor):
    """Base class of every backend: a small executor that runs chunks of a map on one engine.

    It speaks :class:`concurrent.futures.Executor`'s vocabulary: subclasses set :attr:`name`,
    implement :meth:`submit` and :meth:`shutdown`, and may override :meth:`cancel` (withdraw
    many tasks at once) and :meth:`check_health`. ``shutdown(wait=False,
    cancel_futures=True)`` stops running work now (Ctrl-C, a lost worker). Instances are
    context managers that shut down at exit.

    Parameters
    ----------
    n_workers : int, optional
        Size of a local pool; ``None`` means one worker per available core. Backends that talk
        to a cluster report the cluster's size instead.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"threads"``.
    in_process : bool
        True when tasks run in this interpreter: they then get ``(func, items)`` objects as is,
        never pickled, so unpicklable functions and items work.

    Examples
    --------
    >>> from unified_map.backends.threads import ThreadsBackend
    >>> with ThreadsBackend(n_workers=2) as backend:
    ...     backend.submit(sum, [1, 2, 3]).result()
    6
    """

    name: str = ""
    in_process: bool = False
    #: How long a chunk should compute once the cost per item is known; engines with a larger
    #: fixed cost per task raise it.
    target_chunk_seconds: float = TARGET_CHUNK_SECONDS
    #: True for backends that start local worker processes.
    starts_local_processes: bool = False
    #: Largest pickled payload per chunk. Local pools move chunks through pipes, where small
    #: chunks overlap the copies better: 16 items of 10 MB map 1.5x faster with 4 MB chunks
    #: than with 32 MB ones. Cluster backends, with a dearer round trip per chunk, raise it.
    max_chunk_bytes: int = 4 * 2**20
    #: False for backends that run chunks one after another in the caller's thread: cutting
    #: the input into several chunks per worker only costs them time.
    balances_load: bool = True
    #: Exceptions a future raises when the engine lost a worker; reported as WorkerLostError.
    worker_lost_errors: tuple[type[BaseException], ...] = ()
    #: True for backends whose ``submit`` runs the task right away in the caller's thread
    #: (``serial``): a map with ``timeout=`` then runs each task on a thread of its own, so
    #: that it can give up on it on time.
    runs_in_caller: bool = False
    #: With load balancing, the fewest chunks each worker gets (ChunkSizer's
    #: ``chunks_per_worker``).
    chunks_per_worker: int = MIN_CHUNKS_PER_WORKER
    #: Whether chunks shrink towards the end of a sized input (ChunkSizer's ``guided``).
    guided_chunks: bool = True
    #: True for backends that get ``func`` once per map (:meth:`share_func`) and each chunk's
    #: items with their large buffers out of band (:meth:`submit_split`), instead of one
    #: pickled blob per chunk holding both.
    splits_tasks: bool = False

    def __init__(self, n_workers: int | None = None):
        self.n_workers = n_workers or default_worker_count()

    @classmethod
    def size_for(cls, n_workers: int | None) -> int:
        """The pool size a map asking for ``n_workers`` gets: ``None`` means every core,
        each time it is asked (not whatever size the warm pool happens to have)."""
        return n_workers or default_worker_count()

    @classmethod
    def per_map_instance(cls, n_workers: int | None = None) -> Backend | None:
        """An instance made for one map, or None to share the warm instance.

        A cluster backend binds one to the active connection of its engine; ``auto`` keeps
        its per-map decision in one. It is shut down when the map ends.
        """
        return None

    def expect(self, seconds: float | None) -> None:
        """Told, before the first chunk, how long the whole map should compute (from a cost
        per item remembered from an earlier call), or None when unknown."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args)`` on the engine and return a future for its value."""
        raise NotImplementedError

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the engine's resources; calling it twice is harmless.

        ``wait=False, cancel_futures=True`` stops at once, abandoning running tasks (Ctrl-C).
        """

    def lease(self) -> contextlib.AbstractContextManager:
        """Held by a map from its first chunk to its last: a cluster backend keeps its
        connection open meanwhile, even if another thread connects elsewhere."""
        return contextlib.nullcontext()

    def check_health(self) -> None:
        """Raise :class:`~unified_map.errors.WorkerLostError` if the engine lost a worker.

        Called while waiting for results, so that engines which silently drop the task of a
        dead worker make the map fail instead of hang.
        """

    def cancel(self, futures: Iterable[concurrent.futures.Future]) -> None:
        """Withdraw tasks that are no longer wanted (after an error or an early stop)."""
        for future in futures:
            future.cancel()

    def share_func(self, blob: bytes) -> Any:
        """What tasks of a backend with :attr:`splits_tasks` get for ``func`` (pickled by
        :func:`pack_func`), once per map: by default the blob itself; an engine with an
        object store puts it there once."""
        return blob

    def submit_split(self, func: Any, header: bytes, buffers: list) -> concurrent.futures.Future:
        """Submit a chunk packed by :func:`pack_items` (backends with :attr:`splits_tasks`);
        its future's value is the pair :func:`run_split` returns."""
        return self.submit(run_split, func, header, buffers)

    def stop_task(self, future: concurrent.futures.Future, worker_pid: int | None) -> bool:
        """Stop the running task behind ``future``, whose item ran past its ``timeout=``.

        The map has given up on ``future`` and ignores it from now on. ``worker_pid`` is the
        local worker process running the task, when the backend starts local processes and
        the task noted it. By default the task is cancelled (a cluster engine stops it; a
        thread cannot be stopped and runs on). Process pools replace the stuck worker.

        Returns True when stopping it may have cost other running tasks of the pool (a pool
        that breaks as a whole when one worker is killed): the map then runs those again.
        """
        self.cancel([future])
        return False

    @property
    def max_in_flight(self) -> int:
        """How many chunks may be submitted and not yet consumed: enough to keep every worker
        busy while the next result is handed over, few enough to keep ``imap`` lazy."""
        return 2 * self.n_workers

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} n_workers={self.n_workers}>"


def completed_future(fn: Callable, *args: Any) -> concurrent.futures.Future:
    """Run ``fn(*args)`` now and return an already finished future (for in-line backends)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - delivered through the future like any executor
        future.set_exception(exc)
    return future
