"""Processes: start an engine daemon, wait until it is ready, stop its process tree by pid,
and make background processes die with this interpreter (the parent watch).

Every process is started in a session of its own, so that a Ctrl-C in the terminal reaches
only the caller, who then stops the processes cleanly. Being in their own session, they
would survive the caller's death; so that they never do, even on SIGKILL, a small watcher
process (one per interpreter, started with the first process) reads a pipe from this
interpreter and, when the pipe closes (this interpreter exited or died), SIGTERMs then
SIGKILLs the process trees it was told about and not told were stopped, and removes their log
folders. Nothing is ever stopped by name.

Examples
--------
>>> import sys
>>> from cluster_setup.processes import start_process, stop_processes
>>> record = start_process("demo", "-", [sys.executable, "-c", "import time; time.sleep(60)"])
>>> record.running
True
>>> stop_processes([record], grace=5)
>>> record.running
False
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ClusterStartError, ClusterStartTimeoutError, PortInUseError

__all__ = [
    "STOP_GRACE_SECONDS",
    "StartedProcess",
    "start_process",
    "wait_until_ready",
    "stop_processes",
    "serve",
    "process_environment",
    "user_import_folders",
    "make_log_dir",
    "remove_log_dir",
]

T = TypeVar("T")

#: Seconds a process gets to shut down after SIGTERM before its process tree is killed.
STOP_GRACE_SECONDS = 15.0


@dataclass
class StartedProcess:
    """A scheduler or worker process that a setup started, and what it serves or joined.

    ``address`` is the scheduler address as the scheduler itself reports it: the one it
    listens on for a scheduler, the one it joined for a worker. The process leads its own
    session and process group (``pgid == pid``).

    Examples
    --------
    >>> import sys
    >>> record = start_process("demo", "-", [sys.executable, "-c", "pass"])
    >>> record.popen.wait()
    0
    >>> record.running, record.log_tail()
    (False, '')
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


# -- the environment of started processes ------------------------------------------------


def _interpreter_folders() -> list[str]:
    """The folders this interpreter imports its standard library and packages from."""
    folders = set()
    for base in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base, "installed_base": base})
        folders.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
        folders.add(os.path.join(base, "lib"))  # python3X.zip and friends
        folders.add(os.path.join(base, "lib64"))
    with contextlib.suppress(AttributeError):  # site may be trimmed (embedded interpreters)
        folders.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.USER_SITE:
        folders.add(site.USER_SITE)
    return sorted({os.path.realpath(folder) for folder in folders if folder})


def user_import_folders() -> list[str]:
    """The folders on ``sys.path`` that are the user's own: not this interpreter's standard
    library or site-packages (``''``, the working directory, becomes its absolute path).

    Examples
    --------
    >>> import sysconfig
    >>> sysconfig.get_paths()["stdlib"] in user_import_folders()
    False
    """
    interpreter = _interpreter_folders()
    found = []
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        path = os.path.realpath(entry or os.getcwd())
        if any(path == folder or path.startswith(folder + os.sep) for folder in interpreter):
            continue
        found.append(path)
    return list(dict.fromkeys(found))


