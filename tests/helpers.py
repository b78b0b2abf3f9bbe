"""Small helpers for tests that run Python in a child process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil


def run_python(code: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter and return the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def process_tree_pids(pids) -> set[int]:
    """``pids`` and all their live descendants."""
    found = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in process.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return {pid for pid in found if is_alive(pid)}


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Records the engine logs, with a traceback, for races it recovers from by design, e.g.
# "2026-11-23 13:44:05,790 - distributed.batched - INFO - Batched Comm Closed <TCP ...>".
_BENIGN_ENGINE_RECORDS = re.compile(r" - distributed\.batched - INFO - Batched Comm Closed ")


def unexpected_tracebacks(lines: list[str]) -> list[str]:
    """The tracebacks in ``lines`` other than those of known benign engine records.

    Dask's scheduler logs, at INFO level and with the traceback attached, the race of a
    worker's comm closing while it was writing to it, which happens when a worker leaves
    as the scheduler is sending it a message. That is part of dask's normal shutdown; any
    other traceback (an uncaught exception, an ERROR record) is returned, so the test still
    fails on it.
    """
    found = []
    previous = ""
    for line in lines:
        # logging prints the traceback right below the record it belongs to
        if line.startswith("Traceback") and not _BENIGN_ENGINE_RECORDS.search(previous):
            found.append(line)
        previous = line
    return found


class BlockingScript:
    """A child interpreter running a ``block=True`` call; its stderr is read in a thread."""

    def __init__(self, code: str):
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match.group(1) if match.groups() else line
            assert self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def terminate_and_check(self) -> None:
        descendants = process_tree_pids([self.process.pid]) - {self.process.pid}
        assert descendants, "the blocking call started no process?"
        self.process.send_signal(signal.SIGTERM)
        # stdout (a few lines) is read after the exit; stderr only by the reader thread:
        # communicate() would take a share of its last lines away from self.lines.
        self.process.wait(timeout=60)
        out = self.process.stdout.read()
        self._reader.join(5)
        assert self.process.returncode == 0, "".join(self.lines)
        assert "returned" in out  # the call returned; the script went on and ended normally
        assert not process_tree_pids(descendants), "children left behind"
        assert not unexpected_tracebacks(self.lines), "".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:  # only when a check failed: take its children too
            for pid in process_tree_pids([self.process.pid]):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else None
            self.process.kill()
            self.process.wait()
