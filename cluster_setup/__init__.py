"""Start schedulers and workers of a cluster engine, connect to one, and report its state.

The objects ``cluster_setup.dask`` (and, in later releases, ``spark`` and ``ray``) are
created at import; users call their methods and never instantiate the classes. Connecting
makes that connection the *active* one, which ``unified_map.parallel`` uses when no backend
is named; with none active, the cluster the environment variable ``UNIFIED_MAP_SCHEDULER``
names, if set (:func:`connect_from_environment`). No engine is imported until one of these
objects is used.

Inside the package every import is relative, so that a user's own module named
``cluster_setup`` (in the working directory, say) cannot break it.

Examples
--------
>>> import cluster_setup
>>> cluster_setup.dask.engine
'dask'
"""

from __future__ import annotations

# The engine modules carry a leading underscore so that importing one never replaces the
# object of that name.
from . import errors as _errors
from ._dask import DaskSetup
from ._ray import RaySetup
from ._spark import SparkSetup
from .connection import active_connection
from .errors import *  # noqa: F403 - the error types, listed in its __all__
from .hpc import connect_from_environment
from .status import ClusterStatus

#: Dask: ``start_scheduler``, ``start_worker``, ``connect_to_scheduler``, ``report_status``.
dask = DaskSetup()
#: Ray: the same four verbs on Ray head and worker nodes (``ray start``, ``ray.init``).
ray = RaySetup()
#: Spark: the same four verbs on a standalone master and workers (pyspark's own daemons).
spark = SparkSetup()

__all__ = [
    "dask",
    "ray",
    "spark",
    "active_connection",
    "connect_from_environment",
    "ClusterStatus",
    *_errors.__all__,
]
