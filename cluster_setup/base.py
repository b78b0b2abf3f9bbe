"""What every engine's setup shares: addresses, the processes a setup started, blocking until
a signal, connections, and the :class:`ClusterStatus` report.

An engine (``_dask.py``, later Spark and Ray) subclasses :class:`ClusterSetup` and writes the
four verbs as thin wrappers over the engine's own command line: it builds a command, calls
:meth:`ClusterSetup._spawn`, and waits for the engine to say it is ready. Starting, stopping
and reporting the processes is done here once.

Each process is started in a session of its own, so it and everything it forks form one
process group whose id is the pid we started: :meth:`ClusterSetup.stop` asks the process to
shut down with SIGTERM, waits, and only then kills what is left of *that* group. Nothing is
ever stopped by name.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cluster_setup
from cluster_setup.errors import (
    ClusterStartError,
    ClusterStartTimeoutError,
    InvalidAddressError,
    PortInUseError,
)

__all__ = [
    "Address",
    "parse_address",
    "ClusterStatus",
    "WorkerInfo",
    "StartedProcess",
    "ClusterConnection",
    "ClusterSetup",
]

T = TypeVar("T")

#: Seconds a process gets to shut down after SIGTERM before its process group is killed.
STOP_GRACE_SECONDS = 15.0

_ADDRESS_FORM = (
    "'host:port' or 'tcp://host:port' (for example '127.0.0.1:8786'; port 0 picks a free one)"
)
_ADDRESS_RE = re.compile(
    r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[^\]]*\]|[^:/\s\[\]]+):(?P<port>[0-9]+)/?\Z"
)


@dataclass(frozen=True)
class Address:
    """A parsed ``scheme://host:port`` address.

    Examples
    --------
    >>> Address("tcp", "127.0.0.1", 8786).url
    'tcp://127.0.0.1:8786'
    """

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """The address as ``scheme://host:port``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether the host is this machine only (``127.x.x.x``, ``::1``, ``localhost``)."""
        return is_loopback(self.host)

    def __str__(self) -> str:
        return self.url


def parse_address(address: str, *, schemes: tuple[str, ...] = ("tcp",)) -> Address:
    """Parse ``"host:port"`` or ``"tcp://host:port"``; raise a ValueError naming the form.

    Parameters
    ----------
    address : str
        The address to parse. Port 0 means "pick a free port" where a server is started.
    schemes : tuple of str
        The accepted schemes; the first one is used when the address has none.

    Raises
    ------
    InvalidAddressError
        A ``ValueError`` naming the expected form.

    Examples
    --------
    >>> parse_address("127.0.0.1:8786")
    Address(scheme='tcp', host='127.0.0.1', port=8786)
    >>> parse_address("tcp://node7:0").url
    'tcp://node7:0'
    >>> parse_address("[::1]:8786").host
    '[::1]'
    >>> parse_address("node7")
    Traceback (most recent call last):
    ...
    cluster_setup.errors.InvalidAddressError: invalid address 'node7': expected 'host:port' ...

    The port is ASCII digits, and a host in brackets must be an IPv6 address:

    >>> for bad in ["127.0.0.1:\uff18\uff17", "[]:1", "[not-ip]:1", "[127.0.0.1]:1"]:
    ...     try:
    ...         parse_address(bad)
    ...     except ValueError:
    ...         print("refused", ascii(bad))
    refused '127.0.0.1:\uff18\uff17'
    refused '[]:1'
    refused '[not-ip]:1'
    refused '[127.0.0.1]:1'
    """
    match = _ADDRESS_RE.match(address.strip()) if isinstance(address, str) else None
    scheme = (match and match["scheme"]) or schemes[0]
    if (
        match is None
        or scheme not in schemes
        or int(match["port"]) > 65535
        or (match["host"].startswith("[") and not _is_ipv6(match["host"][1:-1]))
    ):
        raise InvalidAddressError(f"invalid address {address!r}: expected {_ADDRESS_FORM}")
    return Address(scheme, match["host"], int(match["port"]))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("10.0.0.5")
    (True, True, False)
    """
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` at once if ``host:port`` cannot be listened on.

    Port 0 is always free. The check binds the way the engines do (``SO_REUSEADDR``), so a
    port that is merely in TIME_WAIT after a previous run is not reported as taken.

    Examples
    --------
    >>> check_port_free("127.0.0.1", 0)
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise PortInUseError(
                exc.errno,
                f"cannot listen on {host}:{port}: the port is already in use "
                f"(choose another port, or port 0 for a free one)",
            ) from exc


def local_address_towards(host: str, port: int) -> str:
    """The IP address of this machine's interface that routes to ``host`` (no packet sent).

    Examples
    --------
    >>> local_address_towards("127.0.0.1", 8786)
    '127.0.0.1'
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return sock.getsockname()[0]


