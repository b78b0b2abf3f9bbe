"""The backend contract, written once and run on every backend (see ``CONTRACT_TARGETS``).

Every test compares with the builtin ``map`` or an exact expected value computed here, so a
backend that drops, duplicates or reorders items fails.
"""

from __future__ import annotations

import itertools
import operator

import pytest

import unified_map as um
from unified_map.errors import RemoteTraceback


def square(x):
    return x * x


def fail_on_13(x):
    if x == 13:
        raise ValueError(f"unlucky {x}")
    return x


class Counted:
    """An iterator that records how many items were pulled from it."""

    def __init__(self, iterable):
        self._it = iter(iterable)
        self.pulled = 0

    def __iter__(self):
        return self

    def __next__(self):
        value = next(self._it)
        self.pulled += 1
        return value


def test_results_match_builtin_map_in_order(backend):
    xs = list(range(1000))
    assert um.parallel(square, xs, backend=backend) == list(map(square, xs))


@pytest.mark.parametrize("chunksize", [1, 7, 5000])
def test_explicit_chunksize_keeps_order(backend, chunksize):
    xs = list(range(-50, 250))
    assert um.parallel(abs, xs, backend=backend, chunksize=chunksize) == list(map(abs, xs))


def test_automatic_chunksize_on_many_tiny_items(backend):
    xs = range(20_000)
    assert um.parallel(operator.neg, xs, backend=backend) == [-x for x in xs]


def test_several_iterables_zip_and_stop_at_shortest(backend):
    a, b, c = [1, 2, 3, 4], (10, 20, 30), range(100, 110)
    expected = list(map(lambda x, y, z: x + y + z, a, b, c))  # noqa: C417 - the reference
    assert um.parallel(lambda x, y, z: x + y + z, a, b, c, backend=backend) == expected
    assert expected == [111, 123, 135]


def test_generator_input(backend):
    assert um.parallel(str, (i for i in range(25)), backend=backend) == [str(i) for i in range(25)]


def test_unsized_iterables_zip(backend):
    gen_a = (i for i in range(10))
    assert um.parallel(operator.mul, gen_a, itertools.count(5), backend=backend) == [
        i * (i + 5) for i in range(10)
    ]


def test_empty_input_gives_empty_list(backend):
    assert um.parallel(square, [], backend=backend) == []
    assert list(um.imap(square, iter(()), backend=backend)) == []


def test_lambdas_and_closures(backend):
    offset = 42
    table = {"a": 1, "b": 2}

    def lookup(key):  # a closure over two locals
        return table[key] + offset

    assert um.parallel(lambda s: s * 2, "abc", backend=backend) == ["aa", "bb", "cc"]
    assert um.parallel(lookup, ["a", "b", "a"], backend=backend) == [43, 44, 43]


def test_starmap(backend):
    args = [(2, 5), (3, 2), (10, 0)]
    assert um.starmap(pow, args, backend=backend) == list(itertools.starmap(pow, args))


def test_results_of_any_picklable_type(backend):
    xs = [None, 1.5, "text", (1, 2), {"k": [1, 2]}, b"\x00\xff"]
    assert um.parallel(lambda v: v, xs, backend=backend) == xs


def test_exception_keeps_type_and_names_the_item(backend):
    with pytest.raises(ValueError, match="unlucky 13") as caught:
        um.parallel(fail_on_13, range(40), backend=backend, chunksize=4)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "item 13 of the input: 13" in notes and f"backend {backend!r}" in notes
    # The worker's side of the story is there: as the live traceback or the remote text.
    cause = caught.value.__cause__
    if backend not in ("serial", "threads", "auto"):  # auto: in this process while cheap
        assert isinstance(cause, RemoteTraceback)
    if isinstance(cause, RemoteTraceback):
        assert "fail_on_13" in cause.traceback_text
    else:
        assert any(entry.name == "fail_on_13" for entry in caught.traceback)


@pytest.mark.parametrize("container", [list, tuple])
def test_lists_and_tuples_are_cut_into_slices_that_keep_positions(backend, container):
    xs = container(range(40))
    assert um.parallel(square, xs, backend=backend, chunksize=6) == list(map(square, xs))
    with pytest.raises(ValueError) as caught:
        um.parallel(fail_on_13, xs, backend=backend, chunksize=4)
    assert "item 13 of the input: 13" in "\n".join(caught.value.__notes__)


def test_exception_note_shows_the_arguments_of_a_multi_argument_call(backend):
    with pytest.raises(ZeroDivisionError) as caught:
        um.parallel(operator.truediv, [1, 2, 3], [1, 0, 1], backend=backend)
    assert "item 1 of the input: args (2, 0)" in "\n".join(caught.value.__notes__)


def test_backend_stays_usable_after_an_error(backend):
    with pytest.raises(ValueError):
        um.parallel(fail_on_13, range(100), backend=backend)
    assert um.parallel(square, range(50), backend=backend) == [x * x for x in range(50)]


def test_progress_bar_counts_every_item(backend, capsys):
    assert um.parallel(square, range(300), backend=backend, progress=True)[-1] == 299**2
    err = capsys.readouterr().err
    assert "300/300" in err and "100%" in err


def test_imap_yields_in_order(backend):
    assert list(um.imap(square, range(500), backend=backend)) == [x * x for x in range(500)]


def test_imap_is_lazy_on_an_endless_generator(backend):
    source = Counted(itertools.count())
    results = um.imap(square, source, backend=backend, chunksize=5)
    assert [next(results) for _ in range(10)] == [x * x for x in range(10)]
    results.close()
    # Explicit chunks are respected and only a bounded number of them is pulled ahead.
    assert source.pulled % 5 == 0
    assert source.pulled <= 10 + 5 * 4 * 2 * 64


def test_imap_consumer_can_stop_early_and_backend_stays_usable(backend):
    first = next(um.imap(square, itertools.count(3), backend=backend))
    assert first == 9
    assert um.parallel(square, [4], backend=backend) == [16]


class Abort(BaseException):
    """Not an Exception: pools that only catch Exception lose the task."""


def abort_on_3(x):
    if x == 3:
        raise Abort("stop here")
    return x


def stop_on_3(x):
    if x == 3:
        raise StopIteration  # map() would take it for the end of the items
    return x


def test_base_exception_reaches_the_caller_with_its_note(backend):
    with pytest.raises(Abort, match="stop here") as caught:
        um.parallel(abort_on_3, range(8), backend=backend, chunksize=2)
    assert "item 3 of the input: 3" in "\n".join(caught.value.__notes__)
    assert um.parallel(abs, [-1], backend=backend) == [1]  # still usable


def test_stop_iteration_in_func_is_an_error_not_a_silent_truncation(backend):
    with pytest.raises(RuntimeError, match="StopIteration") as caught:
        um.parallel(stop_on_3, range(8), backend=backend, chunksize=2)
    assert "item 3 of the input: 3" in "\n".join(caught.value.__notes__)
