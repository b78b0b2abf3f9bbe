"""Start schedulers and workers of a cluster engine, connect to one, and report its state.

The objects ``cluster_setup.dask`` (and, in later releases, ``spark`` and ``ray``) are
created at import; users call their methods and never instantiate the classes. Connecting
makes that connection the *active* one, which ``unified_map.parallel`` uses when no backend
is named. No engine is imported until one of these objects is used.

Examples
--------
>>> import cluster_setup
>>> cluster_setup.dask.engine
'dask'
"""

from __future__ import annotations

import threading

_active = None
_active_lock = threading.Lock()


def active_connection():
    """The connection ``parallel`` routes through when no backend is named, or ``None``.

    Examples
    --------
    >>> import cluster_setup
    >>> cluster_setup.active_connection() is None
    True
    """
    return _active


def _set_active_connection(connection) -> None:
    """Make ``connection`` the active one (``None`` clears it). Used by the setups."""
    global _active
    with _active_lock:
        _active = connection


# Imported after the active-connection functions, which base.py uses. The engine modules
# carry a leading underscore so that importing one never replaces the object of that name.
from cluster_setup import errors as _errors  # noqa: E402
from cluster_setup._dask import DaskSetup  # noqa: E402
from cluster_setup.base import ClusterStatus  # noqa: E402
from cluster_setup.errors import *  # noqa: E402, F403 - the error types, listed in its __all__

#: Dask: ``start_scheduler``, ``start_worker``, ``connect_to_scheduler``, ``report_status``.
dask = DaskSetup()

__all__ = [
    "dask",
    "active_connection",
    "ClusterStatus",
    *_errors.__all__,
]
