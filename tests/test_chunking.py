"""Chunk sizing: fixed sizes are respected, automatic sizes follow the measured cost."""

from __future__ import annotations

import itertools
import time

import unified_map as um
from unified_map.chunking import MAX_UNSIZED_CHUNK, ChunkSizer, cost_key, iter_chunks


def test_fixed_size_never_changes():
    sizer = ChunkSizer(3, n_items=100, n_workers=2)
    sizer.observe(3, 100.0)
    assert sizer.next_size() == 3


def test_automatic_size_probes_with_one_item_first():
    assert ChunkSizer(None, n_items=10**6, n_workers=2).next_size() == 1


def test_tiny_items_grow_to_the_load_balance_cap():
    sizer = ChunkSizer(None, n_items=80_000, n_workers=2)
    sizer.observe(10, 1e-6)
    assert sizer.next_size() == 80_000 // (4 * 2)


def test_slow_items_stay_small_for_load_balance():
    sizer = ChunkSizer(None, n_items=40, n_workers=2, target_seconds=0.1)
    sizer.observe(2, 0.1)  # 50 ms per item
    assert sizer.next_size() == 2


def test_unsized_input_is_capped_to_keep_memory_flat():
    sizer = ChunkSizer(None, n_items=None, n_workers=2)
    sizer.observe(100, 1e-9)
    assert sizer.next_size() == MAX_UNSIZED_CHUNK


def test_big_payloads_shrink_chunks():
    sizer = ChunkSizer(None, n_items=None, n_workers=2)
    sizer.observe(1, 1e-6)
    sizer.observe_bytes(1, 16 * 2**20)  # 16 MiB per item: two items fill a chunk
    assert sizer.next_size() == 2


def test_payload_cap_is_the_one_given():
    sizer = ChunkSizer(None, n_items=None, n_workers=2, max_bytes=4 * 2**20)
    sizer.observe(1, 1e-6)
    sizer.observe_bytes(1, 2**20)  # 1 MiB per item
    assert sizer.next_size() == 4


def test_local_pools_get_smaller_payload_chunks_than_clusters(monkeypatch):
    import unified_map.mapping as mapping
    from unified_map.backends import backend_class

    assert backend_class("multiprocessing").max_chunk_bytes == 4 * 2**20
    sizes = []
    original = mapping.pack

    def spy(func, items):
        sizes.append(len(items))
        return original(func, items)

    monkeypatch.setattr(mapping, "pack", spy)
    item_bytes = 3 * 2**19  # 1.5 MiB
    payloads = [bytes([i]) * item_bytes for i in range(40)]
    # The first call probes len's cost; the second sizes its first chunk from the remembered
    # cost, before any chunk was weighed: the 4 MiB still hold from the first chunk on.
    for _ in range(2):
        sizes.clear()
        assert um.parallel(len, payloads, backend="multiprocessing") == [item_bytes] * 40
        # Load balance alone allows 40 / (4 x 2) = 5 items per chunk; 4 MiB allow 2.
        assert max(sizes) == 2 and sum(sizes) == 40


def test_a_backend_without_load_balance_takes_cheap_sized_input_in_one_chunk():
    sizer = ChunkSizer(None, n_items=100_000, n_workers=1, balance=False)
    sizer.observe(10, 1e-6)
    assert sizer.next_size() == 100_000  # no cap of 4 chunks per worker, no guided shrink
    slow = ChunkSizer(None, n_items=100, n_workers=1, target_seconds=0.1, balance=False)
    slow.observe(1, 0.05)
    assert slow.next_size() == 2  # still bounded by the target duration (progress, imap)


def test_lists_and_tuples_are_sliced_into_chunks():
    assert list(iter_chunks(list("abcde"), ChunkSizer(2, None, 1))) == [
        (0, ["a", "b"]),
        (2, ["c", "d"]),
        (4, ["e"]),
    ]
    assert list(iter_chunks((1, 2, 3), ChunkSizer(2, None, 1))) == [(0, (1, 2)), (2, (3,))]


