"""Reports: :class:`WorkerInfo`, :class:`ClusterStatus` and the one table formatter
(:func:`format_table`), which the benchmark report and the command line use too.

Examples
--------
>>> from cluster_setup.status import format_table
>>> print("\\n".join(format_table([("name", "n"), ("a", "10"), ("bb", "2")], right_aligned={1})))
name   n
a     10
bb     2
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .environment import differences

__all__ = ["WorkerInfo", "ClusterStatus", "format_table", "format_bytes"]


def format_table(rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()) -> list[str]:
    """Align ``rows`` of text cells in columns two spaces apart; return the lines.

    Parameters
    ----------
    rows : sequence of sequences of str
        The rows, the header first if there is one; every row has the same number of cells.
    right_aligned : collection of int, default ()
        Indices of the columns to align on the right (numbers); the others align on the left.

    Returns
    -------
    list of str
        One line per row, without trailing spaces.

    Examples
    --------
    >>> for line in format_table([("backend", "seconds"), ("threads", "1.5"), ("dask", "12.25")],
    ...                          right_aligned={1}):
    ...     print(line)
    backend  seconds
    threads      1.5
    dask       12.25
    >>> format_table([])
    []
    """
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def format_bytes(n: int | float | None) -> str:
    """Human-readable size in powers of 1000, as engines print memory limits.

    Examples
    --------
    >>> format_bytes(2_000_000_000), format_bytes(512), format_bytes(None)
    ('2.00 GB', '512 B', '-')
    """
    if not n:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class WorkerInfo:
    """One worker as the scheduler sees it.

    Examples
    --------
    >>> WorkerInfo("tcp://127.0.0.1:40001", cores=2).memory is None
    True
    """

    address: str
    cores: int
    memory: int | None = None
    name: str = ""
    #: Its Python, engine and cloudpickle versions (:mod:`.environment`), when known.
    versions: dict[str, str] | None = None


@dataclass
class ClusterStatus:
    """What ``report_status()`` found; ``str()`` is an aligned table.

    Examples
    --------
    >>> status = ClusterStatus("dask", "tcp://127.0.0.1:8786", True,
    ...                        [WorkerInfo("tcp://127.0.0.1:40001", 1, 2 * 10**9, "w-0")])
    >>> status.total_cores
    1
    >>> print(status)  # doctest: +NORMALIZE_WHITESPACE
    dask cluster at tcp://127.0.0.1:8786: connected
    worker                 name  cores  memory
    tcp://127.0.0.1:40001  w-0       1  2.00 GB
    total: 1 worker                  1  2.00 GB
    >>> status.lost = [WorkerInfo("10.0.0.7:41000", 2, name="node-7")]
    >>> str(status).splitlines()[-1]
    'lost: 10.0.0.7:41000 (node-7)'
    """

    engine: str
    scheduler_address: str | None
    connected: bool
    workers: list[WorkerInfo] = field(default_factory=list)
    dashboard_link: str | None = None
    #: ``(role, pid, scheduler address)`` of the processes this setup started and still runs.
    started: list[tuple[str, int, str]] = field(default_factory=list)
    #: Why a connection exists but is not connected (the scheduler does not answer), if so.
    problem: str | None = None
    #: This process's Python, engine and cloudpickle versions, when the workers' are known.
    driver_versions: dict[str, str] | None = None
    #: Workers the scheduler still lists but lost (Ray's dead nodes, Spark's DEAD workers).
    lost: list[WorkerInfo] = field(default_factory=list)

    @property
    def mismatched(self) -> dict[str, list[str]]:
        """Worker address -> what differs from the driver (``"python 3.10.12 (driver
        3.11.7)"``...), for each worker whose versions differ.

        Examples
        --------
        >>> driver = {"python": "3.11.7", "distributed": "2026.8.0"}
        >>> status = ClusterStatus("dask", "tcp://127.0.0.1:8786", True, [
        ...     WorkerInfo("tcp://127.0.0.1:1", 1, versions=driver),
        ...     WorkerInfo("tcp://127.0.0.1:2", 1, versions={**driver, "python": "3.10.12"}),
        ... ], driver_versions=driver)
        >>> status.mismatched
        {'tcp://127.0.0.1:2': ['python 3.10.12 (driver 3.11.7)']}
        >>> print(status)  # doctest: +NORMALIZE_WHITESPACE
        dask cluster at tcp://127.0.0.1:8786: connected
        worker             name  cores  memory  python     distributed
        tcp://127.0.0.1:1           1  -       3.11.7     2026.8.0
        tcp://127.0.0.1:2           1  -       3.10.12 !  2026.8.0
        total: 2 workers            2  -
        driver: python 3.11.7, distributed 2026.8.0
        MISMATCH tcp://127.0.0.1:2: python 3.10.12 (driver 3.11.7)
        """
        if not self.driver_versions:
            return {}
        found = {}
        for worker in self.workers:
            if worker.versions is not None:
                different = differences(self.driver_versions, worker.versions)
                if different:
                    found[worker.address] = different
        return found

    @property
    def total_cores(self) -> int:
        """Sum of the workers' cores (threads, for dask)."""
        return sum(worker.cores for worker in self.workers)

    @property
    def total_memory(self) -> int:
        """Sum of the workers' memory limits in bytes (0 when unknown)."""
        return sum(worker.memory or 0 for worker in self.workers)

    def __str__(self) -> str:
        if self.connected:
            lines = [f"{self.engine} cluster at {self.scheduler_address}: connected"]
        elif self.scheduler_address:
            lines = [f"{self.engine} cluster at {self.scheduler_address}: scheduler unreachable"]
            if self.problem:
                lines.append(self.problem)
        else:
            lines = [
                f"{self.engine}: not connected "
                f"(connect with cluster_setup.{self.engine}.connect_to_scheduler(address))"
            ]
        if self.dashboard_link:
            lines.append(f"dashboard: {self.dashboard_link}")
        if self.connected:
            # version columns only when the workers' versions are known
            shown = list(self.driver_versions or ())
            if not any(w.versions is not None for w in self.workers):
                shown = []
            rows = [("worker", "name", "cores", "memory", *shown)]
            for w in self.workers:
                cells = []
                for key in shown:
                    value = (w.versions or {}).get(key)
                    flag = " !" if value not in (None, self.driver_versions[key]) else ""
                    cells.append((value or "?") + flag)
                rows.append((w.address, w.name, str(w.cores), format_bytes(w.memory), *cells))
            plural = "" if len(self.workers) == 1 else "s"
            rows.append(
                (
                    f"total: {len(self.workers)} worker{plural}",
                    "",
                    str(self.total_cores),
                    format_bytes(self.total_memory),
                    *[""] * len(shown),
                )
            )
            lines += format_table(rows, right_aligned={2})
            if shown:
                lines.append(
                    "driver: " + ", ".join(f"{k} {v}" for k, v in self.driver_versions.items())
                )
                for address, different in self.mismatched.items():
                    lines.append(f"MISMATCH {address}: {'; '.join(different)}")
        for w in self.lost:
            lines.append(f"lost: {w.address}" + (f" ({w.name})" if w.name else ""))
        if self.started:
            lines.append("started by this process:")
            rows = [("role", "pid", "scheduler")] + [(r, str(p), a) for r, p, a in self.started]
            lines += ["  " + line for line in format_table(rows, right_aligned={1})]
        return "\n".join(lines)
