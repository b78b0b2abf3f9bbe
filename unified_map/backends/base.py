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

from unified_map.chunking import TARGET_CHUNK_SECONDS
from unified_map.errors import UnpicklableRemoteError

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


@dataclass
class ChunkOutcome:
    """The result of running ``func`` over one chunk of items.

    ``results`` holds the values computed before ``failure`` (all of them when it is None);
    ``seconds`` is the compute time measured where the chunk ran, which the auto chunker uses.
    """

    results: list = field(default_factory=list)
    failure: ChunkFailure | None = None
    seconds: float = 0.0


def run_chunk(func: Callable, items: list) -> ChunkOutcome:
    """Apply ``func`` to each item, stopping at the first exception and recording it.

    Examples
    --------
    >>> run_chunk(abs, [-1, 2]).results
    [1, 2]
    >>> run_chunk(lambda x: 1 / x, [1, 0]).failure.index
    1
    """
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
        return ChunkOutcome(results, failure, time.perf_counter() - start)
    finally:
        _worker_state.depth -= 1
    if len(results) < len(items):
        # func raised StopIteration, which map() takes for "no more items": the rest of the
        # chunk would vanish silently. Report it as PEP 479 does for generators.
        failure = ChunkFailure(
            len(results),
            RuntimeError("func raised StopIteration"),
            "StopIteration raised by func (reported as RuntimeError, as PEP 479 does for "
            "generators: map() would silently drop the remaining items)\n",
        )
        return ChunkOutcome(results, failure, time.perf_counter() - start)
    return ChunkOutcome(results, None, time.perf_counter() - start)


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


def pack(func: Callable, items: list) -> bytes:
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
    _KeepFileNames(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((func, items))
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
    func, items = cloudpickle.loads(blob)
    outcome = run_chunk(func, items)
    if outcome.failure is not None:
        # The worker's traceback travels as text (traceback_text). Where tblib's pickling is
        # installed (distributed installs it at import) the exception would otherwise carry
        # the worker's frames, and the caller would not attach them as a RemoteTraceback.
        outcome.failure.exception.__traceback__ = None
    if outcome.failure is not None and not _round_trips(outcome.failure.exception):
        # e.g. an exception whose __init__ takes other arguments than it passes to super():
        # it pickles but cannot be rebuilt, so send its type name and text instead.
        exc = outcome.failure.exception
        outcome.failure.exception = UnpicklableRemoteError(_qualname(type(exc)), str(exc))
    try:
        return cloudpickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - a return value of func that cannot travel back
        index = _first_unpicklable(outcome.results)
        failure = ChunkFailure(
            index,
            UnpicklableRemoteError(_qualname(type(exc)), f"result could not be pickled: {exc}"),
            traceback.format_exc(),
            in_result=True,
        )
        outcome = ChunkOutcome(outcome.results[:index], failure, outcome.seconds)
        return cloudpickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


def _round_trips(exc: BaseException) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return False
    return True


def _first_unpicklable(values: list) -> int:
    for index, value in enumerate(values):
        try:
            cloudpickle.dumps(value)
        except Exception:  # noqa: BLE001
            return index
    return len(values)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unpack_outcome(blob: bytes) -> ChunkOutcome:
    """Caller side of a packed task: the :class:`ChunkOutcome` a worker sent back."""
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
