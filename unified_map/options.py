"""The options of one map, validated once at the entry, and :class:`Failure`, what a failed
item's slot holds under ``on_error="return"``.

``parallel``, ``starmap`` and ``imap`` build one :class:`MapOptions` from their keywords and
hand it down; a new option touches the entry, this class and the one place that uses it.
Every value is checked here, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

__all__ = ["MapOptions", "Failure", "ON_ERROR", "CHECKPOINT_MODES"]

#: What a failing item does to the map: stop it (the default) or fill its slot.
ON_ERROR = ("raise", "return")
#: What ``checkpoint=`` does with a file that holds results already.
CHECKPOINT_MODES = ("resume", "overwrite")


@dataclasses.dataclass(frozen=True)
class MapOptions:
    """Everything a caller may ask of one map, checked once.

    Built by :func:`~unified_map.parallel`, :func:`~unified_map.starmap` and
    :func:`~unified_map.imap` from their keywords (see :func:`~unified_map.parallel` for
    what each one means); invalid values raise ``ValueError`` or ``TypeError`` before any
    work starts.

    Examples
    --------
    >>> MapOptions(retries=2, timeout=1.5).timeout
    1.5
    >>> MapOptions(retries=-1)
    Traceback (most recent call last):
    ...
    ValueError: retries must be an int >= 0, got -1
    >>> MapOptions(on_error="ignore")
    Traceback (most recent call last):
    ...
    ValueError: on_error must be one of 'raise', 'return'; got 'ignore'
    """

    backend: str | None = None
    chunksize: int | None = None
    progress: bool = False
    n_workers: int | None = None
    on_error: str = "raise"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    checkpoint: str | None = None
    checkpoint_mode: str = "resume"
    ordered: bool = True

    def __post_init__(self) -> None:
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(f"backend must be a name (str) or None, got {self.backend!r}")
        for name in ("chunksize", "n_workers"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")
        if not isinstance(self.ordered, bool):
            raise TypeError(f"ordered must be True or False, got {self.ordered!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(
                f"on_error must be one of {', '.join(map(repr, ON_ERROR))}; got {self.on_error!r}"
            )
        if not _is_int(self.retries) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))
        if self.timeout is not None:
            if (
                isinstance(self.timeout, bool)
                or not isinstance(self.timeout, (int, float))
                or not math.isfinite(self.timeout)
                or self.timeout <= 0
            ):
                raise ValueError(
                    f"timeout must be a number of seconds > 0 or None, got {self.timeout!r}"
                )
            object.__setattr__(self, "timeout", float(self.timeout))
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)):
                raise TypeError(
                    f"checkpoint must be a file path (str or os.PathLike) or None, "
                    f"got {self.checkpoint!r}"
                )
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.checkpoint_mode not in CHECKPOINT_MODES:
            raise ValueError(
                f"checkpoint_mode must be one of {', '.join(map(repr, CHECKPOINT_MODES))}; "
                f"got {self.checkpoint_mode!r}"
            )

    @classmethod
    def from_keywords(cls, keywords: dict[str, Any]) -> MapOptions:
        """The options among ``keywords`` (an entry point's ``locals()``): each entry point
        lists its keywords in its signature, for users and their editors, and hands them
        all over in one call, so a new option is not copied into each of them.

        Examples
        --------
        >>> MapOptions.from_keywords({"func": abs, "retries": 2, "chunksize": None}).retries
        2
        """
        return cls(**{name: keywords[name] for name in _FIELD_NAMES if name in keywords})

    @property
    def returns_failures(self) -> bool:
        """Whether failed items fill their slot with a :class:`Failure` (not raise)."""
        return self.on_error == "return"


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(MapOptions))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _exception_types(retry_on: Any) -> tuple[type[BaseException], ...]:
    types = (retry_on,) if isinstance(retry_on, type) else retry_on
    try:
        types = tuple(types)
    except TypeError:
        types = None
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError(
            f"retry_on must be an exception type or a non-empty tuple of them, got {retry_on!r}"
        )
    return types


@dataclasses.dataclass(frozen=True, eq=False)
class Failure:
    """Stands in the result slot of an item that failed, under ``on_error="return"``.

    Attributes
    ----------
    index : int
        Position of the item in the input (what :func:`~unified_map.imap` with
        ``ordered=False`` needs to place it).
    item : str
        A short repr of the item (of the argument tuple, for several iterables).
    exception : BaseException
        The exception ``func`` raised on its last attempt (``TimeoutError`` for an item that
        ran past ``timeout=``).
    traceback : str
        The traceback text, from the process where the item ran.
    attempts : int
        How many times the item was run (``1 + retries`` when every retry failed too).

    Examples
    --------
    >>> import unified_map as um
    >>> results = um.parallel(lambda x: 1 / x, [1, 0], backend="serial", on_error="return")
    >>> results[0], type(results[1]).__name__, results[1].index
    (1.0, 'Failure', 1)
    >>> type(results[1].exception).__name__, results[1].attempts
    ('ZeroDivisionError', 1)
    """

    index: int
    item: str
    exception: BaseException
    traceback: str
    attempts: int = 1

    def __repr__(self) -> str:
        return (
            f"Failure(index={self.index}, item={self.item}, "
            f"exception={self.exception!r}, attempts={self.attempts})"
        )
