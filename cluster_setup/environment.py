"""Environments: the Python, cloudpickle and engine versions a process runs, and how workers'
differ from the driver's (the classic cause of cryptic unpickling errors on a cluster).

:func:`environment_versions` runs on the driver and, shipped by reference (it needs only the
standard library once imported), on every worker; :func:`differences` compares the two.

Examples
--------
>>> driver = {"python": "3.11.7", "cloudpickle": "3.1.2", "distributed": "2026.8.0"}
>>> differences(driver, {**driver, "python": "3.10.12"})
['python 3.10.12 (driver 3.11.7)']
"""

from __future__ import annotations

import platform

__all__ = ["environment_versions", "differences", "COMPARED"]

#: What is compared between driver and workers, besides the engine's own package.
COMPARED = ("python", "cloudpickle")


def environment_versions(engine_package: str) -> dict[str, str]:
    """Python's version and those of cloudpickle and ``engine_package`` in this process
    (``"missing"`` when a package is not installed).

    Examples
    --------
    >>> versions = environment_versions("json")
    >>> sorted(versions), versions["python"] == platform.python_version()
    (['cloudpickle', 'json', 'python'], True)
    """
    import importlib
    import importlib.metadata

    found = {"python": platform.python_version()}
    for name in ("cloudpickle", engine_package):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            try:
                module = importlib.import_module(name)
            except ImportError:
                found[name] = "missing"
            else:
                found[name] = str(getattr(module, "__version__", platform.python_version()))
    return found


def differences(driver: dict[str, str], worker: dict[str, str]) -> list[str]:
    """What differs in ``worker``'s versions from ``driver``'s, as ``"name worker-version
    (driver driver-version)"`` phrases.

    Examples
    --------
    >>> differences({"python": "3.11.7"}, {"python": "3.11.7"})
    []
    >>> differences({"python": "3.11.7", "ray": "2.60.0"}, {"python": "3.11.7", "ray": "missing"})
    ['ray missing (driver 2.60.0)']
    """
    found = []
    for name, wanted in driver.items():
        have = worker.get(name)
        if have is not None and have != wanted:
            found.append(f"{name} {have} (driver {wanted})")
    return found
