"""How items are grouped into tasks: fixed sizes, or sizes learned while the map runs.

Automatic sizing follows joblib's auto-batching idea: time each chunk where it ran and grow
the next one toward a target duration, so that a tiny function does not pay a process
round-trip per item while a slow one still spreads over every worker. Chunks are cut lazily
from any iterable, so generators are never materialised.

The cost per item of each function is remembered between calls: research scripts call
``parallel`` on the same function in a loop, and only the first call needs to probe with
one-item chunks (a probe costs a full round-trip, about 20 ms on a dask cluster).
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import sys
import threading
import types
from collections.abc import Callable, Hashable, Iterator
from typing import Any

#: Aim for chunks that compute this long: long enough to hide a round-trip to a worker
#: (0.1-2 ms locally, a few ms on a cluster), short enough to balance load and stream results.
TARGET_CHUNK_SECONDS = 0.1
#: With a known number of items, at least this many chunks per worker, for load balance; and
#: toward the end, chunks shrink so that the items left still make this many per worker
#: ("guided" scheduling), so that one slow chunk does not finish long after the others.
MIN_CHUNKS_PER_WORKER = 4
#: Guided shrinking stops at chunks that compute this long: below it, the round-trip of
#: another chunk costs more than the imbalance it would save.
MIN_CHUNK_SECONDS = 0.01
#: Without a known length, never cut more than this many items at once, so a fast function
#: over an endless generator keeps a small, flat memory footprint.
MAX_UNSIZED_CHUNK = 10_000
#: Nor more than this many bytes of pickled payload per chunk, when payload size is known
#: (the default; each backend sets its own, see ``Backend.max_chunk_bytes``).
MAX_CHUNK_BYTES = 32 * 2**20
#: A first item this big (by :func:`sys.getsizeof`) caps the first chunk's size by itself.
FIRST_ITEM_BYTES = 64 * 2**10
#: Pickled payload of the chunks submitted and not yet finished, at most (but always at least
#: one chunk): on a cluster of a thousand slots, chunks in flight would otherwise hold the
#: caller's memory many gigabytes deep.
MAX_BYTES_IN_FLIGHT = 512 * 2**20
#: How many functions' costs are remembered (least recently used ones are forgotten).
REMEMBERED_FUNCTIONS = 256

_remembered_costs: collections.OrderedDict[Hashable, float] = collections.OrderedDict()
_remembered_lock = threading.Lock()


def cost_key(func: Callable) -> Hashable | None:
    """What identifies "the same function" across calls, without keeping anything of the
    user's alive: a code object when there is one (so a lambda re-created on each loop
    iteration is still recognised, and a ``functools.partial`` binding a 400 MB model is
    remembered by its function's code, not by the partial), else names (for builtins, whose
    bound ``__self__`` may be a big dict).

    Examples
    --------
    >>> import functools
    >>> def twice(x):
    ...     return 2 * x
    >>> cost_key(twice) is twice.__code__
    True
    >>> cost_key(functools.partial(twice)) is twice.__code__
    True
    >>> cost_key({}.get)
    ('builtin_function_or_method', 'dict.get')
    """
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if code is None:  # an instance of a class with a Python __call__
        call = getattr(type(func), "__call__", None)  # noqa: B004 - the method, not a test
        code = getattr(call, "__code__", None)
    if isinstance(code, types.CodeType):
        return code
    name = getattr(func, "__qualname__", None)
    if not isinstance(name, str):
        return None
    return (type(func).__qualname__, name)


def recall_seconds_per_item(key: Hashable | None) -> float | None:
    """The cost per item remembered for the function of :func:`cost_key` ``key``, if any.

    Examples
    --------
    >>> recall_seconds_per_item(None) is None
    True
    """
    return _recall(key)


def _recall(key: Hashable | None) -> float | None:
    if key is None:
        return None
    with _remembered_lock:
        seconds = _remembered_costs.get(key)
        if seconds is not None:
            _remembered_costs.move_to_end(key)
        return seconds


def _remember(key: Hashable | None, seconds_per_item: float) -> None:
    if key is None:
        return
    with _remembered_lock:
        _remembered_costs[key] = seconds_per_item
        _remembered_costs.move_to_end(key)
        while len(_remembered_costs) > REMEMBERED_FUNCTIONS:
            _remembered_costs.popitem(last=False)


class ChunkSizer:
    """Decide how many items the next chunk gets.

    Parameters
    ----------
    chunksize : int or None
        A fixed size, always respected; ``None`` learns the size from timings.
    n_items : int or None
        Total number of items if known (``len`` of the input), else ``None``.
    n_workers : int
        How many workers share the work.
    target_seconds : float
        Duration a chunk should compute for once the cost per item is known.
    key : hashable, optional
        :func:`cost_key` of the function: its cost per item measured by an earlier call is
        used from the first chunk on, and this call's measurements are remembered.
    balance : bool
        Whether chunks are capped and shrunk so that every worker gets several (load
        balance). A backend that runs chunks one after another in the caller's thread
        (``serial``) gains nothing from it and only pays more chunks.
    max_bytes : int
        Largest pickled payload per chunk, once the payload size per item is known.
    chunks_per_worker : int
        With ``balance``, how many chunks each worker should get at least: more balance
        uneven items better, fewer cost less where a task is dear (Spark).
    guided : bool
        With ``balance``, chunks shrink as the input runs out (guided self-scheduling), so
        that the last ones finish together; False keeps them equal, for engines that run
        chunks in jobs that end with their slowest task (Spark), where a tail of small
        chunks costs a job round trip each.

    Examples
    --------
    >>> sizer = ChunkSizer(None, n_items=100_000, n_workers=2)
    >>> sizer.next_size()          # nothing measured yet: probe with one item
    1
    >>> sizer.observe(1, 1e-6)     # an item costs about a microsecond
    >>> sizer.next_size()          # capped so that each of 2 workers gets 4 chunks
    12500
    """

    def __init__(
        self,
        chunksize: int | None,
        n_items: int | None,
        n_workers: int,
        target_seconds: float = TARGET_CHUNK_SECONDS,
        key: Hashable | None = None,
        balance: bool = True,
        max_bytes: int = MAX_CHUNK_BYTES,
        chunks_per_worker: int = MIN_CHUNKS_PER_WORKER,
        guided: bool = True,
    ):
        self.fixed = chunksize
        self.balance = balance
        self.max_bytes = max_bytes
        self.target_seconds = target_seconds
        self.n_items = n_items
        self.n_workers = n_workers
        self.handed_out = 0
        self.chunks_per_worker = chunks_per_worker
        self.guided = guided
        if n_items is None:
            self.cap = MAX_UNSIZED_CHUNK
        elif not balance:
            self.cap = max(1, n_items)
        else:
            self.cap = max(1, math.ceil(n_items / (chunks_per_worker * n_workers)))
        self.key = key
        # A remembered cost counts as one measured item: the first real chunk outweighs it, so
        # a function that became slower (bigger inputs) is corrected at once.
        remembered = _recall(key)
        self._items_timed = 0 if remembered is None else 1
        self._seconds = 0.0 if remembered is None else remembered
        self._items_weighed = 0
        self._bytes = 0
        self._first_item_bytes = 0  # an estimate, until a pickled chunk has been weighed

    @property
    def knows_sizes(self) -> bool:
        """Whether chunk sizes come from a fixed size or a measurement, not from probing."""
        return self.fixed is not None or self._items_timed > 0

    def next_size(self) -> int:
        """Number of items to put in the next chunk."""
        if self.fixed is not None:
            return self.fixed
        if self._items_timed == 0:
            return 1
        cap = self.cap
        if self._bytes:
            cap = min(cap, max(1, int(self.max_bytes * self._items_weighed / self._bytes)))
        elif self._first_item_bytes:
            # a remembered cost sizes the first chunk before any chunk was weighed
            cap = min(cap, max(1, self.max_bytes // self._first_item_bytes))
        seconds_per_item = self._seconds / self._items_timed
        if seconds_per_item <= 0:
            return cap
        size = self.target_seconds / seconds_per_item
        if self.n_items is not None and self.balance and self.guided:
            remaining = self.n_items - self.handed_out
            guided = remaining / (self.chunks_per_worker * self.n_workers)
            size = min(size, max(guided, MIN_CHUNK_SECONDS / seconds_per_item))
        return max(1, min(cap, math.ceil(size)))

    def observe(self, n_items: int, seconds: float) -> None:
        """Record that a chunk of ``n_items`` computed in ``seconds`` where it ran."""
        self._items_timed += n_items
        self._seconds += seconds
        _remember(self.key, self._seconds / self._items_timed)

    def weigh_first_item(self, item: Any) -> None:
        """Estimate the payload of each item from the first one, when it is big and flat
        (bytes, a numpy array: :func:`sys.getsizeof` counts their data), so that the first
        chunk keeps to ``max_bytes`` even when a remembered cost sizes it.

        Examples
        --------
        >>> sizer = ChunkSizer(None, n_items=40, n_workers=2, max_bytes=4 * 2**20)
        >>> sizer.observe(1, 1e-3)
        >>> sizer.weigh_first_item(bytes(3 * 2**19))  # 1.5 MiB items: two fit in 4 MiB
        >>> sizer.next_size()
        2
        """
        size = sys.getsizeof(item, 0)
        if size >= FIRST_ITEM_BYTES:  # small or nested items are weighed with the first chunk
            self._first_item_bytes = size

    def observe_bytes(self, n_items: int, n_bytes: int) -> None:
        """Record the pickled size of a chunk of ``n_items`` (process and cluster backends)."""
        self._items_weighed += n_items
        self._bytes += n_bytes


def iter_chunks(items: Iterator | list | tuple, sizer: ChunkSizer) -> Iterator[tuple[int, list]]:
    """Cut ``items`` lazily into ``(index of first item, list of items)`` pairs.

    A list or tuple is sliced (a copy of pointers, about ten times faster than pulling items
    one by one); any other input is read through its iterator. Slices of a tuple are tuples.

    Examples
    --------
    >>> list(iter_chunks(iter("abcde"), ChunkSizer(2, None, 1)))
    [(0, ['a', 'b']), (2, ['c', 'd']), (4, ['e'])]
    >>> list(iter_chunks([1, 2, 3], ChunkSizer(2, None, 1)))
    [(0, [1, 2]), (2, [3])]
    """
    if type(items) in (list, tuple):  # not subclasses: their slicing may differ
        if items:
            sizer.weigh_first_item(items[0])
        yield from _slice_chunks(items, sizer)
        return
    first = list(itertools.islice(items, 1))
    if not first:
        return
    sizer.weigh_first_item(first[0])
    items = itertools.chain(first, items)
    start = 0
    while True:
        chunk = list(itertools.islice(items, sizer.next_size()))
        if not chunk:
            return
        sizer.handed_out += len(chunk)
        yield start, chunk
        start += len(chunk)


def _slice_chunks(items: list | tuple, sizer: ChunkSizer) -> Iterator[tuple[int, list | tuple]]:
    start = 0
    # len() is read at every step, as a list iterator does: a list that grows while a lazy
    # imap runs over it is followed the same way the builtin map would follow it.
    while start < len(items):
        size = sizer.next_size()
        # The whole input in one chunk (serial, or a cost already known): no copy is needed,
        # since chunks are only read.
        chunk = items if start == 0 and size >= len(items) else items[start : start + size]
        sizer.handed_out += len(chunk)
        yield start, chunk
        start += len(chunk)