def process_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a started process: this one's, with ``PYTHONPATH`` set to the
    user's own import folders only and without ``UNIFIED_MAP_SCHEDULER``, plus ``extra``.

    Started processes run this interpreter (``sys.executable``), which finds its own
    standard library and site-packages by itself; putting those on ``PYTHONPATH`` as well
    would impose them on any other Python a task starts (``SRE module mismatch``).

    Examples
    --------
    >>> import sysconfig
    >>> env = process_environment({"EXAMPLE": "1"})
    >>> env["EXAMPLE"], sysconfig.get_paths()["purelib"] in env.get("PYTHONPATH", "")
    ('1', False)
    """
    env = dict(os.environ)
    # A task that maps on a worker must not connect to the cluster from there (see
    # cluster_setup.hpc.connect_from_environment): the variable is the driver's alone.
    env.pop("UNIFIED_MAP_SCHEDULER", None)
    folders = user_import_folders()
    if folders:
        env["PYTHONPATH"] = os.pathsep.join(folders)
    else:
        env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


# -- log folders ---------------------------------------------------------------------------


def make_log_dir(prefix: str) -> str:
    """A new temporary folder for the logs of started processes; the parent watch removes it
    if this interpreter dies before :func:`remove_log_dir`.

    Examples
    --------
    >>> import os
    >>> path = make_log_dir("cluster_setup-example-")
    >>> os.path.isdir(path)
    True
    >>> remove_log_dir(path)
    >>> os.path.exists(path)
    False
    """
    path = tempfile.mkdtemp(prefix=prefix)
    _parent_watch.send("D+", path)
    return path


def remove_log_dir(path: str) -> None:
    """Remove a folder made by :func:`make_log_dir` (harmless if it is gone)."""
    shutil.rmtree(path, ignore_errors=True)
    _parent_watch.send("D-", path)


# -- starting, waiting, stopping -----------------------------------------------------------


def start_process(
    role: str,
    address: str,
    command: list[str],
    *,
    log_path: str | None = None,
    env: dict[str, str] | None = None,
    names: list[str] | None = None,
    block: bool = False,
) -> StartedProcess:
    """Start ``command`` as the leader of a new session; it dies with this interpreter.

    Parameters
    ----------
    role : str
        ``"scheduler"``, ``"worker"``...: what the process is, for reports.
    address : str
        The scheduler address it serves or joins.
    command : list of str
        The command line; engines run ``sys.executable``.
    log_path : str, optional
        File its output goes to (appended); ``None``: this process's terminal.
    env : dict, optional
        Its environment; default :func:`process_environment`.
    names : list of str, optional
        The worker names it registers under, if any.
    block : bool, default False
        Whether the caller serves it in the foreground (:func:`serve`): SIGTERM is then
        noted from now on, so that one arriving during start-up stops it too. Otherwise, the
        first background process started from the main thread makes SIGTERM exit through
        ``SystemExit`` (if SIGTERM still has its default action), so that exit handlers stop
        the background processes.

    Returns
    -------
    StartedProcess

    Examples
    --------
    >>> import sys
    >>> record = start_process("demo", "-", [sys.executable, "-c", "print('hi')"])
    >>> record.popen.wait(), record.role
    (0, 'demo')
    """
    # Watch for SIGTERM before the process exists: one during start-up must stop it too.
    watch = _SigtermWatch().install() if block else None
    if not block:
        install_exit_on_sigterm()
    try:
        _parent_watch.ensure_started()
        with open(log_path or os.devnull, "ab") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log if log_path else None,
                stderr=subprocess.STDOUT if log_path else None,
                env=process_environment() if env is None else env,
                start_new_session=True,
            )
    except BaseException:
        if watch is not None:
            watch.restore()
        raise
    _parent_watch.send("P+", str(popen.pid))
    return StartedProcess(role, address, popen, command, log_path, names or [], watch)


def wait_until_ready(
    record: StartedProcess,
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
) -> T:
    """Poll ``probe()`` until it returns something other than ``None`` and return that.

    On timeout, or if the process exits first, the process is stopped and an error ending
    with its log is raised. Whatever else interrupts the wait (Ctrl-C, an error in
    ``probe``) stops the process too. A SIGTERM received while a ``block=True`` process
    starts stops it and raises ``SystemExit(128 + SIGTERM)``.

    Raises
    ------
    PortInUseError
        The process exited saying its port is taken.
    ClusterStartError
        The process exited while starting.
    ClusterStartTimeoutError
        ``probe()`` did not answer within ``timeout`` seconds.

    Examples
    --------
    >>> import sys
    >>> record = start_process("demo", "-", [sys.executable, "-c", "import time; time.sleep(9)"])
    >>> wait_until_ready(record, lambda: "ready", 5, "a demo")
    'ready'
    >>> stop_processes([record], grace=5)
    >>> record = start_process("demo", "-", [sys.executable, "-c", "raise SystemExit(3)"])
    >>> wait_until_ready(record, lambda: None, 30, "a failing demo")
    Traceback (most recent call last):
    ...
    cluster_setup.errors.ClusterStartError: a failing demo exited with code 3
        (no output)
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            if record.watch is not None and record.watch.received is not None:
                raise SystemExit(128 + record.watch.received)
            value = probe()
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
        # one way out for every failure: stop the process, restore SIGTERM
        stop_processes([record])
        if record.watch is not None:
            record.watch.restore()
        raise


