"""Loader of our own ``cluster_setup`` package, whatever the top-level name
``cluster_setup`` means where the user runs.

A user's own ``cluster_setup.py`` in the working directory (a common name on HPC) comes
first on ``sys.path`` and takes the top-level name. ``unified_map`` code therefore imports
its cluster code as ``from unified_map._cluster import cluster_setup``: the canonical module
when the name ``cluster_setup`` finds our package (the folder next to ``unified_map``), else
our package loaded from that folder under the private name ``unified_map._cluster_setup``,
leaving the user's ``import cluster_setup`` to give them their own module.

Examples
--------
>>> import cluster_setup as top_level
>>> from unified_map._cluster import cluster_setup
>>> cluster_setup is top_level, cluster_setup.dask.engine
(True, 'dask')
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["cluster_setup", "PACKAGE_DIR", "load_cluster_setup"]

#: Our ``cluster_setup`` package: the folder next to the ``unified_map`` package.
PACKAGE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster_setup"
)
_PRIVATE_NAME = "unified_map._cluster_setup"


def _is_ours(spec) -> bool:
    if spec is None or not spec.submodule_search_locations or not spec.origin:
        return False
    found = os.path.dirname(os.path.realpath(spec.origin))
    return found == os.path.realpath(PACKAGE_DIR)


def load_cluster_setup() -> ModuleType:
    """Our ``cluster_setup`` package: the module ``import cluster_setup`` gives when that
    name finds our package, else our package loaded under a private name.

    Examples
    --------
    >>> load_cluster_setup().dask.engine
    'dask'
    """
    try:
        spec = importlib.util.find_spec("cluster_setup")
    except (ImportError, ValueError):  # a module without a spec took the name
        spec = None
    if _is_ours(spec):
        return importlib.import_module("cluster_setup")
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    private = importlib.util.spec_from_file_location(
        _PRIVATE_NAME,
        os.path.join(PACKAGE_DIR, "__init__.py"),
        submodule_search_locations=[PACKAGE_DIR],
    )
    module = importlib.util.module_from_spec(private)
    sys.modules[_PRIVATE_NAME] = module
    try:
        private.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PRIVATE_NAME]
        raise
    return module


cluster_setup = load_cluster_setup()
