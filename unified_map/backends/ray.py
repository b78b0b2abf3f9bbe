"""The ``ray`` backend: chunks run as Ray tasks on the active Ray connection, or on Ray's own
local instance (:func:`ray.init`, every socket on 127.0.0.1) started on first use when none is
active (what every cluster backend shares is in :mod:`unified_map.backends.cluster`; this
module is what is Ray's own).

Each chunk is one Ray task: one Ray task per item costs about 0.6 ms, one per chunk
microseconds per item. ``func`` is pickled once per map, and a big one (a closure over a large
table) is put in Ray's object store once and kept unpickled in each worker, not shipped with
every chunk. Items go with their large buffers (numpy arrays and the like) out of band, which
Ray moves through its shared-memory object store without pickling them again; results come
back the same way and are unpickled from there into ordinary objects (numpy arrays
writeable), as the builtin ``map`` returns them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import queue
import signal
import threading
import time
from typing import Any

import cloudpickle

from unified_map._cluster import cluster_setup
from unified_map.backends.base import run_split
from unified_map.backends.cluster import ClusterBackend

ray = cluster_setup._ray.import_ray()  # fail here, with the install hint, when it is missing

#: Blobs (chunks and results) at least this big travel as ``uint8`` arrays, out of band.
ZERO_COPY_BYTES = 2**20

#: Ray runs a chunk again on another node when its worker or node dies, this many times.
MAX_RETRIES = 3


def _as_array(blob: bytes):
    """``blob`` as a ``uint8`` array when it is big: Ray stores arrays out of band."""
    if len(blob) < ZERO_COPY_BYTES:
        return blob
    import numpy

    return numpy.frombuffer(blob, dtype=numpy.uint8)


#: Namespace of the cancel requests in Ray's key-value store (GCS), one key per task.
CANCEL_NAMESPACE = "unified_map"

#: A running chunk looks for its cancel request this often (seconds).
CANCEL_POLL_SECONDS = 0.2


def _cancel_key(task_id: str) -> str:
    return f"cancel/{task_id}"


def _kv():
    from ray.experimental import internal_kv

    return internal_kv


class _CancelWatch:
    """Worker side of cancelling: stop this worker's running chunk when the driver asks.

    ``ray.cancel`` is not used: in Ray 2.60 a cancel that meets the reply of the task it
    cancels kills the driver ("Check failed: it != submissible_tasks_.end() Tried to complete
    task that was not pending", the race of ray-project/ray#54785); it happened within a few
    hundred early-stopped ``imap`` calls here. Instead the driver writes a key per task into
    Ray's key-value store; one thread per worker process looks for it as soon as a chunk
    starts (off the chunk's thread: no extra round trip per chunk) and then every
    :data:`CANCEL_POLL_SECONDS`, and interrupts the chunk when it appears (a
    ``KeyboardInterrupt``, as ``ray.cancel(force=False)`` does).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None  # the chunk running now, on the main thread
        self._fired: str | None = None  # the key whose chunk was interrupted
        self._sent = False  # a SIGINT of ours is on its way
        self._previous_handler: Any = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, key: str):
        """Interrupt the code in the block if ``key`` appears (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._install()
        # Ray's workers block SIGINT: unblocked while the chunk runs, so that the signal
        # wakes a blocking call (time.sleep, a lock) rather than waiting for it to end.
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        with self._lock:
            self._key, self._fired = key, None
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._key = None  # a late signal of ours is swallowed from here on
            deadline = time.monotonic() + 1
            while self._sent and time.monotonic() < deadline:
                time.sleep(0.001)  # let a signal of ours on its way arrive, and be swallowed
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def fired(self, key: str) -> bool:
        return self._fired == key

    def _install(self) -> None:
        if self._thread is not None:
            return
        # Kept for the life of the worker (Ray reuses it for other tasks): signals that are
        # not ours go to the handler that was there before.
        self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._thread = threading.Thread(target=self._poll, name="unified_map cancel", daemon=True)
        self._thread.start()

    def _on_sigint(self, signum, frame):
        with self._lock:
            ours, self._sent = self._sent, False
            running = self._key is not None
        if not ours:
            previous = self._previous_handler
            if callable(previous):
                return previous(signum, frame)
            if previous == signal.SIG_IGN:
                return None
            raise KeyboardInterrupt
        if running:
            raise KeyboardInterrupt  # caught by run_chunk: the chunk ends here
        return None

    def _poll(self) -> None:
        main = threading.main_thread().ident
        polled = None
        while True:
            self._wake.wait()
            with self._lock:
                key = self._key
                if key is None:
                    self._wake.clear()
                    continue
            if key == polled:  # the first look at a chunk's key is at once (a chunk
                time.sleep(CANCEL_POLL_SECONDS)  # cancelled while queued stops at its start)
                with self._lock:
                    if self._key != key:
                        continue
            polled = key
            try:
                requested = _kv()._internal_kv_exists(key, namespace=CANCEL_NAMESPACE)
            except Exception:  # noqa: BLE001 - the session is ending: nothing to stop
                continue
            if not requested:
                continue
            with contextlib.suppress(Exception):
                _kv()._internal_kv_del(key, namespace=CANCEL_NAMESPACE)
            with self._lock:
                if self._key == key and self._fired is None:
                    self._fired, self._sent = key, True
                    signal.pthread_kill(main, signal.SIGINT)


_watch = _CancelWatch()


class SharedFunc:
    """``func`` in the object store, for one map. Passed inside this holder, not as a task's
    argument, so that Ray hands the task the reference rather than the blob: a worker
    unpickles it once and keeps it (:func:`_resolve_func`)."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref


#: A ``func`` pickled to at least this many bytes is put in the object store once per map;
#: a smaller one travels with each chunk (one fetch from the store costs more than that).
SHARED_FUNC_BYTES = 64 * 2**10

_funcs: collections.OrderedDict = collections.OrderedDict()  # a worker's recent SharedFuncs


def _resolve_func(func):
    """Worker side: the callable behind a pickled blob or a :class:`SharedFunc`."""
    if not isinstance(func, SharedFunc):
        return func if callable(func) else cloudpickle.loads(func)
    key = func.ref.hex()
    found = _funcs.get(key)
    if found is None:
        found = cloudpickle.loads(ray.get(func.ref))
        _funcs[key] = found
        while len(_funcs) > 8:  # only the last few maps' functions stay
            _funcs.popitem(last=False)
    return found


def _as_arrays(buffers: list) -> list:
    """Out-of-band buffers as ``uint8`` arrays, which Ray stores without copying them into a
    pickle."""
    import numpy

    return [numpy.frombuffer(buffer.raw(), dtype=numpy.uint8) for buffer in buffers]


def _writeable_copy(buffer):
    import numpy

    return numpy.frombuffer(buffer, dtype=numpy.uint8).copy()  # numpy copies fastest


def run_chunk_task(func, header, *buffers):
    """Worker side: run a chunk packed by :func:`~unified_map.backends.base.pack_items`;
    None for a chunk cancelled before or while it ran."""
    key = _cancel_key(ray.get_runtime_context().get_task_id())
    if not isinstance(header, bytes):
        header = memoryview(header)  # a read-only view of the object store: not copied
    try:
        with _watch.watching(key):
            # Copied out of the read-only store: func gets writeable arrays, as from a
            # process pool, and so does the caller for the ones it returns as they came.
            items = [_writeable_copy(buffer) for buffer in buffers]
            header, buffers = run_split(_resolve_func(func), header, items)
    except KeyboardInterrupt:
        if _watch.fired(key):
            return None
        raise
    return None if _watch.fired(key) else (_as_array(header), _as_arrays(buffers))


_remote_task = None


def _task():
    global _remote_task
    if _remote_task is None:
        # SPREAD: chunks go to every node, not first to fill the driver's own node.
        _remote_task = ray.remote(
            num_cpus=1,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
            scheduling_strategy="SPREAD",
        )(run_chunk_task)
    return _remote_task


class _CancelRequests:
    """Driver side: writes (and later removes) the cancel keys on a thread of its own, so
    that cancelling hundreds of queued chunks costs the caller nothing."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def send(self, action: str, key: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="unified_map ray cancel", daemon=True
                )
                self._thread.start()
        self._queue.put((action, key))

    def _run(self) -> None:
        while True:
            action, key = self._queue.get()
            kv = _kv()
            with contextlib.suppress(Exception):  # the session ended: nothing to cancel
                if action == "put":
                    kv._internal_kv_put(key, b"1", namespace=CANCEL_NAMESPACE)
                else:
                    kv._internal_kv_del(key, namespace=CANCEL_NAMESPACE)


_cancel_requests = _CancelRequests()


class RayFuture(concurrent.futures.Future):
    """A :class:`concurrent.futures.Future` mirroring one Ray task; ``cancel()`` cancels the
    task too (queued: it returns at once when it starts; running: interrupted within
    :data:`CANCEL_POLL_SECONDS`), see :class:`_CancelWatch`."""

    def __init__(self, backend: ClusterBackend, connection, ref):
        super().__init__()
        self.ref = ref
        self._backend = backend
        self._connection = connection
        self._cancel_key: str | None = None
        ref.future().add_done_callback(self._settle)  # completed by Ray's callback thread

    def _settle(self, remote: concurrent.futures.Future) -> None:
        try:
            value = remote.result()
        except BaseException as exc:  # noqa: BLE001 - the task failed: the caller sees why
            setter, value = self.set_exception, self._backend.settle_error(self._connection, exc)
        else:
            setter = self.set_result
        self.ref = None
        if self._cancel_key is not None:  # the task is over: its cancel key goes too
            _cancel_requests.send("del", self._cancel_key)
        if not self.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                setter(value)

    def cancel(self) -> bool:
        ref, cancelled = self.ref, super().cancel()
        if cancelled and ref is not None:
            self._cancel_key = _cancel_key(ref.task_id().hex())
            _cancel_requests.send("put", self._cancel_key)
            if self.ref is None:  # settled meanwhile: _settle may have missed the key
                _cancel_requests.send("del", self._cancel_key)
        return cancelled


class RayBackend(ClusterBackend):
    """Run packed chunks as Ray tasks.

    On the active Ray connection (``cluster_setup.ray.connect_to_scheduler``), or, with none
    active, on Ray's local instance started on first use (``ray.init`` with one CPU per core,
    no dashboard, no usage stats, quiet logs, every socket on 127.0.0.1), reused by later maps
    and shut down at exit (see :class:`~unified_map.backends.cluster.ClusterBackend`). Ray
    allows one session per process: connecting to a cluster ends the local instance.

    A chunk whose worker or node dies is run again elsewhere by Ray itself (up to
    :data:`MAX_RETRIES` times), so a map survives a lost node while a node with CPUs remains.

    Examples
    --------
    >>> import unified_map as um
    >>> um.parallel(abs, range(-3, 3), backend="ray")  # starts the local instance, kept warm
    [3, 2, 1, 0, 1, 2]
    """

    name = "ray"
    engine = "ray"
    splits_tasks = True
    #: Chunks of big items stay small, as on local pools: 20 items of 10 MB map 3x faster one
    #: per chunk (Ray overlaps their copies) than three per 32 MB chunk.
    max_chunk_bytes = 4 * 2**20
    worker_lost_errors = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
    one_session_per_process = True

    def _submit(self, connection, fn, *args):
        raise NotImplementedError("the ray backend takes chunks through submit_split")

    def share_func(self, blob: bytes):
        """``func`` once per map: a big one in the object store (:class:`SharedFunc`)."""
        if len(blob) < SHARED_FUNC_BYTES:
            return blob
        connection = self.connection
        if not connection.answered_recently():
            raise connection.lost()
        return SharedFunc(ray.put(_as_array(blob)))

    def submit_split(self, func, header: bytes, buffers: list) -> concurrent.futures.Future:
        connection = self.connection
        if not connection.answered_recently():
            raise connection.lost()
        ref = _task().remote(func, _as_array(header), *_as_arrays(buffers))
        return RayFuture(self, connection, ref)
