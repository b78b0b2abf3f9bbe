"""The ``dask`` backend: chunks run as dask tasks on the active dask connection, or on a local
dask cluster started on first use when none is active.

Each chunk travels as one pickled ``bytes`` blob (``client.submit(run_packed, blob)``): one
dask task per item costs about 1.7 ms, and a plain list argument is serialised element by
element, while one blob per chunk costs microseconds per item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable

import distributed  # fail here, with the install hint, when it is missing

import cluster_setup
from cluster_setup._dask import DaskConnection, DaskSetup, import_distributed
from cluster_setup.errors import SchedulerUnreachableError
from unified_map.backends.base import Backend
from unified_map.chunking import MAX_CHUNK_BYTES

logger = logging.getLogger(__name__)

#: Chunks whose blob is at least this big are scattered to a worker, then run there: the
#: bytes go straight from the client to a worker rather than through the scheduler inside
#: the task graph (2.4x faster for 20 MB chunks on this machine; dask also warns about
#: graphs above 10 MB). Smaller chunks are not worth the extra round trip.
SCATTER_BYTES = 2**20


class DaskFuture(concurrent.futures.Future):
    """A :class:`concurrent.futures.Future` that mirrors one :class:`distributed.Future`.

    The result is fetched by a coroutine on the client's event loop as soon as the task
    finishes, so the results of several chunks travel at once rather than one after the
    other on a callback thread. Cancelling this future cancels the dask task too.
    """

    def __init__(
        self,
        client,
        dask_future,
        connection: DaskConnection | None = None,
        resubmit: Callable[[], distributed.Future] | None = None,
    ):
        super().__init__()
        self.dask_future = dask_future
        self._connection = connection
        self._resubmit = resubmit
        asyncio.run_coroutine_threadsafe(self._settle(client, dask_future), _asyncio_loop(client))

    def cancel(self) -> bool:
        remote, self.dask_future = self.dask_future, None
        if remote is not None and not self.done():
            remote.cancel()
        return super().cancel()

    async def _settle(self, client, remote) -> None:
        try:
            # waits for the task, then fetches its result from the worker that holds it
            (value,) = await client.gather([remote], asynchronous=True)
        except (asyncio.CancelledError, distributed.CancelledError) as exc:
            if self._may_resubmit():
                # The worker holding the chunk's scattered data died before running it, and
                # dask cannot recompute scattered data: send the chunk again, this time
                # inside the task, which dask reschedules if another worker dies.
                remote, self._resubmit = self._resubmit(), None
                self.dask_future = remote
                await self._settle(client, remote)
                return
            outcome = SchedulerUnreachableError(
                f"dask dropped task {remote.key}: the client was disconnected or lost its "
                f"scheduler ({exc!r})"
            )
            self._deliver(self.set_exception, outcome)
        except (OSError, TimeoutError, RuntimeError) as exc:
            connection = self._connection
            if connection is not None and not connection.reachable:  # dask's, not the task's
                outcome = connection.lost(exc)
                outcome.__cause__ = exc
                self._deliver(self.set_exception, outcome)
            else:
                self._deliver(self.set_exception, exc)
        except BaseException as exc:  # noqa: BLE001 - the task failed: the caller sees why
            self._deliver(self.set_exception, exc)
        else:
            self._deliver(self.set_result, value)
        finally:
            self.dask_future = None
            self._resubmit = None  # holds the chunk's bytes: not a moment longer than needed

    def _may_resubmit(self) -> bool:
        connection = self._connection
        return (
            self._resubmit is not None
            and self.dask_future is not None  # else cancelled by us
            and not self.done()
            and (connection is None or connection.reachable)
        )

    def _deliver(self, setter, value) -> None:
        if not self.done():  # else it was cancelled here meanwhile
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                setter(value)


def _asyncio_loop(client):
    loop = client.loop
    return getattr(loop, "asyncio_loop", loop)  # tornado's IOLoop wraps an asyncio loop


class DaskBackend(Backend):
    """Run packed chunks as dask tasks.

    Uses the active dask connection (``cluster_setup.dask.connect_to_scheduler``), looked up
    at every submit, so connecting, disconnecting and reconnecting between maps just works.
    With none active, a local dask cluster is started on first use: a scheduler and one
    single-threaded worker process per core, all on 127.0.0.1, without dashboard. It is
    reused by later maps and stopped by :meth:`close` (at interpreter exit, for the warm
    instance the registry keeps).

    The local cluster is started like ``cluster_setup.dask.start_scheduler``/``start_worker``
    do, as fresh interpreters, rather than as a ``LocalCluster`` whose processes would be
    spawned from this one: spawning re-runs an unguarded script's top level (no
    ``if __name__ == "__main__"`` guard) in every worker and fails, and research scripts
    often have no guard.

    Examples
    --------
    >>> from unified_map.backends.base import pack, run_packed, unpack_outcome
    >>> with DaskBackend(n_workers=1) as backend:
    ...     blob = backend.submit(run_packed, pack(abs, [-3, 4])).result()
    >>> unpack_outcome(blob).results
    [3, 4]
    """

    name = "dask"
    #: A chunk costs a scheduler round trip (and a scatter when big): fewer, bigger ones.
    max_chunk_bytes = MAX_CHUNK_BYTES

    def __init__(self, n_workers: int | None = None):
        self._local: DaskConnection | None = None
        self._local_lock = threading.Lock()
        super().__init__(n_workers)
        self.worker_lost_errors = (import_distributed().KilledWorker,)

    @property
    def max_in_flight(self) -> int:
        """Four chunks per worker thread: a dask round trip takes ~20 ms (its messages are
        batched every 2-10 ms), so a worker needs more than one chunk queued to stay busy."""
        return 4 * self.n_workers

    @property
    def n_workers(self) -> int:
        """Worker threads of the connected cluster, or the local cluster's worker count."""
        connection = self._active_connection()
        if connection is not None:
            return max(1, connection.total_threads())
        return self._local_workers

    @n_workers.setter
    def n_workers(self, value: int) -> None:
        self._local_workers = value

    def submit(self, fn, *args):
        connection = self._connection()
        client = connection.client
        if len(args) == 1 and isinstance(args[0], bytes) and len(args[0]) >= SCATTER_BYTES:
            (blob,) = args
            data = connection.call(client.scatter, blob, hash=False)
            remote = connection.call(client.submit, fn, data, pure=False)
            # called on the client's event loop, where client.scatter would block it
            return DaskFuture(
                client, remote, connection, lambda: client.submit(fn, blob, pure=False)
            )
        # pure=False: every chunk is a new task even if its bytes equal an earlier chunk's.
        remote = connection.call(client.submit, fn, *args, pure=False)
        return DaskFuture(client, remote, connection)

    def cancel(self, futures) -> None:
        """Cancel the dask tasks behind ``futures`` with one message per client."""
        by_client: dict = {}
        for future in futures:
            remote = getattr(future, "dask_future", None)
            if remote is not None and not future.done():
                future.dask_future = None
                by_client.setdefault(remote.client, []).append(remote)
            future.cancel()
        for client, remotes in by_client.items():
            try:
                client.cancel(remotes)
            except Exception:  # noqa: BLE001 - the scheduler is gone: nothing left to cancel
                logger.debug("could not cancel %d dask tasks", len(remotes), exc_info=True)

    def check_health(self) -> None:
        """Raise a ConnectionError if the client lost its scheduler while a map waits."""
        connection = self._active_connection() or self._local
        if connection is not None and connection.client.status in ("closing", "closed"):
            raise connection.lost()

    def close(self) -> None:
        """Stop the local cluster, if this backend started one."""
        with self._local_lock:
            local, self._local = self._local, None
        if local is not None:
            local.disconnect()
            local.setup.stop()

    def abort(self) -> None:
        """Stop the local cluster, if any (Ctrl-C, a lost worker). A connected cluster keeps
        running: :meth:`cancel` has already withdrawn this map's tasks from it."""
        self.close()

    def _active_connection(self) -> DaskConnection | None:
        connection = cluster_setup.active_connection()
        if connection is not None and connection.backend_name == self.name:
            return connection
        return None

    def _connection(self) -> DaskConnection:
        connection = self._active_connection()
        if connection is not None:
            return connection
        with self._local_lock:
            if self._local is None:
                self._local = self._start_local_cluster()
            return self._local

    def _start_local_cluster(self) -> DaskConnection:
        setup = DaskSetup()
        try:
            address = setup.start_scheduler("127.0.0.1:0", dashboard_port=None)
            setup.start_worker(address, n_workers=self._local_workers, threads=1)
            connection = DaskConnection(setup, address, setup._client(address, timeout=30))
        except BaseException:
            setup.stop()
            raise
        logger.info(
            "no dask connection is active: started a local dask cluster at %s with %d "
            "single-threaded worker processes; it is reused by later maps and stopped at exit",
            address,
            self._local_workers,
        )
        return connection
