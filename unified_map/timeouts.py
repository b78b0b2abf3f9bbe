"""Worker side of ``timeout=``: stop one item that runs too long, in the process running it.

Where a task runs on its process's main thread (``multiprocessing``, ``futures``,
``joblib``, Spark's and Ray's Python workers) an interval timer (``SIGALRM``) interrupts
``func``: Python code, ``time.sleep`` and blocking I/O alike. On other threads of a worker
process (a dask worker runs tasks on a thread pool) a watchdog thread raises the timeout
in the item's thread with ``PyThreadState_SetAsyncExc``: it stops Python code at its next
bytecode, but not a C call (``time.sleep``, a long numpy operation) before that call returns.
Either way the driver keeps its own deadline as the guarantee (see :mod:`unified_map.mapping`),
and stops the task or replaces the worker when the item did not stop in time.

Never used in the caller's own process: a pool of threads cannot stop one of its threads,
and taking over the caller's ``SIGALRM`` would be rude.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

__all__ = ["ItemTimeout", "item_clock"]


class ItemTimeout(BaseException):
    """Raised inside ``func`` when its item's time is up. A BaseException, so that a
    ``func`` catching ``Exception`` (to retry a read, say) does not swallow it; the chunk
    runner turns it into a ``TimeoutError``."""


def _raise_item_timeout(signum, frame):
    raise ItemTimeout


class _SignalClock:
    """``SIGALRM`` on the main thread: interrupts Python code and blocking system calls."""

    def __enter__(self):
        self._previous = signal.signal(signal.SIGALRM, _raise_item_timeout)
        return self

    def arm(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def __exit__(self, *exc_info):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)


class _Watchdog:
    """One thread per process that raises :class:`ItemTimeout` in threads whose item is late."""

    def __init__(self):
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, thread id)
        self._fired: set[int] = set()
        self._tokens = iter(range(1, 2**62))
        threading.Thread(target=self._loop, name="unified_map item timeout", daemon=True).start()

    def arm(self, seconds: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (time.monotonic() + seconds, threading.get_ident())
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            entry = self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                # The item finished as the timeout was being raised: withdraw the exception
                # still pending, so that it does not go off in the engine's code later.
                _set_async_exc(threading.get_ident(), None)
            del entry

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, ident) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _set_async_exc(ident, ItemTimeout)
                deadlines = [deadline for deadline, _ in self._armed.values()]
                self._cond.wait(None if not deadlines else max(0.0, min(deadlines) - now))


class _ThreadClock:
    def __init__(self, watchdog: _Watchdog):
        self._watchdog = watchdog
        self._token: int | None = None

    def __enter__(self):
        return self

    def arm(self, seconds: float) -> None:
        self._token = self._watchdog.arm(seconds)

    def disarm(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            self._watchdog.disarm(token)

    def __exit__(self, *exc_info):
        self.disarm()


def _set_async_exc(ident: int, exc) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc and ctypes.py_object(exc))


_watchdog: _Watchdog | None = None
_watchdog_lock = threading.Lock()


def item_clock():
    """A clock for the items of one chunk: a context manager with ``arm(seconds)`` and
    ``disarm()`` around each item.

    Examples
    --------
    >>> import time
    >>> with item_clock() as clock:
    ...     clock.arm(0.05)
    ...     try:
    ...         time.sleep(5)
    ...     except ItemTimeout:
    ...         print("stopped")
    ...     finally:
    ...         clock.disarm()
    stopped
    """
    global _watchdog
    if threading.current_thread() is threading.main_thread():
        return _SignalClock()
    with _watchdog_lock:
        if _watchdog is None:
            _watchdog = _Watchdog()
    return _ThreadClock(_watchdog)


def _forget_watchdog() -> None:
    global _watchdog, _watchdog_lock
    _watchdog = None  # its thread did not survive the fork
    _watchdog_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_watchdog)
