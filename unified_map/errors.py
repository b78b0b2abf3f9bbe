"""The exception types users of unified_map catch.

Each one subclasses the builtin that fits, so ``except ValueError`` and friends keep working
for callers who never heard of unified_map.
"""

from __future__ import annotations

# Errors of starting and connecting to clusters live with cluster_setup (which must not import
# unified_map); they are re-exported here so users find every error type in one place. Their
# names are listed once, in cluster_setup.errors.__all__.
from unified_map._cluster import cluster_setup as _cluster_setup

_cluster_errors = _cluster_setup.errors
globals().update({name: getattr(_cluster_errors, name) for name in _cluster_errors.__all__})

__all__ = [
    "UnifiedMapError",
    "UnknownBackendError",
    "BackendNotInstalledError",
    "WorkerLostError",
    "ResultMismatchError",
    "RemoteTraceback",
    "UnpicklableRemoteError",
    "CheckpointError",
    "CheckpointMismatchError",
    *_cluster_errors.__all__,
]


class UnifiedMapError(Exception):
    """Base class of every error raised by unified_map itself (never of errors from ``func``)."""


class UnknownBackendError(UnifiedMapError, ValueError):
    """A backend name that is not registered; the message lists the valid names."""


class BackendNotInstalledError(UnifiedMapError, ImportError):
    """The package behind a backend is missing; the message names the pip extra to install."""


class WorkerLostError(UnifiedMapError, RuntimeError):
    """A worker process died (crash, ``os._exit``, out of memory) while running a task."""


class ResultMismatchError(UnifiedMapError, AssertionError):
    """A backend returned results that differ from the builtin ``map`` during a benchmark:
    the backend is wrong, so its timings mean nothing and the benchmark stops."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process.

    It is attached as ``__cause__`` of the re-raised exception so that Python prints the
    worker's traceback right above the caller's, as ``multiprocessing`` does.
    """

    def __init__(self, traceback_text: str):
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n\n" + self.traceback_text.rstrip()

    def __reduce__(self):
        return type(self), (self.traceback_text,)


class UnpicklableRemoteError(UnifiedMapError, RuntimeError):
    """Stands in for an exception from ``func`` that could not be sent back from the worker.

    Attributes
    ----------
    type_name : str
        Qualified name of the original exception type.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        # It exists to cross process boundaries, so it must rebuild from its own arguments.
        return type(self), (self.type_name, self.message)


class CheckpointError(UnifiedMapError, ValueError):
    """A ``checkpoint=`` file that cannot be used: another kind of file, a corrupted or newer
    checkpoint, one that cannot be written, or a result that cannot be pickled into it."""


class CheckpointMismatchError(CheckpointError):
    """The input differs, at a position whose result is stored, from the input of the run
    that stored it; the message names the position."""
