"""HPC: what a batch job needs, the same for every engine. Serving a scheduler or workers
from a job script with one line per event, one launcher for a whole allocation, and the
``UNIFIED_MAP_SCHEDULER`` route that lets an unchanged script find its cluster.

The command line (``unified-map scheduler|worker|status|launch``) is a thin layer over
:func:`serve_scheduler`, :func:`serve_workers`, :func:`describe` and :func:`launch`; they
use only the engines' public verbs and the hooks of :class:`~cluster_setup.base.ClusterSetup`.

Examples
--------
>>> task_rank_and_size({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"})
(2, 4, 'SLURM_PROCID/SLURM_NTASKS')
>>> task_rank_and_size({})
(0, 1, 'no launcher')
>>> parse_memory("2GB"), parse_memory("512m"), parse_memory("1.5GiB")
(2000000000, 536870912, 1610612736)
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .addresses import parse_address, refusal
from .connection import ClusterConnection, active_connection
from .errors import ClusterSetupError, SchedulerUnreachableError
from .processes import STOP_GRACE_SECONDS, StartedProcess
from .scheduler_file import batch_job_id, remove_scheduler_file, wait_for_scheduler_file

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "connect_from_environment",
    "setup_for",
    "task_rank_and_size",
    "available_cores",
    "parse_memory",
    "serve_scheduler",
    "serve_workers",
    "describe",
    "launch",
]

#: The variable naming the cluster ``parallel`` connects to when nothing is active:
#: ``dask://host:port``, ``spark://host:port``, ``ray://host:port`` or a scheduler file path.
ENVIRONMENT_VARIABLE = "UNIFIED_MAP_SCHEDULER"

#: The variable that picks the interface a scheduler listens on (default: the host name).
HOST_VARIABLE = "UNIFIED_MAP_HOST"

#: (rank, size) variables of the launchers ``launch`` runs under, in the order looked up.
RANK_VARIABLES = (
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)

#: Seconds between two looks at the cluster while serving (joins, leaves, the scheduler file).
POLL_SECONDS = 0.5

#: Seconds a launched worker keeps going once its scheduler refuses connections.
SCHEDULER_GONE_SECONDS = 30.0

_environment_lock = threading.Lock()

Say = Callable[[str], None]


def setup_for(engine: str):
    """``cluster_setup.<engine>``, or a ValueError listing the engines.

    Examples
    --------
    >>> setup_for("dask").engine
    'dask'
    """
    from . import dask, ray, spark

    setups = {"dask": dask, "spark": spark, "ray": ray}
    if engine not in setups:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(setups)}")
    return setups[engine]


# -- the environment variable ---------------------------------------------------------------


def _from_environment(value: str) -> tuple[Any, dict[str, Any]]:
    """The setup (``None``: the one the scheduler file names) and the
    ``connect_to_scheduler`` arguments that ``value`` names.

    Examples
    --------
    >>> setup, kwargs = _from_environment("dask://node17:8786")
    >>> setup.engine, kwargs
    ('dask', {'address': 'tcp://node17:8786'})
    >>> _from_environment("spark://node17:7077")[1]
    {'address': 'spark://node17:7077'}
    >>> _from_environment("/shared/scheduler.json")
    (None, {'scheduler_file': '/shared/scheduler.json'})
    """
    match = re.match(r"^([a-z]+)://(.*)$", value)
    if match is None:
        return None, {"scheduler_file": value}
    scheme, rest = match.groups()
    engine = {"tcp": "dask", "dask": "dask", "spark": "spark", "ray": "ray"}.get(scheme)
    if engine is None:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={value!r}: expected dask://host:port, spark://host:port, "
            f"ray://host:port or a scheduler file's path"
        )
    address = f"tcp://{rest}" if scheme == "dask" else value
    return setup_for(engine), {"address": address}


def connect_from_environment(timeout: float = 60.0) -> ClusterConnection | None:
    """The active connection; with none, and ``UNIFIED_MAP_SCHEDULER`` set, connect to the
    cluster it names first (and make that connection active). ``None`` otherwise.

    This is how ``unified_map.parallel(f, xs)`` with no backend finds a cluster that a job
    script (or ``unified-map launch``) started: the same script runs locally on a laptop,
    where the variable is not set.

    Parameters
    ----------
    timeout : float, default 60
        Seconds to wait for the scheduler file, then for the scheduler, to answer.

    Raises
    ------
    SchedulerUnreachableError, SchedulerFileError, SchedulerFileTimeoutError
        The cluster named cannot be reached; the message starts with the variable's value.

    Examples
    --------
    >>> "UNIFIED_MAP_SCHEDULER" in os.environ, connect_from_environment()
    (False, None)
    """
    active = active_connection()
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if active is not None or not value:
        return active
    with _environment_lock:
        active = active_connection()
        if active is not None:
            return active
        setup, kwargs = _from_environment(value)
        try:
            if setup is None:  # a scheduler file: it names the engine (wait for it)
                document = wait_for_scheduler_file(os.path.abspath(value), timeout)
                setup = setup_for(document["engine"])
            return setup.connect_to_scheduler(timeout=timeout, **kwargs)
        except ClusterSetupError as exc:
            with contextlib.suppress(Exception):
                raise type(exc)(f"{ENVIRONMENT_VARIABLE}={value}: {exc}") from exc
            raise


# -- sizing and ranks -----------------------------------------------------------------------


def task_rank_and_size(environ: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """This task's rank, the number of tasks, and the variables they came from (SLURM's
    ``srun``, PMI, Open MPI's ``mpirun``); ``(0, 1, "no launcher")`` outside any."""
    environ = os.environ if environ is None else environ
    for rank_name, size_name in RANK_VARIABLES:
        rank, size = environ.get(rank_name), environ.get(size_name)
        if rank is not None and size is not None:
            try:
                rank_value, size_value = int(rank), int(size)
            except ValueError:
                raise ValueError(
                    f"{rank_name}={rank!r}, {size_name}={size!r}: expected integers"
                ) from None
            if not 0 <= rank_value < size_value:
                raise ValueError(f"{rank_name}={rank} is not a rank of {size_name}={size}")
            return rank_value, size_value, f"{rank_name}/{size_name}"
    return 0, 1, "no launcher"


