"""The backend registry: names, where each backend lives, the pip extra that provides it,
and the warm instances kept between calls.

Backends are imported only when first asked for, so ``import unified_map`` never imports an
engine. A missing engine becomes :class:`~unified_map.errors.BackendNotInstalledError` naming
``pip install unified_map[extra]``; an unknown name becomes
:class:`~unified_map.errors.UnknownBackendError` listing the valid ones.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass

from unified_map.backends.base import Backend
from unified_map.errors import BackendNotInstalledError, UnknownBackendError

__all__ = [
    "Backend",
    "register_backend",
    "available_backends",
    "backend_class",
    "acquire_backend",
    "release_backend",
    "discard_backend",
    "close_backend",
    "is_warm",
    "shutdown_all",
]


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives (``"package.module:Class"``), the module it needs, its pip extra."""

    target: str
    requires: str | None = None
    extra: str | None = None


# Kept sorted by name; ``requires`` is checked with find_spec, which imports nothing.
_REGISTRY: dict[str, BackendSpec] = {
    "auto": BackendSpec("unified_map.backends.auto:AutoBackend"),
    "dask": BackendSpec("unified_map.backends.dask:DaskBackend", "distributed", "dask"),
    "futures": BackendSpec("unified_map.backends.futures:FuturesBackend"),
    "joblib": BackendSpec("unified_map.backends.joblib:JoblibBackend", "joblib", "joblib"),
    "multiprocessing": BackendSpec("unified_map.backends.multiprocessing:MultiprocessingBackend"),
    "ray": BackendSpec("unified_map.backends.ray:RayBackend", "ray", "ray"),
    "serial": BackendSpec("unified_map.backends.serial:SerialBackend"),
    "spark": BackendSpec("unified_map.backends.spark:SparkBackend", "pyspark", "spark"),
    "threads": BackendSpec("unified_map.backends.threads:ThreadsBackend"),
}

#: Used when no backend is named and no cluster connection is active: this process for a
#: cheap map, the warm process pool (:data:`POOL_BACKEND`) for a dear one.
DEFAULT_LOCAL_BACKEND = "auto"
#: The process pool ``auto`` hands dear maps to.
POOL_BACKEND = "multiprocessing"


def register_backend(
    name: str, target: str, *, requires: str | None = None, extra: str | None = None
) -> None:
    """Make a third-party backend available under ``name``.

    Parameters
    ----------
    name : str
        The name users pass as ``backend=``.
    target : str
        ``"package.module:ClassName"`` of a :class:`~unified_map.backends.base.Backend`
        subclass; imported on first use.
    requires : str, optional
        Top-level module the backend needs, checked by :func:`available_backends`.
    extra : str, optional
        Install hint shown when ``requires`` is missing: ``pip install unified_map[extra]``.

    Examples
    --------
    >>> import unified_map as um
    >>> um.register_backend("inline", "unified_map.backends.serial:SerialBackend")
    >>> um.parallel(abs, [-1, -2], backend="inline")
    [1, 2]
    """
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    _REGISTRY[name] = BackendSpec(target, requires, extra)


def available_backends() -> dict[str, bool]:
    """Every known backend name, mapped to whether its engine is installed.

    Examples
    --------
    >>> import unified_map as um
    >>> backends = um.available_backends()
    >>> backends["serial"], backends["threads"]
    (True, True)
    """
    return {name: _is_installed(spec) for name, spec in sorted(_REGISTRY.items())}


def _is_installed(spec: BackendSpec) -> bool:
    return spec.requires is None or importlib.util.find_spec(spec.requires) is not None


