"""``cluster_setup.dask``: only Dask's commands, readiness probes and connection
(:class:`DaskConnection`): start a scheduler and workers, connect to one, report on it.

Thin wrappers over dask's own command line (``python -m distributed.cli.dask_scheduler`` and
``...dask_worker``, what ``dask scheduler`` and ``dask worker`` run) and over
:class:`distributed.Client`. Each scheduler or worker is a real process of its own, started
with this interpreter, so it does not share this process's event loop, survives a busy or
crashed caller until stopped, and is shut down with the engine's own SIGTERM handling.
``distributed`` is imported only when a method is called. The processes it starts log to
files; the ``distributed`` loggers of this process are left as the user configured them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import uuid
from typing import Any

from .addresses import (
    Address,
    check_port_free,
    local_address_towards,
    parse_address,
    same_endpoint,
)
from .base import ClusterSetup, check_positive_ints
from .connection import ClusterConnection
from .environment import environment_versions
from .errors import EngineNotInstalledError, InvalidAddressError, SchedulerUnreachableError
from .status import WorkerInfo

__all__ = ["DaskSetup", "DaskConnection", "DEFAULT_ADDRESS", "import_distributed"]

#: Dask's usual scheduler port, on this machine only.
DEFAULT_ADDRESS = "127.0.0.1:8786"

#: Seconds past ``timeout`` that a connection attempt may take to report dask's own error.
_CONNECT_GRACE_SECONDS = 1.0


def import_distributed():
    """Import ``distributed``, or raise the install hint naming the pip extra.

    Examples
    --------
    >>> import_distributed().__name__
    'distributed'
    """
    try:
        import distributed
    except ImportError as exc:
        raise EngineNotInstalledError(
            "cluster_setup.dask needs the package 'distributed', which is not installed: "
            "pip install unified_map[dask]"
        ) from exc
    return distributed


class DaskConnection(ClusterConnection):
    """A :class:`distributed.Client` connected to a scheduler, as ``parallel`` uses it.

    Made by :meth:`DaskSetup.connect_to_scheduler` (or ``start_local_cluster``); a context
    manager that disconnects at exit.

    Attributes
    ----------
    client : distributed.Client
        The client, for anything dask-specific (``connection.client.submit``, ``dask.bag``
        with ``scheduler=connection.client``...). It is not made dask's default client.

    Examples
    --------
    >>> from cluster_setup import dask
    >>> connection = dask.start_local_cluster(1)
    >>> connection.call(connection.client.submit, abs, -2).result()
    2
    >>> connection.slots(), connection.reachable
    (1, True)
    >>> connection.disconnect()
    >>> connection.reachable
    False
    """

    backend_name = "dask"

    def __init__(self, setup: ClusterSetup, address: str, client: Any, adopted: bool = False):
        super().__init__(setup, address)
        self.client = client
        self.adopted = adopted

    @property
    def session_ended(self) -> bool:
        """Whether the script closed its own default Client (see ``adopted``)."""
        return self.client.status in ("closing", "closed", "failed")

    @property
    def reachable(self) -> bool:
        """Whether the client is connected to its scheduler right now (False while it
        reconnects after losing it, and once it gave up)."""
        return self.client.status == "running"

    def lost(self, cause: BaseException | None = None) -> SchedulerUnreachableError:
        """The error to raise when the scheduler cannot be reached, naming its address."""
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return SchedulerUnreachableError(
            f"lost the connection to the dask scheduler at {self.address}: it does not answer "
            f"(client {self.client.status}){reason}"
        )

    def call(self, method, *args: Any, **kwargs: Any) -> Any:
        """Call a method of :attr:`client`; a lost scheduler raises
        :class:`SchedulerUnreachableError` naming its address rather than dask's errors."""
        if not self.reachable:
            raise self.lost()
        try:
            return method(*args, **kwargs)
        except (OSError, TimeoutError, RuntimeError) as exc:
            if isinstance(exc, SchedulerUnreachableError):
                raise
            if isinstance(exc, (OSError, TimeoutError)) or not self.reachable:
                raise self.lost(exc) from exc
            raise

    def _count_slots(self) -> int:
        """Worker threads in the cluster: the tasks it runs at once."""
        return sum(self.call(self.client.nthreads).values())

    def total_threads(self) -> int:
        """Former name of :meth:`slots`, kept while callers move over."""
        return self.slots()

    def _close(self) -> None:
        if self.adopted:
            return  # the script's own Client: it closes it
        # A client whose scheduler is gone waits out its timeout to close, and would try
        # again (and complain) when collected: close it once, briefly, and for good.
        if self.reachable:
            with contextlib.suppress(Exception):
                self.client.close()
            return
        # Closing cancels its attempts to reconnect, which dask logs as an error.
        quiet = logging.getLogger("distributed.client")
        muted = _Mute()
        quiet.addFilter(muted)
        try:
            with contextlib.suppress(Exception):
                self.client.close(timeout=1)
        finally:
            quiet.removeFilter(muted)


