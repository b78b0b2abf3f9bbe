"""Scheduler files: how a scheduler tells workers and drivers on other nodes where it listens,
through a file on a filesystem they share (the HPC pattern: no address in the job script).

A scheduler file is a small JSON object written atomically (to a temporary file in the same
folder, then renamed) once the scheduler accepts connections::

    {"engine": "dask", "address": "tcp://node17:40123", "host": "node17", "pid": 4711,
     "job": "123456", "written": 1764000000.0}

``engine`` and ``address`` are what readers need; the rest says where it came from (``job`` is
the batch job's id, when there is one). An engine may add fields of its own; when they carry a
secret (Ray's token) the file is readable by its owner only (mode 0600). A file written by
``dask scheduler --scheduler-file`` (no ``engine``, ``"type": "Scheduler"``) reads as a dask one.

Examples
--------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "scheduler.json")
>>> write_scheduler_file(path, "dask", "tcp://127.0.0.1:8786")
>>> read_scheduler_file(path)["address"]
'tcp://127.0.0.1:8786'
>>> wait_for_scheduler_file(path, timeout=1, engine="spark")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
cluster_setup.errors.SchedulerFileError: scheduler file ... was written by a dask scheduler, ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from typing import Any

from .errors import SchedulerFileError, SchedulerFileTimeoutError

__all__ = [
    "write_scheduler_file",
    "read_scheduler_file",
    "wait_for_scheduler_file",
    "remove_scheduler_file",
    "batch_job_id",
]

#: Seconds a malformed file may stay malformed before it is an error (someone else's
#: non-atomic writer may be half-way through).
MALFORMED_GRACE_SECONDS = 2.0

#: Environment variables that hold the batch job's id, in the order they are looked up.
JOB_ID_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def batch_job_id() -> str | None:
    """The batch system's id of the job this process runs in (SLURM, PBS, LSF, SGE), if any.

    Examples
    --------
    >>> import os
    >>> os.environ["SLURM_JOB_ID"] = "42"
    >>> batch_job_id()
    '42'
    >>> del os.environ["SLURM_JOB_ID"]
    """
    for name in JOB_ID_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def write_scheduler_file(
    path: str,
    engine: str,
    address: str,
    extra: dict[str, Any] | None = None,
    secret: bool = False,
) -> None:
    """Write the scheduler file at ``path`` atomically: readers never see half a file.

    Parameters
    ----------
    path : str
        The file; its folder must exist (a shared filesystem, for workers on other nodes).
    engine, address : str
        The engine's name and the address workers and drivers use.
    extra : dict, optional
        More JSON fields (an engine's own).
    secret : bool, default False
        Whether ``extra`` holds a secret: the file is then readable by its owner only.
    """
    folder = os.path.dirname(os.path.abspath(path))
    document = {
        "engine": engine,
        "address": address,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": batch_job_id(),
        "written": time.time(),
        **(extra or {}),
    }
    handle, temporary = tempfile.mkstemp(prefix=".scheduler-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        if not secret:  # mkstemp made it 0600: the usual mode under the user's umask instead
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def remove_scheduler_file(path: str, address: str | None = None) -> None:
    """Remove the scheduler file at ``path``, if it still names ``address`` (when given): a
    newer scheduler's file is left alone. Harmless when it is gone."""
    if address is not None:
        try:
            if read_scheduler_file(path).get("address") != address:
                return
        except (OSError, SchedulerFileError):
            return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def read_scheduler_file(path: str) -> dict[str, Any]:
    """The contents of the scheduler file at ``path``, checked.

    Raises
    ------
    FileNotFoundError
        There is no file (yet).
    SchedulerFileError
        It is not a JSON object with a string ``engine`` and ``address``.
    """
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SchedulerFileError(
            f"scheduler file {path} is not valid JSON ({exc}); it starts with {text[:60]!r}"
        ) from None
    if not isinstance(document, dict):
        raise SchedulerFileError(f"scheduler file {path} holds no JSON object: {text[:60]!r}")
    if "engine" not in document and document.get("type") == "Scheduler":
        document["engine"] = "dask"  # written by dask's own `dask scheduler --scheduler-file`
    for key in ("engine", "address"):
        if not isinstance(document.get(key), str) or not document[key].strip():
            raise SchedulerFileError(
                f"scheduler file {path} has no {key!r} (a cluster_setup scheduler file holds "
                f"'engine' and 'address'); found keys: {sorted(document)}"
            )
    return document


def wait_for_scheduler_file(
    path: str,
    timeout: float,
    engine: str | None = None,
    job: str | None = None,
) -> dict[str, Any]:
    """Wait until the scheduler file at ``path`` exists and is usable, and return it.

    Parameters
    ----------
    path : str
        The file.
    timeout : float
        Seconds to wait for it.
    engine : str, optional
        The engine it must name.
    job : str, optional
        The batch job id it must carry: a file left over from another job is waited past,
        as if it were not there yet.

    Raises
    ------
    SchedulerFileTimeoutError
        No usable file appeared within ``timeout`` (a ``TimeoutError`` naming the path).
    SchedulerFileError
        The file names another engine, or stays malformed (a ``ValueError``).
    """
    deadline = time.monotonic() + timeout
    malformed_since: float | None = None
    why = "it does not exist"
    while True:
        try:
            document = read_scheduler_file(path)
        except FileNotFoundError:
            malformed_since, why = None, "it does not exist"
        except SchedulerFileError:
            now = time.monotonic()
            malformed_since = now if malformed_since is None else malformed_since
            if now - malformed_since >= MALFORMED_GRACE_SECONDS or now > deadline:
                raise
        except OSError as exc:
            raise SchedulerFileError(f"cannot read scheduler file {path}: {exc}") from exc
        else:
            if engine is not None and document["engine"] != engine:
                raise SchedulerFileError(
                    f"scheduler file {path} was written by a {document['engine']} scheduler, "
                    f"not a {engine} one"
                )
            if job is None or document.get("job") in (None, job):
                return document
            malformed_since = None
            why = f"it is left over from job {document.get('job')}, not this job ({job})"
        if time.monotonic() > deadline:
            raise SchedulerFileTimeoutError(
                f"no scheduler file at {path} within {timeout:g} s ({why}); is the scheduler "
                f"running, and is the folder shared with this node?"
            )
        time.sleep(0.1)
