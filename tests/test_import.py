"""``import unified_map`` stays light, and its public names are the documented ones."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import unified_map
from tests.helpers import run_python
from unified_map import errors

ENGINES = ("dask", "distributed", "pyspark", "ray", "joblib", "matplotlib", "numpy", "tqdm")
API_RST = Path(__file__).resolve().parent.parent / "docs" / "api.rst"

# What each error type promises callers who never heard of unified_map: ``except <builtin>``
# catches it (see the errors' docstrings and docs/api.rst, which shows their bases).
CATCHABLE_AS = {
    "UnknownBackendError": ValueError,
    "BackendNotInstalledError": ImportError,
    "WorkerLostError": RuntimeError,
    "ResultMismatchError": AssertionError,
    "UnpicklableRemoteError": RuntimeError,
}
# Not raised on their own: the bases to catch everything, and the carrier of a worker's traceback.
NOT_RAISED = {"UnifiedMapError", "ClusterSetupError", "RemoteTraceback"}


def test_import_loads_no_engine():
    result = run_python(
        f"""
        import sys
        import unified_map, cluster_setup
        unified_map.available_backends()
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({ENGINES!r}))
        print(",".join(loaded))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_cluster_setup_is_the_same_module_everywhere():
    import cluster_setup

    assert unified_map.cluster_setup is cluster_setup


def _resolve(dotted: str):
    """The object named ``dotted`` as Sphinx finds it: the longest importable module, then
    attributes (so ``unified_map.benchmark.benchmark`` is the function in the module)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def _documented_objects() -> list:
    """Every object docs/api.rst documents: autodoc targets, and the members it lists of an
    ``automodule`` (all of the module's ``__all__`` for a bare ``:members:``)."""
    directive = re.compile(r"^\.\. auto(\w+):: (\S+)\n((?:   .*\n)*)", re.M)
    found = []
    for kind, target, options in directive.findall(API_RST.read_text()):
        obj = _resolve(target)
        found.append(obj)
        members = re.search(r":members:(.*)", options)
        if kind == "module" and members:
            names = [n.strip() for n in members.group(1).split(",") if n.strip()]
            found += [getattr(obj, name) for name in names or obj.__all__]
    return found


def test_every_public_name_is_documented_with_a_docstring():
    documented = _documented_objects()
    for name in unified_map.__all__:
        obj = getattr(unified_map, name)
        assert any(obj is d for d in documented), f"unified_map.{name} is not in docs/api.rst"
        doc = inspect.getdoc(obj) or ""
        assert len(doc) > 20, f"unified_map.{name} has no docstring"
        if inspect.isfunction(obj):
            assert ">>> " in doc, f"unified_map.{name}: no example in its docstring"


def test_errors_are_exceptions_catchable_as_the_builtin_that_fits():
    assert set(CATCHABLE_AS) | {"UnifiedMapError", "RemoteTraceback"} <= set(errors.__all__)
    for name, builtin in CATCHABLE_AS.items():
        error = getattr(unified_map, name)
        assert issubclass(error, unified_map.UnifiedMapError) and issubclass(error, builtin), name
    for name in errors.__all__:
        error = getattr(errors, name)
        assert isinstance(error, type) and issubclass(error, Exception), name
        assert inspect.getdoc(error), f"{name} has no docstring"
        if name not in NOT_RAISED:
            builtins = {base for base in error.__mro__ if base.__module__ == "builtins"}
            assert builtins - {Exception, BaseException, object}, f"{name}: no builtin to catch"