def _spec(name: str) -> BackendSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in sorted(_REGISTRY))
        raise UnknownBackendError(
            f"unknown backend {name!r}; valid backends are: {valid}"
        ) from None


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered under ``name``.

    Raises
    ------
    UnknownBackendError
        ``name`` is not registered (the message lists the valid names).
    BackendNotInstalledError
        The engine behind it is not installed (the message names the pip extra).
    """
    spec = _spec(name)
    module_name, class_name = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install unified_map[{spec.extra}]" if spec.extra else "install it"
        missing = exc.name or spec.requires or module_name
        raise BackendNotInstalledError(
            f"backend {name!r} needs the package {missing!r}, which is not installed: {hint}"
        ) from exc
    return getattr(module, class_name)


# Warm backends, one per (name, size): a research script calling parallel() in a loop must not
# pay pool start-up on every call. Maps come from several threads, so looking a backend up and
# counting the map as its user happen under one lock: a backend is never closed between the
# two. A backend replaced by another size is closed when its last map ends (retired).
_lock = threading.Lock()
_warm: dict[tuple[str, int], Backend] = {}
_users: dict[int, int] = {}  # id(backend) -> maps using it now
_retired: dict[int, Backend] = {}  # replaced, closed when their last map ends
_transient: set[int] = set()  # bound to a cluster connection for one map, never kept warm


def acquire_backend(name: str, n_workers: int | None = None) -> Backend:
    """The backend a map on ``name`` runs on, counted as in use until
    :func:`release_backend`.

    A local pool is kept warm per size; ``n_workers=None`` means every core each time it is
    asked. A cluster backend is bound to the active connection of its engine when there is
    one (never kept warm: the connection is), else to a private local cluster kept warm;
    ``auto`` makes its decision per map. Such per-map instances are shut down at release.

    Examples
    --------
    >>> backend = acquire_backend("threads", 2)
    >>> backend.n_workers, is_warm("threads")
    (2, True)
    >>> release_backend(backend)
    """
    cls = backend_class(name)
    per_map = cls.per_map_instance(n_workers)
    with _lock:
        if per_map is not None:
            backend = per_map
            _transient.add(id(backend))
        else:
            key = (name, cls.size_for(n_workers))
            backend = _warm.get(key)
            if backend is None:
                for other in [k for k in _warm if k[0] == name]:
                    _retire(_warm.pop(other))
                backend = _warm[key] = cls(key[1])
                _run_exit_hook_first()
        _users[id(backend)] = _users.get(id(backend), 0) + 1
    return backend


def release_backend(backend: Backend) -> None:
    """A map is done with ``backend``; close it if it was replaced meanwhile."""
    with _lock:
        remaining = _users.get(id(backend), 1) - 1
        if remaining:
            _users[id(backend)] = remaining
            return
        _users.pop(id(backend), None)
        closing = _retired.pop(id(backend), None)
        if id(backend) in _transient:
            _transient.discard(id(backend))
            closing = backend
    if closing is not None:
        closing.shutdown()


def _retire(backend: Backend) -> None:
    # Called with _lock held.
    if _users.get(id(backend)):
        _retired[id(backend)] = backend
    else:
        backend.shutdown()


def discard_backend(backend: Backend, *, abort: bool = False) -> None:
    """Forget a warm backend (it lost a worker, or the user pressed Ctrl-C) and stop it;
    ``abort`` stops its running tasks at once."""
    with _lock:
        for key, warm in list(_warm.items()):
            if warm is backend:
                del _warm[key]
        _retired.pop(id(backend), None)
    backend.shutdown(wait=not abort, cancel_futures=abort)


def close_backend(name: str) -> bool:
    """Close the warm instances of ``name``; the next map starts afresh.

    Returns whether there was one. Benchmarks use it to time a backend's real start-up. A
    map still running on one keeps it until it ends.

    Examples
    --------
    >>> release_backend(acquire_backend("threads", 1))
    >>> close_backend("threads"), close_backend("threads"), is_warm("threads")
    (True, False, False)
    """
    with _lock:
        keys = [key for key in _warm if key[0] == name]
        for key in keys:
            _retire(_warm.pop(key))
    return bool(keys)


def is_warm(name: str) -> bool:
    """Whether a warm instance of ``name`` is kept for the next map.

    Examples
    --------
    >>> is_warm("no-such-backend")
    False
    """
    with _lock:
        return any(key[0] == name for key in _warm)


def shutdown_all() -> None:
    """Close every warm backend; runs at interpreter exit."""
    with _lock:
        backends = list(_warm.values()) + list(_retired.values())
        _warm.clear()
        _retired.clear()
    for backend in backends:
        backend.shutdown()


def _run_exit_hook_first() -> None:
    # atexit runs the last registered hook first. multiprocessing registers its own hook,
    # which tears pools down through the "dead worker" path, when a pool is first made: ours
    # must come after it so that it runs before it, or a script's stderr ends with "Exception
    # ignored in ... Pool.__del__". Called with _lock held, after a backend was made.
    atexit.unregister(shutdown_all)
    atexit.register(shutdown_all)


atexit.register(shutdown_all)


def _forget_parents_backends() -> None:
    # A forked child inherits the dicts but not the parent's pool threads: start afresh.
    global _lock
    _warm.clear()
    _users.clear()
    _retired.clear()
    _transient.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_backends)
