"""The exception types raised while starting, joining or connecting to a cluster.

Each one subclasses the builtin that fits (``ValueError``, ``OSError``, ``ConnectionError``,
``TimeoutError``, ``ImportError``, ``RuntimeError``), so callers who never heard of
``cluster_setup`` can still catch them. ``unified_map.errors`` re-exports them.

Examples
--------
>>> from cluster_setup.errors import InvalidAddressError
>>> issubclass(InvalidAddressError, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "ClusterSetupError",
    "InvalidAddressError",
    "PortInUseError",
    "SchedulerUnreachableError",
    "ClusterStartError",
    "ClusterStartTimeoutError",
    "EngineNotInstalledError",
    "SchedulerFileError",
    "SchedulerFileTimeoutError",
    "EnvironmentMismatchWarning",
]


class ClusterSetupError(Exception):
    """Base class of every error raised by :mod:`cluster_setup` itself."""


class InvalidAddressError(ClusterSetupError, ValueError):
    """An address that is not ``"host:port"`` or ``"tcp://host:port"``."""


class PortInUseError(ClusterSetupError, OSError):
    """The port a scheduler was asked to listen on is already taken on that host."""


class SchedulerUnreachableError(ClusterSetupError, ConnectionError):
    """No scheduler answered at the address within the timeout, or the connection was lost."""


class ClusterStartError(ClusterSetupError, RuntimeError):
    """A scheduler or worker process exited while starting; the message ends with its log."""


class ClusterStartTimeoutError(ClusterSetupError, TimeoutError):
    """A scheduler or worker process did not become ready within the timeout."""


class EngineNotInstalledError(ClusterSetupError, ImportError):
    """The engine's package is missing; the message names ``pip install unified_map[extra]``."""


class SchedulerFileError(ClusterSetupError, ValueError):
    """A scheduler file that cannot be used: not JSON, no engine or address, another engine's."""


class SchedulerFileTimeoutError(ClusterSetupError, TimeoutError):
    """No usable scheduler file appeared at the path within the timeout; the message names it."""


class EnvironmentMismatchWarning(UserWarning):
    """A worker runs another Python, cloudpickle or engine version than this process (the
    classic cause of cryptic unpickling errors on a cluster); the message names the worker."""
