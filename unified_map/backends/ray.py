"""The ``ray`` backend: chunks run as Ray tasks on the active Ray connection, or on Ray's own
local instance (:func:`ray.init`, every socket on 127.0.0.1) started on first use when none is
active (what every cluster backend shares is in :mod:`unified_map.backends.cluster`; this
module is what is Ray's own).

Each chunk is one Ray task on one pickled blob that holds ``func`` and the chunk's items: one
Ray task per item costs about 0.6 ms, one per chunk microseconds per item. Blobs of 1 MiB or
more travel as ``uint8`` arrays, which Ray moves through its shared-memory object store
without copying them into a pickle (5x faster for 10 MB payloads than ``bytes``); the results
are unpickled from there into ordinary objects (numpy arrays writeable), as the builtin ``map``
returns them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib

from unified_map._cluster import cluster_setup
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


def run_chunk_task(fn, blob):
    """Worker side: ``fn(blob)`` (``run_packed``) on a blob that may arrive as an array."""
    if not isinstance(blob, bytes):
        blob = memoryview(blob)  # a read-only view of the object store: unpickled, not copied
    return _as_array(fn(blob))


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


class RayFuture(concurrent.futures.Future):
    """A :class:`concurrent.futures.Future` mirroring one Ray task; ``cancel()`` cancels the
    task too (queued: dropped; running: interrupted)."""

    def __init__(self, backend: ClusterBackend, connection, ref):
        super().__init__()
        self.ref = ref
        self._backend = backend
        self._connection = connection
        ref.future().add_done_callback(self._settle)  # completed by Ray's callback thread

    def _settle(self, remote: concurrent.futures.Future) -> None:
        try:
            value = remote.result()
        except BaseException as exc:  # noqa: BLE001 - the task failed: the caller sees why
            setter, value = self.set_exception, self._backend.settle_error(self._connection, exc)
        else:
            setter = self.set_result
        self.ref = None
        if not self.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                setter(value)

    def cancel(self) -> bool:
        # Cancelled here first: Ray settles a withdrawn task at once, on its own thread.
        ref, cancelled = self.ref, super().cancel()
        if cancelled and ref is not None:
            with contextlib.suppress(Exception):
                ray.cancel(ref, recursive=True)
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
    #: Chunks of big items stay small, as on local pools: 20 items of 10 MB map 3x faster one
    #: per chunk (Ray overlaps their copies) than three per 32 MB chunk.
    max_chunk_bytes = 4 * 2**20
    worker_lost_errors = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)

    @property
    def connection(self):
        """As :attr:`ClusterBackend.connection`; a local instance that a connection to a
        cluster ended meanwhile is started again."""
        private = self._private
        if self._connection is None and private is not None and not private.connected:
            with self._private_lock:
                if self._private is private:
                    self._private = None
        return super().connection

    def _submit(self, connection, fn, *args):
        (blob,) = args
        return RayFuture(self, connection, _task().remote(fn, _as_array(blob)))
