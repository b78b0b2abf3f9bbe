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
    "get_backend",
    "close_backend",
    "discard_backend",
    "acquire_backend",
    "release_backend",
]


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives (``"package.module:Class"``), the module it needs, its pip extra."""

    target: str
    requires: str | None = None
    extra: str | None = None


# Kept sorted by name; ``requires`` is checked with find_spec, which imports nothing.
_REGISTRY: dict[str, BackendSpec] = {
    "dask": BackendSpec("unified_map.backends.dask:DaskBackend", "distributed", "dask"),
    "futures": BackendSpec("unified_map.backends.futures:FuturesBackend"),
    "joblib": BackendSpec("unified_map.backends.joblib:JoblibBackend", "joblib", "joblib"),
    "multiprocessing": BackendSpec("unified_map.backends.multiprocessing:MultiprocessingBackend"),
    "serial": BackendSpec("unified_map.backends.serial:SerialBackend"),
    "threads": BackendSpec("unified_map.backends.threads:ThreadsBackend"),
}

#: Used when no backend is named and no cluster connection is active.
DEFAULT_LOCAL_BACKEND = "multiprocessing"


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


# Warm backends, one per name: a research script calling parallel() in a loop must not pay
# pool start-up on every call. Guarded by a lock because maps may run from several threads.
_warm: dict[str, Backend] = {}
_warm_lock = threading.Lock()


def get_backend(name: str, n_workers: int | None = None) -> Backend:
    """The warm backend for ``name``, created on first use and resized when ``n_workers``
    changes.

    A backend replaced while a map still uses it (another thread asked for another size) is
    closed when that map ends, not under it.

    Examples
    --------
    >>> get_backend("threads", 2) is get_backend("threads", 2)
    True
    """
    cls = backend_class(name)
    with _warm_lock:
        backend = _warm.get(name)
        if backend is not None and n_workers is not None and backend.requested_workers != n_workers:
            _retire(_warm.pop(name))
            backend = None
        if backend is None:
            backend = _warm[name] = cls(n_workers)
        return backend


# How many maps are using each backend right now (by id), and the replaced ones to close
# once their last map ends. Guarded by _warm_lock.
_users: dict[int, int] = {}
_retired: dict[int, Backend] = {}


def acquire_backend(name: str, n_workers: int | None = None) -> Backend:
    """:func:`get_backend`, counted as in use until :func:`release_backend`."""
    backend = get_backend(name, n_workers)
    with _warm_lock:
        _users[id(backend)] = _users.get(id(backend), 0) + 1
    return backend


def release_backend(backend: Backend) -> None:
    """A map is done with ``backend``; close it if it was replaced meanwhile."""
    with _warm_lock:
        remaining = _users.get(id(backend), 1) - 1
        if remaining:
            _users[id(backend)] = remaining
            return
        _users.pop(id(backend), None)
        retired = _retired.pop(id(backend), None)
    if retired is not None:
        retired.close()


def _retire(backend: Backend) -> None:
    # Called with _warm_lock held.
    if _users.get(id(backend)):
        _retired[id(backend)] = backend
    else:
        backend.close()


def discard_backend(backend: Backend, *, abort: bool = False) -> None:
    """Forget a warm backend (it lost a worker, or the user pressed Ctrl-C) and stop it."""
    with _warm_lock:
        if _warm.get(backend.name) is backend:
            del _warm[backend.name]
        _retired.pop(id(backend), None)
    backend.abort() if abort else backend.close()


def close_backend(name: str) -> bool:
    """Close the warm instance of ``name``, if there is one; the next map starts afresh.

    Returns whether there was one. Benchmarks use it to time a backend's real start-up.

    Examples
    --------
    >>> _ = get_backend("threads", 1)
    >>> close_backend("threads"), close_backend("threads")
    (True, False)
    """
    with _warm_lock:
        backend = _warm.pop(name, None)
        if backend is not None:
            _retire(backend)
    return backend is not None


@atexit.register
def shutdown_all() -> None:
    """Close every warm backend; registered to run at interpreter exit."""
    with _warm_lock:
        backends = list(_warm.values()) + list(_retired.values())
        _warm.clear()
        _retired.clear()
    for backend in backends:
        backend.close()


def _forget_parents_backends() -> None:
    # A forked child inherits the dict but not the parent's pool threads: start afresh.
    global _warm_lock
    _warm.clear()
    _users.clear()
    _retired.clear()
    _warm_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_backends)
