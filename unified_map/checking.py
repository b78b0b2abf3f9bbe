"""What the benchmark checks: its arguments before anything runs, and every backend's results
against the builtin ``map`` (:func:`results_equal` says when two results are the same).
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Iterable

from unified_map.backends import available_backends
from unified_map.errors import ResultMismatchError, UnknownBackendError

__all__ = ["check_backend_names", "check_counts", "check_results", "results_equal"]


def check_backend_names(names: Iterable[str]) -> None:
    """Raise :class:`~unified_map.UnknownBackendError` if any of ``names`` is not registered.

    Only the names are checked: a registered backend whose engine is not installed passes.

    Examples
    --------
    >>> check_backend_names(["serial", "threads"])
    >>> check_backend_names(["serial", "thread"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    unified_map.errors.UnknownBackendError: unknown backend 'thread'; valid backends are: ...
    """
    known = available_backends()
    unknown = []
    for name in names:
        try:
            registered = name in known
        except TypeError:  # unhashable
            registered = False
        if not registered:
            unknown.append(name)
    if unknown:
        valid = ", ".join(repr(name) for name in sorted(known))
        which = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise UnknownBackendError(f"unknown backend{plural} {which}; valid backends are: {valid}")


def check_counts(repeat: int, warmup: int) -> None:
    """Raise ValueError unless ``repeat`` is an int >= 1 and ``warmup`` an int >= 0.

    Examples
    --------
    >>> check_counts(3, 0)
    >>> check_counts(0, 1)
    Traceback (most recent call last):
    ...
    ValueError: repeat must be a positive int, got 0
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def check_results(backend: str, results: list, expected: list) -> None:
    """Raise :class:`~unified_map.ResultMismatchError` unless ``results`` equal ``expected``
    item by item (by :func:`results_equal`); the message names ``backend`` and the first
    differing item.

    Examples
    --------
    >>> check_results("serial", [1, 2], [1, 2])
    >>> check_results("broken", [1, 3], [1, 2])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    unified_map.errors.ResultMismatchError: backend 'broken' differs ... at item 1: got 3, ...
    """
    if len(results) != len(expected):
        raise ResultMismatchError(
            f"backend {backend!r} returned {len(results)} results for {len(expected)} items"
        )
    for index, (got, want) in enumerate(zip(results, expected, strict=True)):
        if not results_equal(got, want):
            raise ResultMismatchError(
                f"backend {backend!r} differs from the builtin map at item {index}: "
                f"got {_short(got)}, expected {_short(want)}"
            )


def results_equal(got, want) -> bool:
    """Whether a backend's result ``got`` is the builtin map's ``want``: ``got == want``, also
    for numpy arrays (elementwise ``==`` has no truth value), NaN (equal to itself here: serial
    and parallel NaNs are the same result; real and complex) and containers (lists, tuples,
    dicts, sets and frozensets, NaNs inside included).

    Examples
    --------
    >>> results_equal([1.0, float("nan")], [1.0, float("nan")]), results_equal((1,), [1])
    (True, False)
    """
    if got is want:
        return True
    if isinstance(want, (list, tuple)):
        return (
            type(got) is type(want) and len(got) == len(want) and all(map(results_equal, got, want))
        )
    if isinstance(want, (set, frozenset)):
        return type(got) is type(want) and _sets_equal(got, want)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(results_equal(got[k], want[k]) for k in want)
        )
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, complex) and cmath.isnan(want):
        return (
            isinstance(got, complex)
            and results_equal(got.real, want.real)
            and results_equal(got.imag, want.imag)
        )
    if hasattr(want, "__array__") and hasattr(want, "dtype"):
        import numpy  # only reached when results are arrays, so numpy is there

        try:
            return bool(numpy.array_equal(got, want, equal_nan=True))
        except TypeError:  # equal_nan is not defined for non-numeric dtypes
            return bool(numpy.array_equal(got, want))
    if hasattr(want, "equals") and callable(want.equals):  # pandas objects
        return bool(want.equals(got))
    try:
        return bool(got == want)
    except (ValueError, TypeError):
        return False


def _sets_equal(got, want) -> bool:
    """Set equality where an element with no equal by ``==`` (a NaN, a tuple holding one) may
    still be matched, one to one, with an element :func:`results_equal` to it."""
    if len(got) != len(want):
        return False
    try:
        if got == want:
            return True
        missing = [w for w in want if w not in got]
        extra = [g for g in got if g not in want]
    except (ValueError, TypeError):
        return False
    if len(missing) != len(extra):
        return False
    for w in missing:
        match = next((i for i, g in enumerate(extra) if results_equal(g, w)), None)
        if match is None:
            return False
        del extra[match]
    return True


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
