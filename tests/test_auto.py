"""``backend="auto"``: in this process while the map is cheap, on the warm process pool once
it is not, through the active connection when there is one. Results are checked, never
timings: where the work ran is seen from the process ids."""

from __future__ import annotations

import os
import time

import unified_map as um


def own_pid(_):
    return os.getpid()


def slow_pid(_):
    time.sleep(0.02)
    return os.getpid()


def test_a_cheap_map_runs_in_this_process():
    assert set(um.parallel(own_pid, range(1000), backend="auto")) == {os.getpid()}
    assert um.parallel(pow, [2, 3], [5, 2], backend="auto") == [32, 9]


def test_a_dear_map_moves_to_the_process_pool():
    pids = um.parallel(slow_pid, range(40), backend="auto")
    assert len(pids) == 40
    # it started here, and went to the pool once it had cost a pool's start-up
    assert pids[0] == os.getpid()
    assert set(pids[-10:]).isdisjoint({os.getpid()})


def test_a_cost_remembered_from_an_earlier_call_goes_to_the_pool_at_once():
    def dear(x):
        time.sleep(0.02)
        return os.getpid()

    um.parallel(dear, range(20), backend="auto")  # learns the cost
    pids = um.parallel(dear, range(20), backend="auto")
    assert os.getpid() not in pids


def test_in_process_chunks_share_the_callers_globals():
    # The one difference from a pool, and the documented one: like the builtin map.
    seen = []
    um.parallel(seen.append, range(3), backend="auto")
    assert seen == [0, 1, 2]


def test_an_active_connection_is_used(dask_cluster, dask_connection):
    pids = set(um.parallel(own_pid, range(8), backend="auto", chunksize=1))
    assert pids <= dask_cluster.pids()


def test_an_error_keeps_its_type_and_note_in_either_place():
    def fail_on_5(x):
        if x == 5:
            raise KeyError(x)
        return x

    for n in (10, 400):
        try:
            um.parallel(fail_on_5, range(n), backend="auto")
        except KeyError as exc:
            assert "item 5 of the input: 5 (backend 'auto')" in "\n".join(exc.__notes__)
        else:
            raise AssertionError("no error")
