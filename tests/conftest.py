"""Shared fixtures: the list of backends the contract suite runs on, and process hygiene.

Each entry of ``CONTRACT_TARGETS`` is one way of running the contract suite: a test id, the
backend name passed to ``parallel``, and optionally the name of a fixture that must be active
first (for example a connected cluster). Cluster fixtures live in ``tests/cluster_fixtures.py``
and start one real cluster per test session.
"""

from __future__ import annotations

import os

import pytest

from unified_map.backends import available_backends

pytest_plugins = ["tests.cluster_fixtures"]

LOCAL_BACKENDS = ["serial", "threads", "multiprocessing", "futures", "joblib", "auto"]

# test id -> (backend name, fixture to activate first or None)
CONTRACT_TARGETS: dict[str, tuple[str, str | None]] = {
    **{name: (name, None) for name in LOCAL_BACKENDS},
    "dask-local": ("dask", None),
    "dask-connected": ("dask", "dask_connection"),
    "ray-local": ("ray", None),
    "spark-local": ("spark", None),
    "spark-connected": ("spark", "spark_connection"),
}
# A Ray head and worker nodes on one machine stay on loopback only in a network namespace
# with nothing but lo: the connected contract runs there (tests/test_cluster_ray.py).
if os.environ.get("UNIFIED_MAP_RAY_NAMESPACE") == "1":
    CONTRACT_TARGETS["ray-connected"] = ("ray", "ray_connection")
    collect_ignore: list[str] = []
else:
    # Started by tests/test_cluster_ray.py in such a namespace; not collected here (its
    # module-level guard would show up as a skip).
    collect_ignore = ["ns_ray_cluster.py"]


@pytest.fixture(params=sorted(CONTRACT_TARGETS))
def backend(request) -> str:
    """The name of a backend to run a contract test on, with its cluster (if any) active.

    A backend whose engine is missing fails here rather than skipping: the README installs
    every engine the suite covers, so a missing one is a broken install.
    """
    name, needs = CONTRACT_TARGETS[request.param]
    assert available_backends()[name], f"backend {name!r} is not installed"
    if needs is not None:
        request.getfixturevalue(needs)
    return name
