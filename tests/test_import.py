"""``import unified_map`` stays light: no engine is imported until a backend needs it."""

from __future__ import annotations

from tests.helpers import run_python

ENGINES = ("dask", "distributed", "pyspark", "ray", "joblib", "matplotlib", "numpy", "tqdm")


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
    import unified_map

    assert unified_map.cluster_setup is cluster_setup


def test_public_names():
    import unified_map

    for name in unified_map.__all__:
        assert getattr(unified_map, name) is not None