def format_bytes(n: int | None) -> str:
    """Human-readable size in powers of 1000, as engines print memory limits.

    Examples
    --------
    >>> format_bytes(2_000_000_000), format_bytes(None)
    ('2.00 GB', '-')
    """
    if not n:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class WorkerInfo:
    """One worker as the scheduler sees it."""

    address: str
    cores: int
    memory: int | None = None
    name: str = ""


@dataclass
class StartedProcess:
    """A scheduler or worker process that a setup started, and what it serves or joined.

    ``address`` is the scheduler address: the one it listens on for a scheduler, the one it
    joined for a worker. The process leads its own process group (``pgid == pid``).
    """

    role: str
    address: str
    popen: subprocess.Popen
    command: list[str]
    log_path: str | None = None
    names: list[str] = field(default_factory=list)
    #: For a ``block=True`` process started from the main thread: the SIGTERM watch that
    #: covers its start-up and serving.
    watch: _SigtermWatch | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """Process id (and process group id) of the started process."""
        return self.popen.pid

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def log_tail(self, n_lines: int = 20) -> str:
        """The last lines the process wrote, or an empty string when it wrote to a terminal."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-n_lines:])
        except OSError:
            return ""


@dataclass
class ClusterStatus:
    """What :meth:`ClusterSetup.report_status` found; ``str()`` is an aligned table.

    Examples
    --------
    >>> status = ClusterStatus("dask", "tcp://127.0.0.1:8786", True,
    ...                        [WorkerInfo("tcp://127.0.0.1:40001", 1, 2 * 10**9, "w-0")])
    >>> status.total_cores
    1
    >>> print(status)  # doctest: +NORMALIZE_WHITESPACE
    dask cluster at tcp://127.0.0.1:8786: connected
    worker                 name  cores  memory
    tcp://127.0.0.1:40001  w-0       1  2.00 GB
    total: 1 worker                  1  2.00 GB
    """

    engine: str
    scheduler_address: str | None
    connected: bool
    workers: list[WorkerInfo] = field(default_factory=list)
    dashboard_link: str | None = None
    #: ``(role, pid, scheduler address)`` of the processes this setup started and still runs.
    started: list[tuple[str, int, str]] = field(default_factory=list)
    #: Why a connection exists but is not connected (the scheduler does not answer), if so.
    problem: str | None = None

    @property
    def total_cores(self) -> int:
        """Sum of the workers' cores (threads, for dask)."""
        return sum(worker.cores for worker in self.workers)

    @property
    def total_memory(self) -> int:
        """Sum of the workers' memory limits in bytes (0 when unknown)."""
        return sum(worker.memory or 0 for worker in self.workers)

    def __str__(self) -> str:
        if self.connected:
            lines = [f"{self.engine} cluster at {self.scheduler_address}: connected"]
        elif self.scheduler_address:
            lines = [f"{self.engine} cluster at {self.scheduler_address}: scheduler unreachable"]
            if self.problem:
                lines.append(self.problem)
        else:
            lines = [
                f"{self.engine}: not connected "
                f"(connect with cluster_setup.{self.engine}.connect_to_scheduler(address))"
            ]
        if self.dashboard_link:
            lines.append(f"dashboard: {self.dashboard_link}")
        if self.connected:
            rows = [("worker", "name", "cores", "memory")]
            rows += [
                (w.address, w.name, str(w.cores), format_bytes(w.memory)) for w in self.workers
            ]
            plural = "" if len(self.workers) == 1 else "s"
            rows.append(
                (
                    f"total: {len(self.workers)} worker{plural}",
                    "",
                    str(self.total_cores),
                    format_bytes(self.total_memory),
                )
            )
            lines += _table(rows, right_aligned={2})
        if self.started:
            lines.append("started by this process:")
            rows = [("role", "pid", "scheduler")] + [(r, str(p), a) for r, p, a in self.started]
            lines += ["  " + line for line in _table(rows, right_aligned={1})]
        return "\n".join(lines)


