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
import functools
import os
import signal
import socket
import tempfile
import threading
import warnings
import weakref
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

from . import connection as _connection
from .addresses import parse_address, same_endpoint
from .connection import ClusterConnection
from .environment import environment_versions
from .errors import (
    ClusterSetupError,
    EnvironmentMismatchWarning,
    SchedulerFileError,
    SchedulerUnreachableError,
)
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
from .scheduler_file import remove_scheduler_file, wait_for_scheduler_file, write_scheduler_file
from .status import ClusterStatus, WorkerInfo

__all__ = ["ClusterSetup", "check_positive_ints", "default_listen_host"]

T = TypeVar("T")

#: Seconds ``start_worker`` waits for a scheduler file when it is given no ``timeout``.
DEFAULT_FILE_TIMEOUT = 60.0

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


def default_listen_host(scheduler_file: str | None) -> str:
    """The interface a scheduler listens on when its address is not given: the node's own
    host name when it writes a scheduler file (its workers run on other nodes; the environment
    variable ``UNIFIED_MAP_HOST`` picks another interface), else 127.0.0.1 (this machine only).

    Examples
    --------
    >>> default_listen_host(None)
    '127.0.0.1'
    >>> import socket
    >>> default_listen_host("scheduler.json") == (
    ...     os.environ.get("UNIFIED_MAP_HOST") or socket.gethostname())
    True
    """
    if scheduler_file is None:
        return "127.0.0.1"
    return os.environ.get("UNIFIED_MAP_HOST", "").strip() or socket.gethostname()


# Which shared verbs this thread is inside of: an engine's override that calls the base
# class's verb (super()) must not run the shared part twice.
_inside = threading.local()


def _shared(verb: str):
    """Wrap an engine's verb in the shared part written once in :class:`ClusterSetup`
    (``_shared_<verb>``): scheduler files, ``py_files``, the environment check. Applied to
    the base class's verbs here and to every override by ``__init_subclass__``."""

    def decorate(method):
        @functools.wraps(method)
        def verb_with_shared_part(self, *args, **kwargs):
            if getattr(_inside, verb, False):
                return method(self, *args, **kwargs)
            setattr(_inside, verb, True)
            try:
                return getattr(self, f"_shared_{verb}")(method, *args, **kwargs)
            finally:
                setattr(_inside, verb, False)

        verb_with_shared_part._shared_part = True
        return verb_with_shared_part

    return decorate