def available_cores() -> int:
    """The cores this task may use: its CPU set (what SLURM or PBS gave it), else the
    machine's.

    Examples
    --------
    >>> available_cores() >= 1
    True
    """
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_memory(text: str | int) -> int:
    """A memory size in bytes: ``"2GB"`` (powers of 1000), ``"2GiB"`` or Spark's and
    SLURM's ``"2g"``/``"512m"`` (powers of 1024), or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = match and match[2].lower()
        if match is None or unit not in _UNITS:
            raise ValueError(f"invalid memory size {text!r}: expected e.g. 4GB, 4GiB, 4g, 512m")
        value = int(float(match[1]) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"memory must be positive, got {text!r}")
    return value


# -- serving with one line per event --------------------------------------------------------


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM (or SIGINT) while serving."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGINT raise :class:`_Stop` in the main thread for the duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _cleaning_up():
    """Signals are ignored while stopping: a second SIGTERM must not cut the clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _signal_name(signum: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(signum).name
    return str(signum)


class _LogFollower:
    """Copies what started processes write to their log files to stderr (``--verbose``)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def follow(self, records: Sequence[StartedProcess]) -> None:
        for record in records:
            if record.log_path:
                thread = threading.Thread(
                    target=self._copy, args=(record.log_path,), daemon=True, name="log follower"
                )
                thread.start()
                self._threads.append(thread)

    def _copy(self, path: str) -> None:
        with contextlib.suppress(OSError), open(path, errors="replace") as log:
            while not self._stop.is_set():
                line = log.readline()
                if line:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(1)


class _WorkerWatch:
    """Says who joined and who left a scheduler, from its ``_describe`` list."""

    def __init__(self, setup, address: str, say: Say, timeout: float):
        self.setup, self.say = setup, say
        self.observer = setup._observe(address, timeout)
        self.known: dict[str, Any] = {}
        self.problem: str | None = None

    def poll(self) -> None:
        try:
            workers, _ = self.setup._describe(self.observer)
        except (SchedulerUnreachableError, OSError) as exc:
            if self.problem is None:
                self.problem = str(exc)
                self.say(f"scheduler does not answer: {exc}")
            return
        self.problem = None
        now = {w.address: w for w in workers}
        for address, worker in now.items():
            if address not in self.known:
                name = f" ({worker.name})" if worker.name else ""
                self.say(f"worker joined: {address}{name}, {worker.cores} core(s)")
        for address in self.known:
            if address not in now:
                self.say(f"worker left: {address}")
        self.known = now

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.observer.disconnect()


class _StartedHere:
    """The processes a setup starts from now on: what a command stops at its end (a caller's
    own clusters, started before, are left alone)."""

    def __init__(self, setup):
        self.setup = setup
        self.before = {id(record) for record in setup.started}

    def stop(self) -> None:
        new = [r for r in self.setup.started if id(r) not in self.before]
        for record in [r for r in new if r.role != "scheduler"] + [
            r for r in new if r.role == "scheduler"
        ]:
            if record.role == "scheduler":
                self.setup.stop(record.address)  # its scheduler file goes with it
            else:
                self.setup.stop_process(record)


def _records(setup, address: str, role: str | None = None) -> list[StartedProcess]:
    from .addresses import same_endpoint

    return [
        r
        for r in setup.started
        if same_endpoint(r.address, address) and (role is None or r.role == role)
    ]


def serve_scheduler(
    setup,
    address: str | None,
    scheduler_file: str | None,
    say: Say,
    *,
    dashboard_port: int | None | str = "default",
    timeout: float = 60,
    verbose: bool = False,
) -> int:
    """Start a scheduler, say where it listens and who joins and leaves, until SIGTERM,
    Ctrl-C or its exit; stop it cleanly; return the exit code (0 after a signal).
    ``dashboard_port``: a port, None (no dashboard) or ``"default"`` (the engine's)."""
    follower = _LogFollower()
    watch = None
    started = _StartedHere(setup)
    try:
        with _stop_on_signals():
            options: dict[str, Any] = {"timeout": timeout}
            if dashboard_port != "default":
                options["dashboard_port"] = dashboard_port
            listening = setup.start_scheduler(address, scheduler_file=scheduler_file, **options)
            records = _records(setup, listening, "scheduler")
            if verbose:
                follower.follow(records)
            where = f"; scheduler file {scheduler_file}" if scheduler_file else ""
            say(f"{setup.engine} scheduler listening at {listening}{where}")
            watch = _WorkerWatch(setup, listening, say, timeout)
            while all(r.running for r in records):
                watch.poll()
                time.sleep(POLL_SECONDS)
            say(f"stopped: the scheduler exited with code {records[0].popen.returncode}")
            return 1
    except _Stop as stop:
        say(f"stopping: {_signal_name(stop.signum)} received")
        return 0
    finally:
        with _cleaning_up():
            if watch is not None:
                watch.close()
            started.stop()
            follower.close()


def serve_workers(
    setup,
    address: str | None,
    scheduler_file: str | None,
    say: Say,
    *,
    cores: int | None = None,
    memory: int | None = None,
    timeout: float = 60,
    verbose: bool = False,
    until: Callable[[], str | None] | None = None,
) -> int:
    """Start workers sized by ``cores`` and ``memory`` for this node, say what joined, serve
    until SIGTERM, Ctrl-C, their exit or ``until()`` returning a reason; stop them cleanly.

    A refused connection is said at once (the workers keep trying until ``timeout``)."""
    follower = _LogFollower()
    started = _StartedHere(setup)
    try:
        with _stop_on_signals():
            if scheduler_file is not None:
                say(f"waiting for scheduler file {scheduler_file} (up to {timeout:g} s)")
                document = wait_for_scheduler_file(scheduler_file, timeout, engine=setup.engine)
                setup._use_scheduler_file(document)
                address = document["address"]
            where = parse_address(address, schemes=setup._schemes())
            problem = refusal(where.host, where.port)
            if problem is not None:
                say(
                    f"{setup.engine} scheduler at {address}: {problem}; the workers keep "
                    f"trying until the timeout ({timeout:g} s)"
                )
            options = setup._worker_options(cores, memory)
            joined = setup.start_worker(address, timeout=timeout, **options)
            records = _records(setup, address, "worker")
            if verbose:
                follower.follow(records)
            say(f"{len(joined)} {setup.engine} worker(s) joined {address}: {', '.join(joined)}")
            gone_since, probed = None, time.monotonic()
            while all(r.running for r in records):
                if until is not None:
                    reason = until()
                    if reason is not None:
                        say(f"stopping: {reason}")
                        return 0
                    # the scheduler's task may die without removing its file
                    if time.monotonic() - probed > 5:
                        probed = time.monotonic()
                        if refusal(where.host, where.port) == "connection refused":
                            gone_since = gone_since or probed
                            if probed - gone_since > SCHEDULER_GONE_SECONDS:
                                say(f"stopping: the scheduler at {address} is gone")
                                return 1
                        else:
                            gone_since = None
                time.sleep(POLL_SECONDS)
            codes = ", ".join(str(r.popen.returncode) for r in records)
            say(f"stopped: the workers exited (codes {codes})")
            return 1
    except _Stop as stop:
        say(f"stopping: {_signal_name(stop.signum)} received")
        return 0
    finally:
        with _cleaning_up():
            started.stop()
            follower.close()


def describe(setup, address: str | None, scheduler_file: str | None, timeout: float) -> int:
    """Connect, print the cluster's status table (workers, versions), disconnect. A refused
    connection fails at once, naming the address."""
    if scheduler_file is not None:
        document = wait_for_scheduler_file(scheduler_file, timeout, engine=setup.engine)
        setup._use_scheduler_file(document)
        address = document["address"]
    where = parse_address(address, schemes=setup._schemes())
    if refusal(where.host, where.port) == "connection refused":
        raise SchedulerUnreachableError(
            f"no {setup.engine} scheduler at {address}: connection refused"
        )
    with setup.connect_to_scheduler(address, timeout=timeout):
        setup.report_status()
    return 0


# -- the launcher ---------------------------------------------------------------------------


def _rank_marker(scheduler_file: str, rank: int) -> str:
    return f"{scheduler_file}.rank-{rank}"


def _wait_process(popen: subprocess.Popen, grace: float) -> int:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return popen.wait(grace)
    popen.kill()
    return popen.wait()


def launch(
    engine: str,
    scheduler_file: str,
    command: Sequence[str],
    *,
    host: str | None = None,
    cores: int | None = None,
    memory: int | None = None,
    timeout: float = 300,
    verbose: bool = False,
    environ: Mapping[str, str] | None = None,
    say: Say | None = None,
) -> int:
    """Run one task of an allocation: task 0 starts the scheduler (writing
    ``scheduler_file``), waits for the other tasks' workers, runs ``command`` with
    ``UNIFIED_MAP_SCHEDULER`` pointing at the file, and stops everything when it ends; the
    other tasks start workers sized for their node and serve until the scheduler file goes.

    Returns the command's exit code on task 0, 0 on the others (128 + signal after one).
    """
    environ = os.environ if environ is None else environ
    rank, size, source = task_rank_and_size(environ)
    setup = setup_for(engine)
    path = os.path.abspath(scheduler_file)
    prefix = f"unified-map launch [{engine} task {rank}/{size}]"
    say = say or (lambda line: print(f"{prefix}: {line}", file=sys.stderr, flush=True))
    job = batch_job_id()
    if rank == 0:
        return _launch_main(
            setup, path, command, size, source, host, cores, memory, timeout, verbose, say
        )
    marker = _rank_marker(path, rank)

    def scheduler_file_gone() -> str | None:
        return None if os.path.exists(path) else "the script ended (scheduler file removed)"

    say(f"worker task ({source}); waiting for scheduler file {path}")
    try:
        with _stop_on_signals():
            document = wait_for_scheduler_file(path, timeout, engine=setup.engine, job=job)
    except _Stop as stop:
        say(f"stopping: {_signal_name(stop.signum)} received")
        return 128 + stop.signum
    setup._use_scheduler_file(document)
    address = document["address"]

    # the marker tells task 0 this task's workers joined; it goes when they stopped
    def say_and_mark(line: str) -> None:
        say(line)
        if "worker(s) joined" in line:
            with open(marker, "w", encoding="utf-8") as file:
                file.write(f"{os.getpid()}\n")

    try:
        return serve_workers(
            setup,
            address,
            None,
            say_and_mark,
            cores=cores,
            memory=memory,
            timeout=timeout,
            verbose=verbose,
            until=scheduler_file_gone,
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker)


def _launch_main(setup, path, command, size, source, host, cores, memory, timeout, verbose, say):
    host = host or os.environ.get("UNIFIED_MAP_HOST", "").strip() or None
    follower = _LogFollower()
    started = _StartedHere(setup)
    script: subprocess.Popen | None = None
    listening = None
    code = 1
    try:
        with _stop_on_signals():
            for stale in [path] + [_rank_marker(path, r) for r in range(1, size)]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)
            address = f"{host}:0" if host else None
            listening = setup.start_scheduler(address, scheduler_file=path, timeout=timeout)
            if verbose:
                follower.follow(_records(setup, listening))
            say(f"{setup.engine} scheduler listening at {listening} ({source}, {size} tasks); "
                f"scheduler file {path}")  # fmt: skip
            if size == 1:
                joined = setup.start_worker(listening, **setup._worker_options(cores, memory))
                say(f"a single task: {len(joined)} worker(s) on this node too")
            else:
                _wait_for_ranks(path, size, timeout, say)
            say(f"running: {shlex.join(command)}")
            env = dict(os.environ, **{ENVIRONMENT_VARIABLE: path})
            script = subprocess.Popen(list(command), env=env)
            code = script.wait()
            say(f"the script exited with code {code}; stopping every task")
    except _Stop as stop:
        say(f"stopping: {_signal_name(stop.signum)} received")
        code = 128 + stop.signum
    except FileNotFoundError as exc:
        say(f"cannot run the script: {exc}")
        code = 127
    finally:
        with _cleaning_up():
            if script is not None and script.poll() is None:
                script.terminate()
                _wait_process(script, STOP_GRACE_SECONDS)
            if listening is not None:
                remove_scheduler_file(path)  # the other tasks stop their workers on this
                _wait_for_ranks_gone(path, size, STOP_GRACE_SECONDS)
            started.stop()
            follower.close()
    return code


def _wait_for_ranks(path: str, size: int, timeout: float, say: Say) -> None:
    deadline = time.monotonic() + timeout
    missing = list(range(1, size))
    while missing:
        missing = [r for r in missing if not os.path.exists(_rank_marker(path, r))]
        if not missing:
            break
        if time.monotonic() > deadline:
            say(f"tasks {missing} have no workers after {timeout:g} s; running the script "
                f"with those that joined")  # fmt: skip
            return
        time.sleep(0.1)
    say(f"all {size - 1} worker task(s) joined")


def _wait_for_ranks_gone(path: str, size: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(_rank_marker(path, r)) for r in range(1, size)):
            return
        time.sleep(0.1)
