"""Packaging for unified_map and cluster_setup; each engine is an optional extra."""

from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    # bokeh: the scheduler's dashboard (without it the link only says "needs bokeh")
    "dask": ["dask>=2024.1", "distributed>=2024.1", "bokeh>=3.1.0"],
    "joblib": ["joblib>=1.3"],
    # Spark 4 (it needs Java 17+): cluster_setup.spark relies on its launcher and behaviour
    "spark": ["pyspark>=4.0,<5"],
    # 2.60: token authentication and the GCS client cluster_setup.ray uses; [client]: grpcio,
    # which ray:// (Ray Client, a driver off the cluster) needs
    "ray": ["ray[client]>=2.60"],
    "plot": ["matplotlib>=3.7"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# matplotlib too: the plot tests must run, not skip, wherever the test suite runs.
EXTRAS["test"] = [
    "pytest>=7.4",
    "pytest-timeout>=2.2",
    "psutil>=5.9",
    "numpy>=1.24",
    "ruff>=0.5",
    "matplotlib>=3.7",
]
EXTRAS["docs"] = ["sphinx>=7", "numpydoc>=1.6"]

setup(
    name="unified_map",
    version="0.1.0",
    description="One map() call for Python, thread/process pools, joblib, Dask, Spark and Ray.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["unified_map*", "cluster_setup*"]),
    install_requires=[
        "cloudpickle>=2.2",
        "tqdm>=4.60",
        # cluster_setup walks and stops the process trees it started
        "psutil>=5.9",
        # Python 3.10 keeps PEP 678 notes but does not print them; the backport does
        "exceptiongroup>=1.1; python_version < '3.11'",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["unified-map=unified_map.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: System :: Distributed Computing",
    ],
)
