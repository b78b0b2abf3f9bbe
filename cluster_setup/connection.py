"""Connections: :class:`ClusterConnection`, what a backend may ask of a connection to a
scheduler, and the *active* connection (the one ``unified_map.parallel`` uses when no backend
is named), safe under threads.

A connection counts its users (:meth:`ClusterConnection.in_use`, held by a running map): a
connection disconnected while in use stops being active at once, but is really closed only
when its last user leaves, so that reconnecting in one thread never kills a map that another
thread is running on the previous connection.

Examples
--------
>>> from cluster_setup.connection import active_connection
>>> active_connection() is None
True
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import SchedulerUnreachableError

if TYPE_CHECKING:
    from .base import ClusterSetup

__all__ = ["ClusterConnection", "active_connection", "activate"]

_active: ClusterConnection | None = None
_lock = threading.RLock()


def active_connection() -> ClusterConnection | None:
    """The connection ``parallel`` routes through when no backend is named, or ``None``.

    Examples
    --------
    >>> import cluster_setup
    >>> cluster_setup.active_connection() is None
    True
    """
    return _active


def activate(connection: ClusterConnection | None) -> None:
    """Make ``connection`` the active one (``None``: none); the one it replaces is
    disconnected, which closes it once no map uses it any more.

    Safe to call from several threads: each replaced connection is disconnected once.

    Examples
    --------
    >>> activate(None)
    >>> active_connection() is None
    True
    """
    global _active
    with _lock:
        previous, _active = _active, connection
    if previous is not None and previous is not connection:
        previous.disconnect()


class ClusterConnection:
    """A connection to a scheduler; while active, ``unified_map.parallel`` runs on it.

    Engines subclass it, set :attr:`backend_name` and implement :attr:`reachable`,
    :meth:`_count_slots` and :meth:`_close`. It is a context manager that disconnects at exit.

    Attributes
    ----------
    backend_name : str
        The ``unified_map`` backend that maps over this connection (``"dask"``).
    address : str
        The scheduler address, ``"tcp://host:port"``.
    setup : ClusterSetup
        The setup object that made the connection.

    Examples
    --------
    >>> class Demo(ClusterConnection):
    ...     backend_name = "demo"
    ...     reachable = True
    ...     def _count_slots(self):
    ...         return 4
    ...     def _close(self):
    ...         print("closed")
    >>> connection = Demo(None, "tcp://127.0.0.1:1")
    >>> with connection.in_use():
    ...     connection.disconnect()  # a map still runs on it: closed when it ends
    ...     connection.connected, connection.slots()
    (False, 4)
    closed
    """

    backend_name: str = ""
    #: Seconds :meth:`slots` reuses the count it last asked the scheduler for.
    slots_max_age: float = 1.0
    #: A session the process started itself, outside cluster_setup (``ray.init()``, a
    #: SparkSession, dask's default Client), that a backend maps on: closing this connection
    #: leaves it running (see :meth:`ClusterSetup.session_in_this_process`).
    adopted: bool = False

    def __init__(self, setup: ClusterSetup | None, address: str):
        self.setup = setup
        self.address = address
        self._state_lock = threading.Lock()
        self._open = True
        self._closed = False
        self._users = 0
        self._slots = (-math.inf, 0)
        # Run after _close(): a private local cluster stops its processes here.
        self._on_close: list[Callable[[], object]] = []

    @property
    def connected(self) -> bool:
        """True until :meth:`disconnect` (or a new connection replacing this one)."""
        return self._open

    @property
    def session_ended(self) -> bool:
        """For an :attr:`adopted` session: whether its owner ended it (``ray.shutdown()``,
        ``spark.stop()``, ``client.close()``). Cheap: asked before every map."""
        return False

    @property
    def active(self) -> bool:
        """Whether this is the connection ``parallel`` uses when no backend is named."""
        return active_connection() is self

    @property
    def reachable(self) -> bool:
        """Whether the scheduler answers right now (False once it is lost or closed)."""
        raise NotImplementedError

    @property
    def engine(self) -> str:
        """The engine's name (``"dask"``), for messages."""
        return getattr(self.setup, "engine", "") or self.backend_name

    def slots(self) -> int:
        """The tasks the cluster runs at once (worker cores or threads), asked of the
        scheduler at most once per :attr:`slots_max_age` seconds (a map reads it often).

        Raises
        ------
        SchedulerUnreachableError
            The scheduler does not answer.
        """
        checked_at, slots = self._slots
        if time.monotonic() - checked_at > self.slots_max_age:
            slots = self._count_slots()
            self._slots = (time.monotonic(), slots)
        return slots

    def lost(self, cause: BaseException | None = None) -> SchedulerUnreachableError:
        """The error to raise when the scheduler cannot be reached, naming its address."""
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return SchedulerUnreachableError(
            f"lost the connection to the {self.engine} scheduler at {self.address}: "
            f"it does not answer{reason}"
        )

    @contextlib.contextmanager
    def in_use(self) -> Iterator[ClusterConnection]:
        """Count a user (a running map) for the duration of the ``with`` block.

        A :meth:`disconnect` meanwhile takes effect at once (the connection is no longer
        active or connected) but the connection is closed only when its last user leaves.

        Raises
        ------
        SchedulerUnreachableError
            The connection is already closed.
        """
        with self._state_lock:
            if self._closed:
                raise SchedulerUnreachableError(
                    f"the connection to the {self.engine} scheduler at {self.address} "
                    f"is closed (disconnected)"
                )
            self._users += 1
        try:
            yield self
        finally:
            with self._state_lock:
                self._users -= 1
                close_now = self._users == 0 and not self._open and not self._closed
                self._closed = self._closed or close_now
            if close_now:
                self._finish()

    def disconnect(self) -> None:
        """Disconnect; if it was the active one, no connection is active after.

        A connection in use (:meth:`in_use`) is closed when its last user leaves. Calling it
        twice is harmless.
        """
        global _active
        with _lock:
            if _active is self:
                _active = None
        with self._state_lock:
            self._open = False
            close_now = self._users == 0 and not self._closed
            self._closed = self._closed or close_now
        if close_now:
            self._finish()

    def _finish(self) -> None:
        try:
            self._close()
        finally:
            for callback in self._on_close:
                callback()

    def _count_slots(self) -> int:
        """Ask the scheduler for the number of worker cores or threads (per engine)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Close the engine's client (per engine)."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "active" if self.active else "connected" if self._open else "disconnected"
        return f"<{type(self).__name__} {self.address} {state}>"


def _forget_in_child() -> None:
    # A forked child (a process-pool worker) has no connection of its own.
    global _active, _lock
    _active = None
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