def test_iter_chunks_is_lazy_and_numbers_items():
    source = itertools.count()
    chunks = iter_chunks(source, ChunkSizer(4, None, 1))
    assert next(chunks) == (0, [0, 1, 2, 3])
    assert next(chunks) == (4, [4, 5, 6, 7])
    assert next(source) == 8  # nothing was read beyond the chunks handed out


def test_imap_reads_a_bounded_distance_ahead_of_the_consumer():
    pulled = 0

    def source():
        nonlocal pulled
        for i in itertools.count():
            pulled = i + 1
            yield i

    results = um.imap(lambda x: x + 1, source(), backend="threads", n_workers=2)
    worst_lead = 0
    for consumed, value in enumerate(itertools.islice(results, 200_000), start=1):
        assert value == consumed
        worst_lead = max(worst_lead, pulled - consumed)
    results.close()
    # At most 2 * max_in_flight chunks of MAX_UNSIZED_CHUNK items are ever held.
    assert worst_lead <= 2 * 4 * MAX_UNSIZED_CHUNK


def test_slow_function_spreads_over_workers():
    # 8 items of 50 ms on 2 workers: automatic chunks must not put all of them on one worker.
    import threading

    names = um.parallel(
        lambda _: (time.sleep(0.05), threading.current_thread().name)[1],
        range(8),
        backend="threads",
        n_workers=2,
    )
    assert len(set(names)) == 2


def test_cost_of_a_function_is_remembered_across_calls():
    def body(x):
        return x

    first = ChunkSizer(None, n_items=10_000, n_workers=2, key=cost_key(body))
    assert first.next_size() == 1  # never seen: probe
    first.observe(100, 100 * 1e-6)
    again = ChunkSizer(None, n_items=10_000, n_workers=2, key=cost_key(body))
    assert again.next_size() == 10_000 // 8  # known to be cheap: big chunks from the start
    assert ChunkSizer(None, 10_000, 2, key=cost_key(lambda x: x)).next_size() == 1


def test_remembered_cost_is_corrected_by_the_first_measurement():
    def body(x):
        return x

    ChunkSizer(None, 1000, 2, key=cost_key(body)).observe(10, 10 * 1e-6)
    sizer = ChunkSizer(None, 1000, 2, key=cost_key(body))
    sizer.observe(4, 4 * 0.05)  # now 50 ms per item (bigger inputs)
    assert sizer.next_size() <= 3


def test_chunks_of_slow_items_shrink_toward_the_end():
    sizer = ChunkSizer(None, n_items=40, n_workers=2, target_seconds=0.1)
    sizer.observe(1, 0.025)  # 25 ms per item: 4 items reach the target
    sizes = [size for size in (len(chunk) for _, chunk in iter_chunks(iter(range(40)), sizer))]
    assert sum(sizes) == 40
    assert sizes[0] == 4 and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)


def test_chunks_of_tiny_items_do_not_shrink_into_many_round_trips():
    sizer = ChunkSizer(None, n_items=100_000, n_workers=2)
    sizer.observe(1000, 1000 * 1e-7)
    chunks = list(iter_chunks(iter(range(100_000)), sizer))
    assert len(chunks) == 8


def test_abandoned_imap_is_freed_at_once_without_the_cyclic_gc():
    import gc
    import weakref

    gc.disable()
    try:
        results = um.imap(lambda x: x, itertools.count(), backend="threads", chunksize=10)
        assert next(results) == 0
        chunks = weakref.ref(results._chunks)
        del results  # the generator's finally (which cancels the pending work) runs now
        assert chunks() is None
    finally:
        gc.enable()


def test_unguided_chunks_stay_equal_where_a_job_ends_with_its_slowest_task():
    # Spark's setting: two equal chunks per worker; the default shrinks them towards the end.
    def sizes(**options):
        sizer = ChunkSizer(None, n_items=40, n_workers=2, target_seconds=0.5, **options)
        sizer.observe(1, 0.05)  # 50 ms per item
        return [len(chunk) for _, chunk in iter_chunks(list(range(40)), sizer)]

    assert sizes(chunks_per_worker=2, guided=False) == [10, 10, 10, 10]
    guided = sizes()
    assert sum(guided) == 40 and guided[-1] < guided[0]
