"""What every cluster backend shares: which connection a map runs on, the private local
cluster, lost schedulers and workers, and futures that cancel the engine's task.

An engine's backend (``dask.py``, ``spark.py``, ``ray.py``) subclasses :class:`ClusterBackend`,
sets :attr:`~ClusterBackend.engine`, and implements :meth:`~ClusterBackend._submit` (send one
packed chunk, return a :class:`concurrent.futures.Future`) and, where the engine can withdraw
many tasks in one message, :meth:`~ClusterBackend._cancel`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any

from unified_map._cluster import cluster_setup
from unified_map.backends.base import Backend
from unified_map.chunking import MAX_CHUNK_BYTES
from unified_map.errors import WorkerLostError

logger = logging.getLogger(__name__)


class ClusterBackend(Backend):
    """Run packed chunks on a cluster engine.

    A map runs on the active connection of the backend's engine
    (``cluster_setup.<engine>.connect_to_scheduler``) when there is one: the instance made
    for that map is bound to the connection, which stays open until the map ends even if
    another thread connects elsewhere meanwhile. With none active, the warm instance starts a
    private local cluster on 127.0.0.1 on first use (one worker per core asked for), reuses it
    for later maps and stops it at :meth:`shutdown` (at interpreter exit for the warm one).

    Parameters
    ----------
    n_workers : int, optional
        Workers of the private local cluster (default: one per core). A connected cluster
        reports its own size.
    connection : ClusterConnection, optional
        Run on this connection rather than on a private local cluster.
    """

    #: The attribute of :mod:`cluster_setup` that starts and connects to this engine.
    engine: str = ""
    #: A chunk costs a scheduler round trip: fewer, bigger ones than on a local pool.
    max_chunk_bytes = MAX_CHUNK_BYTES
    #: A map waiting on a cluster that has had no worker (no slot) for this long fails with
    #: WorkerLostError rather than waiting for ever, as the engines themselves would.
    no_workers_seconds: float = 120.0
    #: The engine allows one session per process (Ray, Spark): connecting to a cluster ends
    #: the private local one, which the next map without a connection then starts again.
    one_session_per_process = False

    def __init__(self, n_workers: int | None = None, *, connection: Any = None):
        self._connection = connection
        self._private = None
        self._private_lock = threading.Lock()
        self._no_workers_since: float | None = None
        super().__init__(n_workers)  # sets the private local cluster's size

    @classmethod
    def per_map_instance(cls, n_workers: int | None = None) -> ClusterBackend | None:
        """An instance bound to the active connection when it is one of this engine's."""
        active = cluster_setup.active_connection()
        if active is not None and active.backend_name == cls.name:
            return cls(connection=active)
        return None

    @property
    def setup(self):
        """``cluster_setup.<engine>``: the object that starts and connects to the engine."""
        return getattr(cluster_setup, self.engine)

    @property
    def connection(self):
        """The connection chunks go to; the private local cluster is started on first use
        (and again after a connection to a cluster ended it, see
        :attr:`one_session_per_process`)."""
        if self._connection is not None:
            return self._connection
        private = self._private
        if private is not None and (
            (self.one_session_per_process and not private.connected)
            or (private.adopted and private.session_ended)
        ):
            with self._private_lock:
                if self._private is private:
                    self._private = None
        with self._private_lock:
            if self._private is None:
                self._private = self._session_to_use()
            return self._private

    def _session_to_use(self):
        """The engine session this process started itself (``ray.init()``, a SparkSession,
        dask's default Client), used and never stopped; with none, a private local cluster.
        Called with ``_private_lock`` held."""
        adopted = self.setup.session_in_this_process()
        if adopted is not None:
            logger.info(
                "no %s connection is active: mapping on the %s session this process started "
                "itself, at %s (it is left running)",
                self.engine,
                self.engine,
                adopted.address,
            )
            # a session set up by the script may run its workers on another Python (Spark's
            # PYSPARK_PYTHON, say): say so now rather than with an unpickling error
            with contextlib.suppress(Exception):
                self.setup._warn_about_mismatches(adopted)
            return adopted
        private = self.setup.start_local_cluster(self._local_workers)
        logger.info(
            "no %s connection is active: started a local %s cluster at %s with %d "
            "workers; it is reused by later maps and stopped at exit",
            self.engine,
            self.engine,
            private.address,
            self._local_workers,
        )
        return private

    @property
    def n_workers(self) -> int:
        """The connected cluster's worker slots, or the private local cluster's size."""
        if self._connection is not None:
            return max(1, self._connection.slots())
        private = self._private
        if private is not None and private.adopted:  # the user's session: its own size
            return max(1, private.slots())
        return self._local_workers

    @n_workers.setter
    def n_workers(self, value: int) -> None:
        self._local_workers = value

    @property
    def max_in_flight(self) -> int:
        """Four chunks per worker slot: a scheduler round trip takes milliseconds, so a worker
        needs more than one chunk queued to stay busy."""
        return 4 * self.n_workers

    @contextlib.contextmanager
    def lease(self):
        """The map's connection stays open until the map ends (see the class docstring)."""
        bound = self._connection
        if bound is not None and not bound.connected:
            # disconnected between picking it and starting the map: take its replacement
            replacement = cluster_setup.active_connection()
            if replacement is not None and replacement.backend_name == self.name:
                self._connection = replacement
        with self.connection.in_use():
            yield

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        connection = self.connection
        if not connection.reachable:
            raise connection.lost()
        return self._submit(connection, fn, *args)

    def cancel(self, futures) -> None:
        """Withdraw the engine's tasks behind ``futures`` (one message where it can)."""
        futures = [future for future in futures if not future.done()]
        if futures:
            try:
                self._cancel(self.connection, futures)
            except Exception:  # noqa: BLE001 - the scheduler is gone: nothing left to cancel
                logger.debug("could not cancel %d %s tasks", len(futures), self.engine)
        for future in futures:
            future.cancel()

    def check_health(self) -> None:
        """Raise a ConnectionError naming the scheduler if it stopped answering, and
        WorkerLostError once the cluster has had no worker for :attr:`no_workers_seconds`."""
        connection = self._connection or self._private
        if connection is None:
            return
        if not connection.reachable:
            raise connection.lost()
        if connection.slots() > 0:
            self._no_workers_since = None
            return
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since > self.no_workers_seconds:
            raise WorkerLostError(
                f"the {self.engine} cluster at {connection.address} has had no worker for "
                f"{self.no_workers_seconds:g} s: every worker died or left, and the map's "
                "remaining chunks have nowhere to run (start workers, then map again)"
            )

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop the private local cluster, if this instance started one; a connection made
        by the user stays open (this map's tasks were already withdrawn)."""
        with self._private_lock:
            private, self._private = self._private, None
        if private is not None:
            with contextlib.suppress(Exception):
                private.disconnect()

    def settle_error(self, connection, exc: BaseException) -> BaseException:
        """The error a chunk's future should carry for ``exc`` raised by the engine: a lost
        scheduler becomes :class:`~cluster_setup.errors.SchedulerUnreachableError` naming its
        address; anything else is the task's own failure, unchanged."""
        if isinstance(exc, (OSError, TimeoutError, RuntimeError)) and not connection.reachable:
            lost = connection.lost(exc)
            lost.__cause__ = exc
            return lost
        return exc

    # -- per engine -----------------------------------------------------------------------

    def _submit(self, connection, fn, *args) -> concurrent.futures.Future:
        """Send ``fn(*args)`` to the engine; the future's ``cancel()`` cancels the task."""
        raise NotImplementedError

    def _cancel(self, connection, futures: list[concurrent.futures.Future]) -> None:
        """Withdraw many tasks at once; by default each future's ``cancel()`` does it."""
