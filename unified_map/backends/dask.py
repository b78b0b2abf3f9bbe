"""The ``dask`` backend: chunks run as dask tasks on the active dask connection, or on a local
dask cluster started on first use when none is active (what every cluster backend shares is in
:mod:`unified_map.backends.cluster`; this module is what is dask's own).

Each chunk travels as one pickled ``bytes`` blob (``client.submit(run_packed, blob)``): one
dask task per item costs about 1.7 ms, and a plain list argument is serialised element by
element, while one blob per chunk costs microseconds per item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable

import distributed  # fail here, with the install hint, when it is missing

from unified_map._cluster import cluster_setup
from unified_map.backends.cluster import ClusterBackend

SchedulerUnreachableError = cluster_setup.errors.SchedulerUnreachableError

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
        backend: ClusterBackend,
        connection,
        dask_future,
        resubmit: Callable[[], distributed.Future] | None = None,
    ):
        super().__init__()
        self.dask_future = dask_future
        self._backend = backend
        self._connection = connection
        self._resubmit = resubmit
        client = connection.client
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
                resubmit, self._resubmit = self._resubmit, None
                try:
                    remote = self.dask_future = resubmit()
                except BaseException as error:  # noqa: BLE001 - never leave the future pending
                    self._deliver(
                        self.set_exception, self._backend.settle_error(self._connection, error)
                    )
                    return
                await self._settle(client, remote)
                return
            outcome = SchedulerUnreachableError(
                f"dask dropped task {remote.key}: the client was disconnected or lost its "
                f"scheduler ({exc!r})"
            )
            self._deliver(self.set_exception, outcome)
        except BaseException as exc:  # noqa: BLE001 - the task failed: the caller sees why
            self._deliver(self.set_exception, self._backend.settle_error(self._connection, exc))
        else:
            self._deliver(self.set_result, value)
        finally:
            self.dask_future = None
            self._resubmit = None  # holds the chunk's bytes: not a moment longer than needed

    def _may_resubmit(self) -> bool:
        return (
            self._resubmit is not None
            and self.dask_future is not None  # else cancelled by us
            and not self.done()
            and self._connection.reachable
        )

    def _deliver(self, setter, value) -> None:
        if not self.done():  # else it was cancelled here meanwhile
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                setter(value)


def _asyncio_loop(client):
    loop = client.loop
    return getattr(loop, "asyncio_loop", loop)  # tornado's IOLoop wraps an asyncio loop


class DaskBackend(ClusterBackend):
    """Run packed chunks as dask tasks.

    On the active dask connection (``cluster_setup.dask.connect_to_scheduler``), or, with none
    active, on a private local dask cluster started on first use: a scheduler and one
    single-threaded worker process per core, all on 127.0.0.1, without dashboard (see
    :class:`~unified_map.backends.cluster.ClusterBackend`).

    The local cluster's processes are started as fresh interpreters, like
    ``cluster_setup.dask.start_worker`` does, rather than as a ``LocalCluster`` whose processes
    would be spawned from this one: spawning re-runs an unguarded script's top level (no
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
    engine = "dask"

    def __init__(self, n_workers: int | None = None, *, connection=None):
        super().__init__(n_workers, connection=connection)
        self.worker_lost_errors = (distributed.KilledWorker,)

    def _submit(self, connection, fn, *args):
        client = connection.client
        if len(args) == 1 and isinstance(args[0], bytes) and len(args[0]) >= SCATTER_BYTES:
            (blob,) = args
            try:
                data = connection.call(client.scatter, blob, hash=False)
            except cluster_setup.SchedulerUnreachableError:
                if not connection.reachable:
                    raise
                # The scheduler answers: it was the worker chosen to hold the data that went
                # away mid-scatter (its comm closed). The chunk travels inside its task.
                remote = connection.call(client.submit, fn, blob, pure=False)
                return DaskFuture(self, connection, remote)
            remote = connection.call(client.submit, fn, data, pure=False)
            # called on the client's event loop, where client.scatter would block it
            return DaskFuture(self, connection, remote, lambda: client.submit(fn, blob, pure=False))
        # pure=False: every chunk is a new task even if its bytes equal an earlier chunk's.
        remote = connection.call(client.submit, fn, *args, pure=False)
        return DaskFuture(self, connection, remote)

    def _cancel(self, connection, futures) -> None:
        """Cancel the dask tasks behind ``futures`` with one message."""
        remotes = []
        for future in futures:
            remote, future.dask_future = getattr(future, "dask_future", None), None
            if remote is not None:
                remotes.append(remote)
        if remotes:
            connection.client.cancel(remotes)