_SHARED_VERBS = ("start_scheduler", "start_worker", "connect_to_scheduler")


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

    What every engine's verbs share is written once here, around the engine's own code:
    ``start_scheduler(..., scheduler_file=PATH)`` writes a scheduler file once the scheduler
    is ready (and listens on the node's host name by default), ``start_worker`` and
    ``connect_to_scheduler`` accept ``scheduler_file=PATH`` instead of an address (and wait
    for it), ``connect_to_scheduler(..., py_files=[...])`` ships local code to the workers,
    and connecting warns once when a worker's Python, cloudpickle or engine version differs
    from this process's. Engines supply small hooks (``_scheduler_file_payload``,
    ``_use_scheduler_file``, ``_ship_py_files``, ``_worker_versions``, ``_observe``,
    ``_worker_options``).

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

    #: The package whose version workers must share with the driver.
    engine_package: str = ""

    def __init__(self) -> None:
        self._started: list[StartedProcess] = []
        self._lock = threading.RLock()
        self._log_dir: str | None = None
        # scheduler address -> the scheduler file written for it (removed when it stops)
        self._scheduler_files: dict[str, str] = {}
        self._pending_file = threading.local()
        _setups.add(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for verb in _SHARED_VERBS:
            method = cls.__dict__.get(verb)
            if method is not None and not getattr(method, "_shared_part", False):
                setattr(cls, verb, _shared(verb)(method))

    # -- the four verbs, per engine ---------------------------------------------------------

    @_shared("start_scheduler")
    def start_scheduler(self, address: str, block: bool = False, **options: Any) -> str:
        """Start a scheduler listening on ``address``; see the engine's documentation."""
        raise NotImplementedError

    @_shared("start_worker")
    def start_worker(self, address: str, block: bool = False, **options: Any) -> list[str]:
        """Start workers that join the scheduler at ``address``."""
        raise NotImplementedError

    @_shared("connect_to_scheduler")
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
                status = self._versions_status(connection, workers) or ClusterStatus(
                    self.engine, connection.address, True, workers
                )
                status.dashboard_link, status.started = dashboard, started
                status.lost = self._lost_workers(connection)
        print(status)
        return status

    def _connect(self, address: str, timeout: float) -> ClusterConnection:
        """A new connection to the scheduler at ``address``, not made active (per engine)."""
        raise NotImplementedError

    def _describe(self, connection: ClusterConnection) -> tuple[list[WorkerInfo], str | None]:
        """The connected cluster's workers and its dashboard link, if any (per engine); raises
        :class:`~cluster_setup.errors.SchedulerUnreachableError` when it does not answer."""
        raise NotImplementedError

    # -- the shared part of the verbs (see _shared) ---------------------------------------

    def _shared_start_scheduler(
        self,
        method: Callable[..., str],
        address: str | None = None,
        block: bool = False,
        *,
        scheduler_file: str | os.PathLike | None = None,
        **options: Any,
    ) -> str:
        """``start_scheduler(..., scheduler_file=PATH)``: listen on the node's host name by
        default, and write PATH once the scheduler is ready (before serving, with
        ``block=True``); the file is removed when the scheduler stops."""
        if scheduler_file is None:
            if address is None:
                return method(self, block=block, **options)  # the engine's default address
            return method(self, address, block, **options)
        path = _checked_file_path(scheduler_file)
        if address is None:
            address = f"{default_listen_host(path)}:0"
        self._pending_file.path = path
        try:
            returned = method(self, address, block, **options)
        finally:
            pending = self._pending_file.__dict__.pop("path", None)
        if not block and pending is not None:
            try:
                self._write_scheduler_file(pending, returned)
            except BaseException:
                self.stop(returned)
                raise
        return returned

    def _shared_start_worker(
        self,
        method: Callable[..., list[str]],
        address: str | None = None,
        block: bool = False,
        *,
        scheduler_file: str | os.PathLike | None = None,
        **options: Any,
    ) -> list[str]:
        """``start_worker(scheduler_file=PATH)``: wait for PATH (up to ``timeout``), join the
        scheduler it names."""
        address = self._scheduler_address(
            "start_worker", address, scheduler_file, options.get("timeout", DEFAULT_FILE_TIMEOUT)
        )
        return method(self, address, block, **options)

    def _shared_connect_to_scheduler(
        self,
        method: Callable[..., ClusterConnection],
        address: str | None = None,
        timeout: float = 10,
        *,
        scheduler_file: str | os.PathLike | None = None,
        py_files: list[str | os.PathLike] | None = None,
        **options: Any,
    ) -> ClusterConnection:
        """``connect_to_scheduler(scheduler_file=PATH, py_files=[...])``: wait for PATH,
        connect, ship ``py_files`` to the workers, warn once about mismatched versions."""
        files = self._prepare_py_files(py_files) if py_files else []
        address = self._scheduler_address("connect_to_scheduler", address, scheduler_file, timeout)
        connection = method(self, address, timeout, **options)
        try:
            if files:
                self._ship_py_files(connection, files)
        except BaseException:
            connection.disconnect()
            raise
        self._warn_about_mismatches(connection)
        return connection

    def _scheduler_address(
        self, verb: str, address: str | None, scheduler_file: Any, timeout: float
    ) -> str:
        if address is not None and scheduler_file is not None:
            raise TypeError(f"{verb}() takes an address or a scheduler_file, not both")
        if address is not None:
            return address
        if scheduler_file is None:
            raise TypeError(f"{verb}() needs the scheduler's address or scheduler_file=PATH")
        contents = wait_for_scheduler_file(
            os.path.abspath(os.fspath(scheduler_file)), timeout, engine=self.engine
        )
        self._use_scheduler_file(contents)
        return contents["address"]

    def _write_scheduler_file(self, path: str, address: str) -> None:
        """Write the scheduler file for the scheduler at ``address`` (a wildcard host becomes
        this node's name: workers cannot join 0.0.0.0)."""
        where = parse_address(address, schemes=self._schemes())
        if where.host.strip("[]") in ("0.0.0.0", "::", ""):
            prefix = f"{where.scheme}://" if "://" in address else ""
            address = f"{prefix}{socket.gethostname()}:{where.port}"
        extra, secret = self._scheduler_file_payload(address)
        write_scheduler_file(path, self.engine, address, extra, secret)
        with self._lock:
            self._scheduler_files[address] = path

    def _remove_scheduler_files(self, addresses: list[str]) -> None:
        with self._lock:
            found = [
                (address, path)
                for address, path in self._scheduler_files.items()
                if any(same_endpoint(address, a) for a in addresses)
            ]
            for address, _ in found:
                del self._scheduler_files[address]
        for address, path in found:
            remove_scheduler_file(path, address)

    def _prepare_py_files(self, paths: list[str | os.PathLike]) -> list[str]:
        """``py_files`` as files every engine can ship: ``.py``, ``.zip`` and ``.egg`` files
        as they are, a package folder zipped (the folder at the archive's
        root, so ``import <folder>`` works from it)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files = []
        for given in paths:
            path = os.path.abspath(os.fspath(given))
            if os.path.isdir(path):
                name = os.path.basename(path.rstrip(os.sep))
                archive = self._new_file(f"{name}-", ".zip")
                with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
                    for root, dirs, names in os.walk(path):
                        dirs[:] = [d for d in dirs if d != "__pycache__"]
                        for file in names:
                            full = os.path.join(root, file)
                            zipped.write(full, os.path.join(name, os.path.relpath(full, path)))
                # the archive's name is what the workers see: keep the package's own
                final = os.path.join(os.path.dirname(archive), f"{name}.zip")
                if not os.path.exists(final):
                    os.replace(archive, final)
                    archive = final
                files.append(archive)
            elif os.path.isfile(path):
                if not path.endswith((".py", ".zip", ".egg")):
                    raise ValueError(
                        f"py_files takes .py, .zip or .egg files and package folders, got {given!r}"
                    )
                files.append(path)
            else:
                raise FileNotFoundError(f"py_files: no such file or folder: {given!r}")
        return files

    def _warn_about_mismatches(self, connection: ClusterConnection) -> None:
        """Warn once, naming the workers, when any runs other versions than this process."""
        status = self._versions_status(connection, [])
        if status is not None and status.mismatched:
            lines = [f"{address}: {'; '.join(d)}" for address, d in status.mismatched.items()]
            warnings.warn(
                EnvironmentMismatchWarning(
                    f"{len(lines)} {self.engine} worker(s) run other versions than this "
                    f"process, which makes tasks fail with unpickling errors; install the "
                    f"same versions there:\n  " + "\n  ".join(lines)
                ),
                stacklevel=4,
            )

    def _versions_status(
        self, connection: ClusterConnection, workers: list[WorkerInfo]
    ) -> ClusterStatus | None:
        """Fill in ``workers``' versions (adding the workers found only this way) and return a
        status holding them and the driver's; ``None`` when the engine cannot tell."""
        try:
            found = self._worker_versions(connection)
        except NotImplementedError:
            return None
        except Exception:  # noqa: BLE001 - a diagnosis must never break connecting
            return None
        for worker in workers:  # keyed by the worker's address, or by its host
            for key in (worker.address, _host_of(worker.address)):
                if key in found:
                    worker.versions = found[key]
                    break
        if not workers:  # connecting: every worker that answered counts
            workers += [WorkerInfo(key, 0, versions=v) for key, v in found.items()]
        driver = environment_versions(self.engine_package or self.engine)
        return ClusterStatus(
            self.engine, connection.address, True, workers, driver_versions=_ordered(driver)
        )

    # -- hooks an engine may supply ----------------------------------------------------------

    def _lost_workers(self, connection: ClusterConnection) -> list[WorkerInfo]:
        """Workers the scheduler still lists but lost (dead), for ``report_status``; by
        default none (dask forgets a lost worker at once)."""
        return []

    def _scheduler_file_payload(self, address: str) -> tuple[dict[str, Any], bool]:
        """Fields the scheduler file carries besides engine and address, and whether they are
        secret (the file is then readable by its owner only). Ray: its token."""
        return {}, False

    def _use_scheduler_file(self, contents: dict[str, Any]) -> None:
        """Apply what a scheduler file carries besides the address (Ray: its token), before
        joining or connecting."""

    def _ship_py_files(self, connection: ClusterConnection, files: list[str]) -> None:
        """Make ``files`` (``.py``, ``.zip``, ``.egg``) importable on every worker
        of ``connection``, present and future, with the engine's own mechanism."""
        raise NotImplementedError(f"py_files is not supported by cluster_setup.{self.engine}")

    def _worker_versions(self, connection: ClusterConnection) -> dict[str, dict[str, str]]:
        """Each worker's :func:`.environment.environment_versions` (of
        :attr:`engine_package`), keyed by its address as ``_describe`` gives it, or by its
        host. Quick and bounded in time; NotImplementedError: the engine cannot tell."""
        raise NotImplementedError

    def _observe(self, address: str, timeout: float) -> ClusterConnection:
        """A connection that only watches the scheduler's workers (``_describe`` works on
        it), not made active and not a driver: what the command line and the launcher poll.
        The default is a full connection; engines where that is dear (Spark's application
        would take the workers' cores) override it."""
        return self._connect(address, timeout)

    def _worker_options(self, cores: int | None, memory: int | None) -> dict[str, Any]:
        """``start_worker`` options giving one node's ``cores`` and ``memory`` (bytes; None:
        the engine's default) to this engine's workers: the command line's ``--cores`` and
        ``--memory``. The default passes them on as ``cores`` and ``memory``."""
        options: dict[str, Any] = {}
        if cores is not None:
            options["cores"] = cores
        if memory is not None:
            options["memory"] = memory
        return options

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
        self._remove_scheduler_files([r.address for r in records if r.role == "scheduler"])
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

    def session_in_this_process(self) -> ClusterConnection | None:
        """A connection to the session of this engine that the process started itself,
        outside cluster_setup, or None.

        A script that called ``ray.init()``, built a SparkSession or made a dask ``Client``
        (the default one) expects ``parallel(..., backend=engine)`` to run there, not to
        start a second cluster (Ray and pyspark allow one session per process and would
        refuse it). The returned connection is :attr:`~ClusterConnection.adopted`:
        disconnecting it leaves the session running. Only the engine's module already
        imported by the script is looked at: nothing is imported here.

        Examples
        --------
        >>> import cluster_setup
        >>> cluster_setup.dask.session_in_this_process() is None  # no default Client here
        True
        """
        return None

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

        path = self._pending_file.__dict__.pop("path", None)
        schedulers = [r.address for r in records if r.role == "scheduler"]
        if path is not None and schedulers:
            try:
                self._write_scheduler_file(path, schedulers[0])
            except BaseException:
                self.stop(schedulers[0])
                raise
            banner += f"; scheduler file {path}"

        def forget():
            with self._lock:
                self._started = [r for r in self._started if r not in records]

        try:
            serve(records, banner, before_stop=forget)
        finally:
            self._remove_scheduler_files(schedulers)


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


def _checked_file_path(scheduler_file: str | os.PathLike) -> str:
    """The absolute path of a scheduler file to write; its folder must exist."""
    path = os.path.abspath(os.fspath(scheduler_file))
    if not os.path.isdir(os.path.dirname(path)):
        raise SchedulerFileError(
            f"cannot write scheduler file {path}: its folder does not exist (it must be on a "
            f"filesystem the workers' nodes share)"
        )
    if os.path.isdir(path):
        raise SchedulerFileError(f"cannot write scheduler file {path}: it is a folder")
    return path


def _host_of(address: str) -> str:
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    with contextlib.suppress(ClusterSetupError):
        return parse_address(address, schemes=(scheme,)).host
    return address


def _ordered(versions: dict[str, str]) -> dict[str, str]:
    """Python first, then the engine, then cloudpickle: the order of the status columns."""
    keys = ["python"] + [k for k in versions if k not in ("python", "cloudpickle")]
    return {k: versions[k] for k in [*keys, "cloudpickle"] if k in versions}