class _Mute(logging.Filter):
    """Drops every record of the logger it is added to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


class DaskSetup(ClusterSetup):
    """Start a Dask scheduler and workers, connect to a scheduler, report on it.

    The instance is ``cluster_setup.dask``; users never create one. A scheduler address is
    ``"host:port"`` or ``"tcp://host:port"``; the host defaults to 127.0.0.1 everywhere, so
    listening on another interface is always an explicit choice.

    Examples
    --------
    >>> import unified_map as um
    >>> from cluster_setup import dask
    >>> address = dask.start_scheduler("127.0.0.1:0")
    >>> workers = dask.start_worker(address, n_workers=2)
    >>> with dask.connect_to_scheduler(address):
    ...     um.parallel(lambda x: x * x, range(6))
    [0, 1, 4, 9, 16, 25]
    >>> dask.stop(address)
    """

    engine = "dask"
    extra = "dask"
    engine_package = "distributed"
    local_scheduler_options = {"dashboard_port": None}
    local_worker_options = {"threads": 1}

    def __init__(self) -> None:
        super().__init__()
        self._without_dashboard: set[str] = set()

    def start_scheduler(
        self,
        address: str = DEFAULT_ADDRESS,
        block: bool = False,
        *,
        dashboard_port: int | None = 0,
        timeout: float = 60,
    ) -> str:
        """Start a scheduler listening on ``address``.

        Parameters
        ----------
        address : str, default "127.0.0.1:8786"
            ``"host:port"`` or ``"tcp://host:port"`` to listen on; port 0 picks a free port.
            Use the node's own address (or ``"0.0.0.0:8786"``) when workers run elsewhere.
        block : bool, default False
            False: start in the background, wait until it accepts connections, return.
            True: serve until the scheduler exits, Ctrl-C or SIGTERM, then shut it down
            cleanly and return (what a job script wants).
        dashboard_port : int or None, default 0
            Port of the web dashboard, on the same host; 0 picks a free one, None turns the
            dashboard off. :meth:`report_status` shows its link.
        timeout : float, default 60
            Seconds to wait for the scheduler to start.
        scheduler_file : str, optional
            Write the engine and address to this JSON file once ready (removed when the
            scheduler stops); with no ``address``, listen on this node's host name then.

        Returns
        -------
        str
            The address workers and clients use, ``"tcp://host:port"`` with the real port.

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed, or an IPv6 address (a ``ValueError``): dask's command
            line cannot start a scheduler on one.
        PortInUseError
            The port is taken (an ``OSError``), raised before anything starts.
        ClusterStartError, ClusterStartTimeoutError
            The scheduler exited while starting, or was not ready within ``timeout``.
        EngineNotInstalledError
            ``distributed`` is not installed.

        Examples
        --------
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
        >>> address.startswith("tcp://127.0.0.1:")
        True
        >>> dask.stop(address)
        """
        where = _ipv4_or_name(parse_address(address, listen=True), address)
        import_distributed()  # the install hint before anything starts
        check_port_free(where.host, where.port)
        scheduler_file = self._new_file("scheduler-", ".json")
        os.remove(scheduler_file)  # it appears once the scheduler listens
        command = [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            where.host,
            "--port",
            str(where.port),
            "--scheduler-file",
            scheduler_file,
        ]
        # The HTTP server (health checks, metrics) runs even without a dashboard, and on every
        # interface unless given an address: bind it to the scheduler's host either way.
        port = 0 if dashboard_port is None else dashboard_port
        command += ["--dashboard-address", f"{where.host}:{port}"]
        if dashboard_port is None:
            command.append("--no-dashboard")
        record = self._spawn("scheduler", where.url, command, block=block)

        def ready():
            try:
                with open(scheduler_file) as file:
                    identity = json.load(file)
            except (OSError, ValueError):  # not written yet, or half written
                return None
            listening = parse_address(identity["address"])
            with contextlib.suppress(OSError):
                socket.create_connection((listening.host, listening.port), timeout=1).close()
                return identity

        identity = self._wait_until(
            record, ready, timeout, f"the dask scheduler on {where.host}:{where.port}"
        )
        record.address = identity["address"]
        if dashboard_port is None:  # its HTTP server still shows up as "dashboard"
            self._without_dashboard.add(record.address)
            identity["services"].pop("dashboard", None)
        if block:
            dashboard = _dashboard_link(identity)
            self._serve(
                [record],
                f"cluster_setup: dask scheduler at {record.address}"
                + (f", dashboard {dashboard}" if dashboard else "")
                + "; serving until Ctrl-C or SIGTERM",
            )
        return record.address

    def start_worker(
        self,
        address: str,
        block: bool = False,
        *,
        n_workers: int = 1,
        threads: int = 1,
        memory: str | int = "auto",
        host: str | None = None,
        name: str | None = None,
        timeout: float = 60,
    ) -> list[str]:
        """Start worker processes that join the scheduler at ``address``.

        Parameters
        ----------
        address : str
            The scheduler, ``"host:port"`` or ``"tcp://host:port"``.
        block : bool, default False
            False: return once every worker is registered with the scheduler. True: serve
            until the workers exit, Ctrl-C or SIGTERM; then they leave the scheduler cleanly.
        n_workers : int, default 1
            Worker processes to start (each under a dask "nanny" that restarts it if it dies).
        threads : int, default 1
            Threads per worker process: the number of tasks it runs at once.
        memory : str or int, default "auto"
            Memory limit per worker process, like ``"2GB"`` or a number of bytes; ``"auto"``
            shares the machine's memory between the processes.
        host : str, optional
            Interface the workers listen on. Default: 127.0.0.1 for a scheduler on this
            machine, else this machine's address on the route to the scheduler.
        name : str, optional
            Worker name (``name-0``, ``name-1``... for several); default: a unique one.
        timeout : float, default 60
            Seconds to wait for the scheduler to answer and the workers to register.
        scheduler_file : str, optional
            Instead of ``address``: the scheduler file to read it from, waited for up to
            ``timeout`` seconds.

        Returns
        -------
        list of str
            The addresses of the new workers.

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed, or it or ``host`` is an IPv6 address (a
            ``ValueError``): dask's command line cannot start a worker on one.
        SchedulerUnreachableError
            No scheduler answered at ``address`` within ``timeout`` (a ``ConnectionError``).
        ClusterStartError, ClusterStartTimeoutError
            The workers exited while starting, or did not register within ``timeout``.

        Examples
        --------
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
        >>> dask.start_worker(address, n_workers=1, threads=1, memory="1GB")  # doctest: +ELLIPSIS
        ['tcp://127.0.0.1:...']
        >>> dask.stop(address)
        """
        where = _ipv4_or_name(parse_address(address), address)
        if host is not None and ":" in host:
            raise InvalidAddressError(_IPV6_REFUSED.format(given=host))
        if where.port == 0:
            raise InvalidAddressError(f"a scheduler address needs its real port, got {address!r}")
        check_positive_ints(n_workers=n_workers, threads=threads)
        client = self._client(where.url, timeout)
        try:
            if host is None:
                loopback = where.is_loopback
                host = "127.0.0.1" if loopback else local_address_towards(where.host, where.port)
            name = name or f"worker-{uuid.uuid4().hex[:8]}"
            names = [name] if n_workers == 1 else [f"{name}-{i}" for i in range(n_workers)]
            command = [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                where.url,
                "--host",
                host,
                "--nworkers",
                str(n_workers),
                "--nthreads",
                str(threads),
                "--memory-limit",
                str(memory),
                "--name",
                name,
                # The worker's HTTP server (health, metrics) runs even without a dashboard
                # and listens on every interface unless told otherwise.
                "--no-dashboard",
                "--dashboard-address",
                f"{host}:0",
            ]
            # The scheduler's own name for itself: stop(address) finds these workers under
            # any name of that address (a worker joined "localhost:8786", which the
            # scheduler reports as 127.0.0.1:8786).
            reported = client.scheduler_info(n_workers=0).get("address") or where.url
            record = self._spawn("worker", reported, command, block=block, names=names)

            def registered():
                workers = client.scheduler_info(n_workers=-1)["workers"]
                by_name = {str(info.get("name")): addr for addr, info in workers.items()}
                if all(n in by_name for n in names):
                    return [by_name[n] for n in names]
                return None

            addresses = self._wait_until(
                record, registered, timeout, f"dask worker {name!r} joining {where.url}"
            )
        finally:
            with contextlib.suppress(Exception):
                client.close()
        if block:
            self._serve(
                [record],
                f"cluster_setup: {n_workers} dask worker(s) joined {where.url}: "
                f"{', '.join(addresses)}; serving until Ctrl-C or SIGTERM",
            )
        return addresses

    def session_in_this_process(self) -> DaskConnection | None:
        """dask's default Client, when the script made one (``Client(...)`` makes itself
        the default unless told otherwise; the clients made here never do)."""
        distributed = sys.modules.get("distributed")
        if distributed is None:
            return None
        try:
            client = distributed.default_client()
        except ValueError:  # none
            return None
        if client.status != "running":
            return None
        return DaskConnection(self, client.scheduler.address, client, adopted=True)

    def connect_to_scheduler(self, address: str, timeout: float = 10) -> DaskConnection:
        """Connect to the scheduler at ``address`` and make it the active connection.

        While it is active, ``unified_map.parallel(f, xs)`` with no backend (and
        ``backend="dask"``) runs on this cluster. Connecting again disconnects the previous
        active connection and replaces it; a map running on the previous one in another
        thread finishes first, and the previous client is closed after it.

        Parameters
        ----------
        address : str
            ``"host:port"`` or ``"tcp://host:port"``.
        timeout : float, default 10
            Seconds to keep trying before giving up.
        scheduler_file : str, optional
            Instead of ``address``: a scheduler file (see :doc:`hpc`), waited for up to
            ``timeout`` seconds.
        py_files : list of str, optional
            Local ``.py``, ``.zip`` or ``.egg`` files and package folders to make importable
            on every worker (code the workers cannot see otherwise).

        Returns
        -------
        DaskConnection
            A context manager that disconnects at exit; ``disconnect()`` does it by hand.

        Raises
        ------
        SchedulerUnreachableError
            No scheduler answered within ``timeout`` (a ``ConnectionError`` naming the
            address).

        Examples
        --------
        >>> import cluster_setup
        >>> from cluster_setup import dask
        >>> address = dask.start_scheduler("127.0.0.1:0", dashboard_port=None)
        >>> with dask.connect_to_scheduler(address, timeout=10) as connection:
        ...     cluster_setup.active_connection() is connection
        True
        >>> cluster_setup.active_connection() is None
        True
        >>> dask.stop(address)
        """
        return super().connect_to_scheduler(address, timeout)

    def _connect(self, address: str, timeout: float) -> DaskConnection:
        where = parse_address(address)
        return DaskConnection(self, where.url, self._client(where.url, timeout))

    def _describe(self, connection: DaskConnection) -> tuple[list[WorkerInfo], str | None]:
        """The scheduler's own list of workers (threads as cores) and its dashboard link."""
        identity = connection.call(connection.client.scheduler_info, n_workers=-1)
        if not isinstance(identity, dict) or "workers" not in identity:
            raise connection.lost()
        workers = [
            WorkerInfo(
                address=addr,
                cores=info.get("nthreads", 0),
                memory=info.get("memory_limit"),
                name=str(info.get("name", "")),
            )
            for addr, info in sorted(identity["workers"].items())
        ]
        if any(same_endpoint(connection.address, a) for a in self._without_dashboard):
            return workers, None
        return workers, _dashboard_link(identity)

    # -- hooks of the shared verbs (see ClusterSetup) ----------------------------------------

    def _ship_py_files(self, connection: DaskConnection, files: list[str]) -> None:
        """``Client.upload_file``: to the workers there are and those that join later."""
        for path in files:
            connection.call(connection.client.upload_file, path)

    def _worker_versions(self, connection: DaskConnection) -> dict[str, dict[str, str]]:
        """``Client.run`` of :func:`.environment.environment_versions` on every worker."""
        found = connection.call(
            connection.client.run, environment_versions, self.engine_package, on_error="return"
        )
        return {
            address: versions
            if isinstance(versions, dict)
            else {"error": f"{type(versions).__name__}: {versions}"}
            for address, versions in found.items()
        }

    def _worker_options(self, cores: int | None, memory: int | None) -> dict[str, Any]:
        """One single-threaded worker process per core (Python code holds the GIL), sharing
        ``memory`` (default: the machine's, shared by dask)."""
        n_workers = cores or 1
        return {
            "n_workers": n_workers,
            "threads": 1,
            "memory": memory // n_workers if memory else "auto",
        }

    def _client(self, url: str, timeout: float):
        """A :class:`distributed.Client` for ``url``, or a ConnectionError naming it.

        ``Client(timeout=...)`` does not bound every wait: something at the address that
        accepts TCP but never answers (a stopped scheduler, an HTTP server, a bare socket)
        keeps it waiting forever. So the client is built in a helper thread and given up on
        after ``timeout`` seconds (plus a moment for dask's own, more precise error); a client
        that arrives later is closed in that thread.
        """
        distributed = import_distributed()
        outcome: dict[str, Any] = {}
        lock = threading.Lock()

        def build():
            try:
                # Something that is not a dask scheduler leaves a half-made Client that hangs
                # and complains when collected: make sure one answers before making it.
                asyncio.run(asyncio.wait_for(_probe_scheduler(url, timeout), timeout))
                client = distributed.Client(url, timeout=timeout, set_as_default=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
                with lock:
                    outcome["error"] = exc
                return
            with lock:
                late = outcome.setdefault("client", client) is not client
            if late:  # given up on meanwhile
                with contextlib.suppress(Exception):
                    client.close()

        thread = threading.Thread(target=build, name=f"cluster_setup connect {url}", daemon=True)
        thread.start()
        try:
            thread.join(max(timeout, 0) + _CONNECT_GRACE_SECONDS)
        finally:
            with lock:
                client = outcome.setdefault("client", None)
                error = outcome.get("error")
        if client is not None:
            return client
        reason = f": {str(error) or type(error).__name__}" if error is not None else ""
        raise SchedulerUnreachableError(
            f"no dask scheduler answered at {url} within {timeout:g} s "
            f"(is it running, is the address right, and is it a dask scheduler?){reason}"
        ) from error


async def _probe_scheduler(url: str, timeout: float) -> None:
    """Connect to ``url`` with dask's own protocol and check that a scheduler answers."""
    from distributed.comm import connect

    comm = await connect(url, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        identity = await comm.read()
    finally:
        comm.abort()
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        kind = identity.get("type") if isinstance(identity, dict) else type(identity).__name__
        raise ConnectionError(f"it is not a dask scheduler (it answered as {kind!r})")


def _ipv4_or_name(where: Address, given: str) -> Address:
    """``where``, unless its host is an IPv6 address: dask's command line splits its
    ``--dashboard-address`` on ``:`` and fails on those, so they are refused up front.

    Examples
    --------
    >>> _ipv4_or_name(parse_address("127.0.0.1:0"), "127.0.0.1:0").host
    '127.0.0.1'
    >>> _ipv4_or_name(parse_address("[::1]:0"), "[::1]:0")
    Traceback (most recent call last):
    ...
    cluster_setup.errors.InvalidAddressError: cannot start dask on the IPv6 address '[::1]:0': ...
    """
    if ":" in where.host:
        raise InvalidAddressError(_IPV6_REFUSED.format(given=given))
    return where


_IPV6_REFUSED = (
    "cannot start dask on the IPv6 address {given!r}: dask's command line supports IPv4 "
    "addresses and host names only (for example '127.0.0.1:0')"
)


def _dashboard_link(identity: dict) -> str | None:
    port = identity.get("services", {}).get("dashboard")
    if not port:
        return None
    return f"http://{parse_address(identity['address']).host}:{port}/status"