def stop_processes(records: Iterable[StartedProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop started processes and everything they started; harmless for exited ones.

    Each process gets SIGTERM (engines shut down cleanly on it: a worker leaves its
    scheduler) and up to ``grace`` seconds in total; then whatever is left of its process
    tree (walked with psutil, from before the SIGTERM, so children that were re-parented are
    found too) and of its process group is killed.

    Examples
    --------
    >>> import sys
    >>> record = start_process("demo", "-", [sys.executable, "-c", "import time; time.sleep(60)"])
    >>> stop_processes([record], grace=5)
    >>> record.popen.returncode == -15
    True
    """
    records = list(records)
    trees = {record.pid: _descendants(record.pid) for record in records}
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
    # cleans up after it): let them finish, then kill whatever of the tree is still alive.
    for record in records:
        _finish_tree(record.pid, trees[record.pid], 2.0)
        _parent_watch.send("P-", str(record.pid))


def serve(
    records: list[StartedProcess], banner: str, before_stop: Callable[[], Any] | None = None
) -> None:
    """Occupy the interpreter until the processes exit, Ctrl-C or SIGTERM; then stop them.

    This is ``block=True``: what a job script wants. SIGTERM is watched from before the
    processes were spawned (``start_process(..., block=True)``). Signals are handled only in
    the main thread (Python's rule); from another thread the call just waits. A second
    signal does not cut the clean shutdown short.
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
        if in_main:
            previous = {
                sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)
            }
        try:
            if before_stop is not None:
                before_stop()
            stop_processes(records)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for watch in reversed(watches):
                watch.restore()


def _indent(text: str) -> str:
    return "".join("    " + line for line in text.splitlines(keepends=True)) or "    (no output)"


def _descendants(pid: int) -> list:
    """The live descendants of ``pid`` as ``psutil.Process`` objects ([] without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _finish_tree(pgid: int, tree: list, timeout: float) -> None:
    """Wait up to ``timeout`` for ``tree`` (psutil processes) and the process group ``pgid``
    to be gone, then kill what is left of both."""
    if tree:
        import psutil  # there is a tree only when psutil is installed

        # descendants started meanwhile (a nanny restarting its worker) count too
        for process in list(tree):
            with contextlib.suppress(psutil.Error):
                tree.extend(process.children(recursive=True))
        deadline = time.monotonic() + timeout
        while (left := _live(tree)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        deadline = time.monotonic() + 2.0
        while left and (left := _live(left)) and time.monotonic() < deadline:
            time.sleep(0.02)
    if not _wait_group_gone(pgid, timeout):
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, 2.0)


def _live(processes: list) -> list:
    """The psutil processes still running (the same process, not a reused pid; zombies
    waiting to be reaped do not count)."""
    import psutil

    live = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                live.append(process)
    return live


def _signal_group(leader: int, signum: int) -> None:
    """Signal every process of the group or the session that ``leader`` started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signum)
    for pid in _members(leader):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_group_gone(leader: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(leader):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _group_alive(leader: int) -> bool:
    """Whether a process of the group or session ``leader`` started is still running."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(leader, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return bool(_members(leader))


def _members(leader: int) -> list[int]:
    """Running processes (not zombies) of the process group or the session of ``leader``.

    A process we start leads a session of its own (``start_new_session``); what it starts
    stays in that session even when it moves to a process group of its own (Ray gives each
    task worker one) or is orphaned (Ray's agents outlive a killed raylet), so the session
    finds them where the group and the tree do not. Linux only (``/proc``); else [].
    """
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, session, ...
        if leader in (int(fields[2]), int(fields[3])) and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


# -- the parent watch: background processes die with this interpreter --------------------

# Run as ``python -I -c``: it imports nothing of ours (a user's module named like one of ours
# cannot matter) and only the standard library, plus psutil when it is there.
_WATCHER = r"""
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pids, dirs = [], []
for line in sys.stdin.buffer:
    kind, _, value = line.decode("utf-8", "surrogateescape").rstrip("\n").partition(" ")
    if kind == "P+":
        pids.append(int(value))
    elif kind == "P-" and int(value) in pids:
        pids.remove(int(value))
    elif kind == "D+":
        dirs.append(value)
    elif kind == "D-" and value in dirs:
        dirs.remove(value)

def members(leader):  # running processes of the group or session that leader started
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if leader in (int(fields[2]), int(fields[3])) and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found

try:
    import psutil
    tree = []
    for pid in pids:
        try:
            tree += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
except ImportError:
    psutil, tree = None, []
for pid in reversed(pids):  # workers were started after their scheduler: they go first
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
deadline = time.monotonic() + GRACE
while any(members(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.1)
for pid in pids:
    for member in [pid] + members(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except OSError:
            pass
for process in tree:
    try:
        process.kill()
    except Exception:
        pass
for path in dirs:
    shutil.rmtree(path, ignore_errors=True)
""".replace("GRACE", repr(STOP_GRACE_SECONDS / 2))


class _ParentWatch:
    """This interpreter's end of the pipe to its watcher process (started on first use).

    The pipe's write end is a bare file descriptor, not inherited by the processes we start
    (Python's descriptors are not inheritable) and closed in forked children, so only this
    interpreter holds it: the watcher sees the pipe close exactly when this interpreter ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._popen: subprocess.Popen | None = None
        self._fd: int | None = None
        self._owner = -1
        self._abandoned: list[subprocess.Popen] = []  # a forked child's copy of the parent's

    def ensure_started(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._fd is not None and self._owner == os.getpid():
            return
        read_fd, write_fd = os.pipe()
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-I", "-c", _WATCHER],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not reached by the terminal's Ctrl-C or job signals
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._fd, self._owner = write_fd, os.getpid()

    def send(self, kind: str, value: str) -> None:
        """Tell the watcher about a started (``+``) or stopped (``-``) process or folder."""
        with self._lock:
            if kind.endswith("+"):
                self._start_locked()
            elif self._fd is None or self._owner != os.getpid():
                return
            with contextlib.suppress(OSError):  # the watcher is gone: carry on without it
                os.write(self._fd, f"{kind} {value}\n".encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        """Close the pipe: the watcher stops what is still registered (normally nothing:
        the setups' exit hook ran first) and exits."""
        with self._lock:
            fd, popen, self._fd, self._popen = self._fd, self._popen, None, None
            if fd is None or self._owner != os.getpid():
                return
        os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(STOP_GRACE_SECONDS)

    def forget_in_child(self) -> None:
        # A forked child must not keep the parent's pipe open: the watcher would wait for it.
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._abandoned.append(self._popen)
            self._fd = self._popen = None


_parent_watch = _ParentWatch()


# -- SIGTERM -------------------------------------------------------------------------------


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


def exit_on_sigterm(signum, frame):
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


def install_exit_on_sigterm() -> None:
    """Replace the default SIGTERM action by :func:`exit_on_sigterm`, once, from the main
    thread, and only if nobody installed a handler of their own."""
    global _sigterm_exit_installed, _sigterm_exit_pid
    if _sigterm_exit_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_exit_installed = True
    _sigterm_exit_pid = os.getpid()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, exit_on_sigterm)


def _forget_in_child() -> None:
    # A forked child (a process-pool worker) dies of SIGTERM as it would have without us, and
    # never holds the parent's pipe to the watcher.
    global _sigterm_exit_installed
    _sigterm_exit_installed = False
    if signal.getsignal(signal.SIGTERM) is exit_on_sigterm:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _parent_watch.forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)

# Registered before the setups' own exit hook (base.py), so it runs after it: by then
# everything was stopped, and the watcher has nothing left to do.
atexit.register(_parent_watch.close)
