"""unified_map: one ``map`` call for every parallel engine.

``parallel(func, iterable, backend=...)`` runs like the builtin ``map`` (same results, same
order) on plain Python, thread and process pools, joblib, or a Dask cluster. Engines are
imported only when a backend that needs them is first used.

Examples
--------
>>> import unified_map as um
>>> um.parallel(str.upper, ["a", "b"], backend="threads")
['A', 'B']
"""

from __future__ import annotations

from unified_map._cluster import cluster_setup
from unified_map.backends import available_backends, register_backend
from unified_map.benchmark import benchmark
from unified_map.errors import (
    BackendNotInstalledError,
    CheckpointError,
    CheckpointMismatchError,
    RemoteTraceback,
    ResultMismatchError,
    UnifiedMapError,
    UnknownBackendError,
    UnpicklableRemoteError,
    WorkerLostError,
)
from unified_map.mapping import imap, parallel, starmap
from unified_map.options import Failure

__version__ = "0.1.0"

__all__ = [
    "parallel",
    "imap",
    "starmap",
    "benchmark",
    "available_backends",
    "register_backend",
    "cluster_setup",
    "Failure",
    "UnifiedMapError",
    "UnknownBackendError",
    "BackendNotInstalledError",
    "WorkerLostError",
    "ResultMismatchError",
    "RemoteTraceback",
    "UnpicklableRemoteError",
    "CheckpointError",
    "CheckpointMismatchError",
]