def _table(rows: list[tuple[str, ...]], right_aligned: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


class ClusterConnection:
    """A connection to a scheduler; while active, ``unified_map.parallel`` runs on it.

    Engines subclass it, set :attr:`backend_name` and implement :meth:`_close`. It is a context
    manager that disconnects at exit.

    Attributes
    ----------
    backend_name : str
        The ``unified_map`` backend that maps over this connection (``"dask"``).
    address : str
        The scheduler address, ``"tcp://host:port"``.
    setup : ClusterSetup
        The setup object that made the connection.
    """

    backend_name: str = ""

    def __init__(self, setup: ClusterSetup, address: str):
        self.setup = setup
        self.address = address
        self._open = True

    @property
    def connected(self) -> bool:
        """True until :meth:`disconnect` (or a new connection replacing this one)."""
        return self._open

    @property
    def active(self) -> bool:
        """Whether this is the connection ``parallel`` uses when no backend is named."""
        return cluster_setup.active_connection() is self

    def disconnect(self) -> None:
        """Close the connection; if it was the active one, no connection is active after.

        Calling it twice is harmless.
        """
        if not self._open:
            return
        self._open = False
        if cluster_setup.active_connection() is self:
            cluster_setup._set_active_connection(None)
        self._close()

    def _close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "active" if self.active else "connected" if self._open else "disconnected"
        return f"<{type(self).__name__} {self.address} {state}>"


class _SigtermWatch:
    """Notes SIGTERM in a flag from before a ``block=True`` process is spawned until it has
    been served and stopped, so that a SIGTERM during start-up stops it too (main thread
    only: Python handles signals there)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: Any = None
        self._installed = False

    def install(self) -> _SigtermWatch | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        self._previous = signal.signal(signal.SIGTERM, self._note)
        self._installed = True
        return self

    def _note(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGTERM, self._previous)


def _exit_on_sigterm(signum, frame):
    """SIGTERM handler installed once background processes run: exit through ``SystemExit``
    so that the interpreter's exit handlers stop them (the default action kills at once).

    A process forked from another thread keeps the handler (it cannot be reset there): it
    dies of the signal as it would have without us."""
    if os.getpid() != _sigterm_exit_pid:
        with contextlib.suppress(ValueError):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


_sigterm_exit_installed = False
_sigterm_exit_pid = -1


def _install_exit_on_sigterm() -> None:
    """Replace the default SIGTERM action by :func:`_exit_on_sigterm`, once, from the main
    thread, and only if nobody installed a handler of their own."""
    global _sigterm_exit_installed, _sigterm_exit_pid
    if _sigterm_exit_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_exit_installed = True
    _sigterm_exit_pid = os.getpid()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


# Every setup, so that background processes are stopped when the interpreter exits.
_setups: weakref.WeakSet[ClusterSetup] = weakref.WeakSet()


class ClusterSetup:
    """The four verbs, the same on every engine, and the bookkeeping they share.

    ``start_scheduler``, ``start_worker``, ``connect_to_scheduler`` and ``report_status`` are
    written by each engine; :meth:`stop` and :meth:`disconnect` are shared. Users get one
    instance per engine from :mod:`cluster_setup` (``cluster_setup.dask``) and never create
    their own.

    Processes started with ``block=False`` run in the background until :meth:`stop` or until
    this interpreter exits, whichever comes first. So that a SIGTERM to the script (a batch
    system ending the job, ``kill``) stops them too, the first background process started
    from the main thread replaces SIGTERM's default action, if it still has it, by a handler
    that raises ``SystemExit(128 + SIGTERM)``: the interpreter exits as it would have, with
    code 143, but its exit handlers run first and stop what was started. A SIGTERM handler
    of your own is left alone (call :meth:`stop` from it).

    Attributes
    ----------
    engine : str
        The engine's name, as in ``cluster_setup.<engine>``.
    extra : str
        The pip extra that installs the engine (``pip install unified_map[extra]``).
    """

    engine: str = ""
    extra: str = ""

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
        """Connect to the scheduler at ``address`` and make it the active connection."""
        raise NotImplementedError

    def report_status(self) -> ClusterStatus:
        """Print and return the state of the cluster this process is connected to."""
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
        active = cluster_setup.active_connection()
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
        the scheduler and close cleanly); whatever is left of a process's own process group
        after that is killed. An active connection to a scheduler being stopped is
        disconnected first. Processes started by anyone else are never touched.

        Parameters
        ----------
        address : str, optional
            Only stop the scheduler at this address and the workers started to join it.
            ``None`` stops everything this object started.
        """
        wanted = None if address is None else parse_address(address).url
        with self._lock:
            records = [r for r in self._started if wanted in (None, r.address)]
            self._started = [r for r in self._started if r not in records]
        # Disconnect first: a client whose scheduler vanishes retries and logs for a while.
        connection = self.connection
        stopped_schedulers = {r.address for r in records if r.role == "scheduler"}
        if connection is not None and connection.address in stopped_schedulers:
            connection.disconnect()
        _stop_processes([r for r in records if r.role != "scheduler"])
        _stop_processes([r for r in records if r.role == "scheduler"])

    # -- helpers for engines ----------------------------------------------------------------

    def _activate(self, connection: ClusterConnection) -> None:
        """Make ``connection`` the active one, disconnecting the one it replaces."""
        previous = cluster_setup.active_connection()
        cluster_setup._set_active_connection(connection)
        if previous is not None and previous is not connection:
            previous.disconnect()

    def _new_file(self, prefix: str, suffix: str) -> str:
        with self._lock:
            if self._log_dir is None or not os.path.isdir(self._log_dir):
                self._log_dir = tempfile.mkdtemp(prefix=f"cluster_setup-{self.engine}-")
                # Removed when this setup is forgotten (a backend's private local cluster) or
                # at exit, whichever comes first; the logs stay readable until then.
                weakref.finalize(self, _remove_log_dir, self._log_dir, os.getpid())
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
    ) -> StartedProcess:
        """Start ``command`` as the leader of a new process group and remember it.

        In the background (``block=False``) its output goes to a log file whose tail ends any
        error message; in the foreground it goes to this process's terminal or job log.
        """
        env = dict(os.environ)
        # Local workers can import what the caller can (a script's sibling modules), as with
        # a forked process pool.
        paths = [p for p in sys.path if p] + env.get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        log_path = None if block else self._new_file(f"{role}-", ".log")
        # Watch for SIGTERM before the process exists: one during start-up must stop it too.
        watch = _SigtermWatch().install() if block else None
        if not block:
            _install_exit_on_sigterm()
        try:
            with open(log_path or os.devnull, "ab") as log:
                popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log if log_path else None,
                    stderr=subprocess.STDOUT if log_path else None,
                    env=env,
                    start_new_session=True,
                )
        except BaseException:
            if watch is not None:
                watch.restore()
            raise
        record = StartedProcess(role, address, popen, command, log_path, names or [], watch)
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
        """Poll ``ready()`` until it returns something other than None; on timeout or if the
        process exits first, stop it and raise an error that ends with its log.

        Whatever interrupts the wait (Ctrl-C, an error) stops the process first. A SIGTERM
        received while a ``block=True`` process starts stops it and exits with
        ``SystemExit(128 + SIGTERM)``: there is nothing to serve and no address to return.
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                if record.watch is not None and record.watch.received is not None:
                    raise SystemExit(128 + record.watch.received)
                value = ready()
                if value is not None:
                    return value
                if not record.running:
                    tail = record.log_tail()
                    if "address already in use" in tail.lower():
                        raise PortInUseError(
                            98, f"{what} failed: its port is already in use\n{_indent(tail)}"
                        )
                    code = record.popen.returncode
                    raise ClusterStartError(f"{what} exited with code {code}\n{_indent(tail)}")
                if time.monotonic() > deadline:
                    raise ClusterStartTimeoutError(
                        f"{what} did not become ready within {timeout:g} s; "
                        f"its log ({record.log_path or 'terminal'}) ends with:\n"
                        f"{_indent(record.log_tail())}"
                    )
                time.sleep(0.05)
        except BaseException:
            # one way out for every failure: forget the process, stop it, restore SIGTERM
            self._forget(record)
            _stop_processes([record])
            if record.watch is not None:
                record.watch.restore()
            raise

    def _forget(self, record: StartedProcess) -> None:
        with self._lock:
            if record in self._started:
                self._started.remove(record)

    def _serve(self, records: list[StartedProcess], banner: str) -> None:
        """Occupy the interpreter until the processes exit, Ctrl-C or SIGTERM; then stop them.

        This is ``block=True``: what a job script wants. SIGTERM is watched from before the
        processes were spawned (see :meth:`_spawn`). Signals are handled only from the main
        thread (Python's rule); from another thread the call just waits.
        """
        watches = [record.watch for record in records if record.watch is not None]
        try:
            print(banner, file=sys.stderr, flush=True)
            while all(record.running for record in records) and not any(
                watch.received is not None for watch in watches
            ):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            in_main = threading.current_thread() is threading.main_thread()
            previous = {}
            if in_main:  # a second signal must not cut the clean shutdown short
                previous = {
                    sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGTERM, signal.SIGINT)
                }
            try:
                with self._lock:
                    self._started = [r for r in self._started if r not in records]
                _stop_processes(records)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                for watch in reversed(watches):
                    watch.restore()


def _indent(text: str) -> str:
    return "".join("    " + line for line in text.splitlines(keepends=True)) or "    (no output)"


def _stop_processes(records: list[StartedProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each process, wait up to ``grace`` seconds, then kill what is left of each
    one's own process group (its children included)."""
    for record in records:
        if record.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for record in records:
        with contextlib.suppress(subprocess.TimeoutExpired):
            record.popen.wait(max(0.0, deadline - time.monotonic()))
    for record in records:
        if record.running:
            _signal_group(record.pid, signal.SIGKILL)
            record.popen.wait()
    # Children may outlive the leader for a moment (multiprocessing's resource tracker
    # cleans up after it): let them finish, then kill whatever of the group is still alive.
    for record in records:
        if not _wait_group_gone(record.pid, 2.0):
            _signal_group(record.pid, signal.SIGKILL)
            _wait_group_gone(record.pid, 2.0)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies waiting to be reaped
    by init do not count)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _remove_log_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked child: the directory is the parent's
        shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _stop_everything_at_exit() -> None:
    """Disconnect and stop what this interpreter started in the background."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm
    ):  # a second SIGTERM must not cut the clean shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    active = cluster_setup.active_connection()
    if active is not None:
        with contextlib.suppress(Exception):
            active.disconnect()
    for setup in list(_setups):
        with contextlib.suppress(Exception):
            setup.stop()
        if setup._log_dir:
            shutil.rmtree(setup._log_dir, ignore_errors=True)


def _forget_in_child() -> None:
    # A forked child (a process-pool worker) must never stop the parent's cluster at its exit,
    # and dies of SIGTERM as it would have without us.
    global _sigterm_exit_installed
    _sigterm_exit_installed = False
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for setup in list(_setups):
        setup._started = []
        setup._log_dir = None
    cluster_setup._active = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
