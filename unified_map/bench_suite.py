"""The built-in workloads of ``unified-map bench``: what each one shows and how to build its input.

Each :class:`Workload` isolates one cost of running a map in parallel: per-item overhead
(``tiny``), speedup toward the core count (``cpu-bound``), the cost of moving data to the
workers and back (``payload``) and load balance (``uneven``). The functions are module-level
so that every backend, process pools and clusters included, can pickle them by reference.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Workload",
    "builtin_suite",
    "spin",
    "spin_count",
    "increment",
    "touch_payload",
    "CPU_ITEM_SECONDS",
    "UNEVEN_MEAN_SECONDS",
    "PAYLOAD_BYTES",
]

#: Seconds of CPU per item in the ``cpu-bound`` workload.
CPU_ITEM_SECONDS = 0.05
#: Mean seconds of CPU per item in the ``uneven`` workload.
UNEVEN_MEAN_SECONDS = 0.025
#: Size of each item of the ``payload`` workload.
PAYLOAD_BYTES = 10 * 2**20


@dataclass
class Workload:
    """One entry of the built-in suite: a name, what it shows, and how to build its input.

    Attributes
    ----------
    name : str
        What ``unified-map bench --workloads`` calls it.
    purpose : str
        The cost it isolates, printed above its table.
    func : callable
        The function mapped; module-level, so that every backend can pickle it.
    make_items : callable
        ``make_items(n)`` returns the ``n`` input items (may measure this machine first).
    default_items : int
        Items per map when ``--items`` is not given.

    Examples
    --------
    >>> tiny = builtin_suite()[0]
    >>> tiny.name, tiny.make_items(3), [tiny.func(x) for x in tiny.make_items(3)]
    ('tiny', [0, 1, 2], [1, 2, 3])
    """

    name: str
    purpose: str
    func: Callable
    make_items: Callable[[int], list]
    default_items: int


def spin(n: int) -> int:
    """CPU-bound work holding the GIL: a fixed amount of computation (not a fixed wall time,
    which threads would appear to parallelise).

    Examples
    --------
    >>> spin(4)
    6
    """
    return sum(range(n))


def increment(x):
    """The tiny item: ``x + 1``.

    Examples
    --------
    >>> increment(1)
    2
    """
    return x + 1


def touch_payload(payload):
    """Return a new payload of the same size (so the transfer goes both ways).

    Examples
    --------
    >>> touch_payload(b"abc")
    b'cba'
    """
    if isinstance(payload, bytes):
        return payload[::-1]
    return payload + 1


def spin_count(seconds: float) -> int:
    """How many :func:`spin` steps take about ``seconds`` of CPU on this machine (measured now).

    Measured in this thread's CPU time, not wall time: on a loaded machine the wall clock runs
    on while other processes hold the core, which would make the items shorter than asked.

    Examples
    --------
    >>> spin_count(0.01) >= 1
    True
    """
    n = 200_000
    while True:
        start = time.thread_time()
        spin(n)
        elapsed = time.thread_time() - start
        if elapsed > 0.02:
            return max(1, int(n * seconds / elapsed))
        n *= 4


def _payloads(n: int) -> list:
    try:
        import numpy
    except ImportError:
        return [bytes([i % 256]) * PAYLOAD_BYTES for i in range(n)]
    return [numpy.full(PAYLOAD_BYTES // 8, i, dtype=numpy.float64) for i in range(n)]


def _cpu_items(n: int) -> list[int]:
    return [spin_count(CPU_ITEM_SECONDS)] * n


def _uneven_items(n: int) -> list[int]:
    # Exponential durations (fixed seed): a few long items among many short ones.
    steps_per_second = spin_count(1.0)
    rng = random.Random(0)
    return [
        max(1, int(steps_per_second * min(rng.expovariate(1 / UNEVEN_MEAN_SECONDS), 0.2)))
        for _ in range(n)
    ]


def _range(n: int) -> list[int]:
    return list(range(n))


def builtin_suite() -> list[Workload]:
    """The workloads of ``unified-map bench``, in the order they run.

    Building the list measures nothing: a workload's input is made (and this machine's speed
    measured, for the CPU-bound ones) only when its ``make_items`` is called.

    Examples
    --------
    >>> [w.name for w in builtin_suite()]
    ['tiny', 'cpu-bound', 'payload', 'uneven']
    """
    return [
        Workload("tiny", "per-item overhead: x + 1", increment, _range, 20_000),
        Workload(
            "cpu-bound",
            f"speedup toward the core count: {CPU_ITEM_SECONDS * 1e3:.0f} ms of CPU per item",
            spin,
            _cpu_items,
            40,
        ),
        Workload(
            "payload",
            f"transfer cost: {PAYLOAD_BYTES // 2**20} MB arrays out and back",
            touch_payload,
            _payloads,
            16,
        ),
        Workload(
            "uneven",
            f"load balance: CPU time per item exponential, mean {UNEVEN_MEAN_SECONDS * 1e3:.0f} ms",
            spin,
            _uneven_items,
            40,
        ),
    ]
