"""Setups: :class:`ClusterSetup`, the four verbs every engine offers, :meth:`~ClusterSetup.stop`,
and a private local cluster started on demand (:meth:`~ClusterSetup.start_local_cluster`).

An engine (``_dask.py``, later Spark and Ray) subclasses :class:`ClusterSetup` and writes
the verbs as thin wrappers over the engine's own command line: it builds a command, calls
:meth:`ClusterSetup._spawn`, and waits for the engine to say it is ready with
:meth:`ClusterSetup._wait_until`. Starting and stopping processes is :mod:`.processes`'s
job, reports are :mod:`.status`'s, connections :mod:`.connection`'s.

Examples
--------
>>> import cluster_setup
>>> isinstance(cluster_setup.dask, ClusterSetup)
True
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from . import connection as _connection
from .addresses import parse_address, same_endpoint
from .connection import ClusterConnection
from .errors import SchedulerUnreachableError
from .processes import (
    StartedProcess,
    exit_on_sigterm,
    make_log_dir,
    remove_log_dir,
    serve,
    start_process,
    stop_processes,
    wait_until_ready,
)
from .status import ClusterStatus, WorkerInfo

__all__ = ["ClusterSetup", "check_positive_ints"]

T = TypeVar("T")

# Every setup, so that background processes are stopped when the interpreter exits.
_setups: weakref.WeakSet[ClusterSetup] = weakref.WeakSet()


def check_positive_ints(**values: Any) -> None:
    """Raise a ValueError naming the first of ``values`` that is not a positive int (counts
    of workers, cores, threads: the verbs check them before starting anything).

    Examples
    --------
    >>> check_positive_ints(n_workers=2, cores=1)
    >>> check_positive_ints(n_workers=True)
    Traceback (most recent call last):
    ...
    ValueError: n_workers must be a positive int, got True
    """
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")


class ClusterSetup:
    """The four verbs, the same on every engine, and the bookkeeping they share.

    ``start_scheduler`` and ``start_worker`` are written by each engine,
    ``connect_to_scheduler`` and ``report_status`` through its ``_connect`` and
    ``_describe``; :meth:`stop`, :meth:`disconnect` and :meth:`start_local_cluster` are
    shared. Users get one instance per engine from
    :mod:`cluster_setup` (``cluster_setup.dask``) and never create their own.

    Processes started with ``block=False`` run in the background until :meth:`stop` or until
    this interpreter exits, whichever comes first, even if it is killed (a watcher process
    stops them then). So that a SIGTERM to the script (a batch system ending the job,
    ``kill``) stops them cleanly, the first background process started from the main thread
    replaces SIGTERM's default action, if it still has it, by a handler that raises
    ``SystemExit(128 + SIGTERM)``: the interpreter exits as it would have, with code 143,
    but its exit handlers run first and stop what was started. A SIGTERM handler of your
    own is left alone (call :meth:`stop` from it).

    Attributes
    ----------
    engine : str
        The engine's name, as in ``cluster_setup.<engine>``.
    extra : str
        The pip extra that installs the engine (``pip install unified_map[extra]``).

    Examples
    --------
    >>> from cluster_setup import dask
    >>> dask.engine, dask.extra
    ('dask', 'dask')
    """

    engine: str = ""
    extra: str = ""
    #: Options of :meth:`start_scheduler` and :meth:`start_worker` for a private local cluster
    #: (the default :meth:`_start_local_cluster`); one single-threaded worker per process.
    local_scheduler_options: dict[str, Any] = {}
    local_worker_options: dict[str, Any] = {}

    def __init__(self) -> None:
        self._started: list[StartedProcess] = []
        self._lock = threading.RLock()
        self._log_dir: str | None = None
        _setups.add(self)

    # -- the four verbs, per engine ---------------------------------------------------------

    def start_scheduler(self, address: str, block: bool = False, **options: Any) -> str:
        """Start a scheduler listening on ``address``; see the engine's documentation."""
        raise NotImplementedError

    def start_worker(self, address: str, block: bool = False, **options: Any) -> list[str]:
        """Start workers that join the scheduler at ``address``."""
        raise NotImplementedError

    def connect_to_scheduler(self, address: str, timeout: float = 10) -> ClusterConnection:
        """Connect to the scheduler at ``address`` and make it the active connection.

        Connecting again disconnects the previous active connection and replaces it (a map
        running on it in another thread finishes first).
        """
        connection = self._connect(address, timeout)
        self._activate(connection)
        return connection

    def report_status(self) -> ClusterStatus:
        """Print a summary of the connected cluster and return it.

        When no connection of this engine is active, the summary says so (and lists any
        scheduler or worker this object started) instead of raising. When the connected
        scheduler does not answer (it died, or the network is down), ``connected`` is False,
        ``problem`` says why, and the summary reads "scheduler unreachable".

        Returns
        -------
        ClusterStatus
            Engine, scheduler address, whether connected, the workers with their address,
            cores and memory, total cores, and the dashboard link.

        Examples
        --------
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
        >>> with dask.connect_to_scheduler(address):
        ...     status = dask.report_status()  # doctest: +ELLIPSIS
        dask cluster at tcp://127.0.0.1:...: connected
        worker            name  cores  memory
        total: 0 workers            0  -
        started by this process:
        ...
        >>> status.connected, status.total_cores
        (True, 0)
        >>> dask.stop(address)
        >>> dask.report_status().connected  # doctest: +ELLIPSIS
        dask: not connected (connect with cluster_setup.dask.connect_to_scheduler(address))...
        False
        """
        started = [(r.role, r.pid, r.address) for r in self.started]
        connection = self.connection
        if connection is None:
            status = ClusterStatus(self.engine, None, False, started=started)
        else:
            try:
                workers, dashboard = self._describe(connection)
            except SchedulerUnreachableError as exc:
                status = ClusterStatus(
                    self.engine, connection.address, False, started=started, problem=str(exc)
                )
            else:
                status = ClusterStatus(
                    self.engine, connection.address, True, workers, dashboard, started
                )
        print(status)
        return status

    def _connect(self, address: str, timeout: float) -> ClusterConnection:
        """A new connection to the scheduler at ``address``, not made active (per engine)."""
        raise NotImplementedError

    def _describe(self, connection: ClusterConnection) -> tuple[list[WorkerInfo], str | None]:
        """The connected cluster's workers and its dashboard link, if any (per engine); raises
        :class:`~cluster_setup.errors.SchedulerUnreachableError` when it does not answer."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    @property
    def started(self) -> list[StartedProcess]:
        """The processes this setup started that are still running (a copy)."""
        with self._lock:
            return [record for record in self._started if record.running]

    @property
    def connection(self) -> ClusterConnection | None:
        """The active connection if it belongs to this engine, else ``None``."""
        active = _connection.active_connection()
        if active is not None and getattr(active, "setup", None) is self:
            return active
        return None

    def disconnect(self) -> None:
        """Disconnect this engine's active connection, if there is one."""
        connection = self.connection
        if connection is not None:
            connection.disconnect()

    def stop(self, address: str | None = None) -> None:
        """Stop the schedulers and workers this object started; harmless if none are left.

        Workers go first, then schedulers, each with SIGTERM and a grace period (they leave
        the scheduler and close cleanly); whatever is left of a process's tree after that is
        killed. An active connection to a scheduler being stopped is disconnected first.
        Processes started by anyone else are never touched.

        Parameters
        ----------
        address : str, optional
            Only stop the scheduler at this address and the workers started to join it,
            whatever name the address uses (``localhost:8786`` is ``127.0.0.1:8786``).
            ``None`` stops everything this object started, and removes their logs.

        Examples
        --------
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("localhost:0", dashboard_port=None)
        >>> address.startswith("tcp://127.0.0.1:")  # the scheduler's own name for it
        True
        >>> dask.stop(address.replace("127.0.0.1", "localhost"))
        >>> [p for p in dask.started if p.address == address]
        []
        """
        if address is not None:
            parse_address(address, schemes=self._schemes())  # a malformed one is an error
        with self._lock:
            records = [
                r for r in self._started if address is None or same_endpoint(r.address, address)
            ]
            self._started = [r for r in self._started if r not in records]
        # Disconnect first: a client whose scheduler vanishes retries and logs for a while.
        connection = self.connection
        if connection is not None and any(
            r.role == "scheduler" and same_endpoint(r.address, connection.address) for r in records
        ):
            connection.disconnect()
        stop_processes([r for r in records if r.role != "scheduler"])
        stop_processes([r for r in records if r.role == "scheduler"])
        if address is None:
            with self._lock:
                log_dir, self._log_dir = self._log_dir, None
            if log_dir is not None:
                remove_log_dir(log_dir)

    def stop_process(self, record: StartedProcess) -> None:
        """Stop one process this object started (a record of :attr:`started`), and nothing
        else: a single worker leaves while the rest of the cluster keeps running.

        Examples
        --------
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
        >>> (record,) = [p for p in dask.started if p.address == address]
        >>> dask.stop_process(record)
        >>> record.running
        False
        """
        self._forget(record)
        stop_processes([record])

    def start_local_cluster(self, n_workers: int) -> ClusterConnection:
        """Start a private cluster on 127.0.0.1 and return a connection to it.

        For a backend that has no active connection to run on. The cluster belongs to the
        returned connection alone: it is started by a setup object of its own (it is not in
        :attr:`started`), the connection is not made active, and disconnecting it stops the
        cluster's processes and removes their logs (so does this interpreter's exit or
        death).

        Parameters
        ----------
        n_workers : int
            Number of single-core worker processes.

        Returns
        -------
        ClusterConnection

        Examples
        --------
        >>> import cluster_setup
        >>> connection = cluster_setup.dask.start_local_cluster(1)
        >>> connection.slots(), connection.active, connection.setup is cluster_setup.dask
        (1, False, False)
        >>> connection.disconnect()
        >>> connection.setup.started
        []
        """
        check_positive_ints(n_workers=n_workers)
        private = type(self)()
        try:
            connection = private._start_local_cluster(n_workers)
        except BaseException:
            private.stop()
            raise
        connection._on_close.append(private.stop)
        return connection

    def _start_local_cluster(self, n_workers: int) -> ClusterConnection:
        """Start a scheduler and ``n_workers`` workers on 127.0.0.1 with this object, and
        connect to it without activating the connection. Engines whose local mode differs
        (Spark's ``local[n]``, ``ray.init``) override this."""
        address = self.start_scheduler("127.0.0.1:0", **self.local_scheduler_options)
        self.start_worker(address, n_workers=n_workers, **self.local_worker_options)
        return self._connect(address, timeout=30)

    def _schemes(self) -> tuple[str, ...]:
        """The address schemes this engine accepts, the default first."""
        return ("tcp",)

    # -- helpers for engines ----------------------------------------------------------------

    def _activate(self, connection: ClusterConnection) -> None:
        """Make ``connection`` the active one, disconnecting the one it replaces."""
        _connection.activate(connection)

    def _new_file(self, prefix: str, suffix: str) -> str:
        """A new empty file in this setup's log folder (made on first use)."""
        with self._lock:
            if self._log_dir is None or not os.path.isdir(self._log_dir):
                self._log_dir = make_log_dir(f"cluster_setup-{self.engine}-")
            handle, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self._log_dir)
        os.close(handle)
        return path

    def _spawn(
        self,
        role: str,
        address: str,
        command: list[str],
        *,
        block: bool,
        names: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> StartedProcess:
        """Start ``command`` (see :func:`.processes.start_process`) and remember it.

        In the background (``block=False``) its output goes to a log file whose tail ends any
        error message; in the foreground it goes to this process's terminal or job log.
        """
        log_path = None if block else self._new_file(f"{role}-", ".log")
        record = start_process(
            role, address, command, log_path=log_path, env=env, names=names, block=block
        )
        with self._lock:
            self._started.append(record)
        return record

    def _wait_until(
        self,
        record: StartedProcess,
        ready: Callable[[], T | None],
        timeout: float,
        what: str,
    ) -> T:
        """:func:`.processes.wait_until_ready`; a process that failed is forgotten too."""
        try:
            return wait_until_ready(record, ready, timeout, what)
        except BaseException:
            self._forget(record)
            raise

    def _forget(self, record: StartedProcess) -> None:
        with self._lock:
            if record in self._started:
                self._started.remove(record)

    def _serve(self, records: list[StartedProcess], banner: str) -> None:
        """Serve ``records`` in the foreground (``block=True``), then stop and forget them."""

        def forget():
            with self._lock:
                self._started = [r for r in self._started if r not in records]

        serve(records, banner, before_stop=forget)


@atexit.register
def _stop_everything_at_exit() -> None:
    """Disconnect and stop what this interpreter started in the background."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is exit_on_sigterm
    ):  # a second SIGTERM must not cut the clean shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    active = _connection.active_connection()
    if active is not None:
        with contextlib.suppress(Exception):
            active.disconnect()
    for setup in list(_setups):
        with contextlib.suppress(Exception):
            setup.stop()


def _forget_in_child() -> None:
    # A forked child (a process-pool worker) must never stop the parent's cluster at its exit.
    for setup in list(_setups):
        setup._started = []
        setup._log_dir = None
        setup._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
