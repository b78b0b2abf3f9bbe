"""Invalid arguments fail with a clear error before any work starts."""

from __future__ import annotations

import pytest

import unified_map as um


def untouched_source(pulled: list):
    def generate():
        pulled.append(True)
        yield 1

    return generate()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"chunksize": 0}, ValueError, "chunksize must be a positive int"),
        ({"chunksize": 2.5}, ValueError, "chunksize must be a positive int"),
        ({"n_workers": -1}, ValueError, "n_workers must be a positive int"),
        ({"n_workers": True}, ValueError, "n_workers must be a positive int"),
        ({"backend": 3}, TypeError, "backend must be a name"),
    ],
)
@pytest.mark.parametrize("entry", [um.parallel, um.imap])
def test_bad_arguments_fail_before_any_item_is_read(entry, kwargs, error, message):
    pulled: list = []
    with pytest.raises(error, match=message):
        entry(abs, untouched_source(pulled), **kwargs)
    assert pulled == []


@pytest.mark.parametrize("entry", [um.parallel, um.imap])
def test_non_callable_func(entry):
    with pytest.raises(TypeError, match="func must be callable, got int"):
        entry(42, [1, 2])


def test_starmap_non_callable_func():
    with pytest.raises(TypeError, match="func must be callable"):
        um.starmap("nope", [(1,)])


def test_no_iterable_is_an_error_like_map():
    with pytest.raises(TypeError, match="at least one iterable"):
        um.parallel(abs)


@pytest.mark.parametrize("entry", [um.parallel, um.starmap, um.imap])
def test_every_keyword_of_an_entry_point_reaches_the_map_options(entry):
    # The entry points hand their keywords over as MapOptions.from_keywords(locals()): a
    # keyword that MapOptions does not know would be dropped without a word.
    import dataclasses
    import inspect

    from unified_map.options import MapOptions

    fields = {field.name for field in dataclasses.fields(MapOptions)}
    keywords = {
        name
        for name, parameter in inspect.signature(entry).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert keywords <= fields
    assert fields - keywords <= {"ordered"}  # only imap yields out of order
    values = {"retries": 2, "timeout": 3.0, "on_error": "return", "chunksize": 4}
    assert MapOptions.from_keywords(values) == MapOptions(**values)
