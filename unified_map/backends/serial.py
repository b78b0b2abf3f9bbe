"""The ``serial`` backend: a plain loop in this process, the reference every backend matches."""

from __future__ import annotations

from unified_map.backends.base import Backend, completed_future


class SerialBackend(Backend):
    """Run each chunk right away in the calling thread; useful for debugging with pdb.

    Examples
    --------
    >>> SerialBackend().submit(max, [3, 7]).result()
    7
    """

    name = "serial"
    in_process = True
    balances_load = False
    runs_in_caller = True

    def __init__(self, n_workers: int | None = None):
        super().__init__(1)

    @classmethod
    def size_for(cls, n_workers):
        return 1  # one instance whatever size is asked for

    def submit(self, fn, /, *args, **kwargs):
        return completed_future(fn, *args)

    @property
    def max_in_flight(self) -> int:
        # Work is done at submit time: running ahead would only make imap less lazy.
        return 1
