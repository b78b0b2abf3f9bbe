"""The ``unified-map`` command: ``unified-map bench`` runs the built-in benchmark suite on every
installed backend and prints one table per workload; ``scheduler``, ``worker`` and ``status``
start and inspect a cluster from a shell or a batch script (thin wrappers over
:mod:`cluster_setup`).

``python -m unified_map`` with no arguments runs ``bench`` with its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from unified_map.backends import available_backends
from unified_map.bench_suite import builtin_suite

__all__ = ["main", "build_parser", "run_bench", "run_cluster_command"]

#: Engines whose setup object lives in :mod:`cluster_setup` under the same name.
CLUSTER_ENGINES = ("dask",)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, e.g. serial,threads")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``unified-map``.

    Examples
    --------
    >>> args = build_parser().parse_args(["bench", "--backends", "serial,threads"])
    >>> args.command, args.backends, args.repeat
    ('bench', ['serial', 'threads'], 3)
    """
    suite = builtin_suite()
    parser = argparse.ArgumentParser(
        prog="unified-map",
        description="Map a function over any parallel engine; compare the engines here.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="benchmark every installed backend on a built-in suite",
        description="Run a built-in suite of workloads on every installed backend (local "
        "engines) and print one table per workload, fastest backend first. Workloads: "
        + "; ".join(f"{w.name} ({w.purpose}, {w.default_items} items)" for w in suite)
        + ".",
    )
    bench.add_argument(
        "--backends",
        type=_names,
        metavar="A,B",
        help="comma-separated backend names (default: every installed backend)",
    )
    bench.add_argument(
        "--workloads",
        type=_names,
        metavar="A,B",
        help="comma-separated workloads to run (default: all of "
        + ",".join(w.name for w in suite)
        + ")",
    )
    bench.add_argument(
        "--items",
        type=_positive_int,
        metavar="N",
        help="items per workload (default: each workload's own, listed above)",
    )
    bench.add_argument(
        "--repeat", type=_positive_int, default=3, metavar="N", help="timed runs (default 3)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write every row as JSON to FILE")
    bench.add_argument("--plot", metavar="FILE", help="also save a bar chart to FILE (.png)")
    _add_cluster_commands(commands)
    return parser


def _add_cluster_commands(commands) -> None:
    def engine_option(command):
        command.add_argument(
            "--engine", choices=CLUSTER_ENGINES, default="dask", help="cluster engine (dask)"
        )

    def scheduler_address(command):
        """The options of a command that talks to a running scheduler."""
        engine_option(command)
        command.add_argument(
            "address", help="the scheduler's address, host:port or tcp://host:port"
        )

    scheduler = commands.add_parser(
        "scheduler",
        help="start a scheduler and serve until Ctrl-C or SIGTERM",
        description="Start a scheduler on ADDRESS and serve until Ctrl-C or SIGTERM, then "
        "shut it down cleanly (what a batch job script runs).",
    )
    engine_option(scheduler)
    scheduler.add_argument(
        "--address",
        default="127.0.0.1:8786",
        help="host:port to listen on (default 127.0.0.1:8786; port 0 picks a free one; "
        "other machines can reach it only on a non-loopback host)",
    )
    worker = commands.add_parser(
        "worker",
        help="start workers that join a scheduler and serve until Ctrl-C or SIGTERM",
        description="Start worker processes that join the scheduler at ADDRESS; serve until "
        "Ctrl-C or SIGTERM, then leave the scheduler cleanly.",
    )
    scheduler_address(worker)
    worker.add_argument("--n-workers", type=_positive_int, default=1, metavar="N")
    worker.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="threads per worker process (default 1)",
    )
    worker.add_argument("--memory", default="auto", help="memory per worker, e.g. 2GB")
    status = commands.add_parser(
        "status",
        help="connect to a scheduler and print its workers",
        description="Connect to the scheduler at ADDRESS, print its workers, cores and "
        "memory, and disconnect.",
    )
    scheduler_address(status)
    status.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up connecting after this long (default 10)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unified-map`` and ``python -m unified_map``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:  # bare `python -m unified_map`: the project's main job
        args = parser.parse_args(["bench"])
    if args.command == "bench":
        return run_bench(args, parser)
    return run_cluster_command(args)


def run_cluster_command(args: argparse.Namespace) -> int:
    """Run ``scheduler``, ``worker`` or ``status`` as ``args`` asks; returns the exit code.

    ``scheduler`` and ``worker`` block until Ctrl-C or SIGTERM. A cluster error (malformed
    address, port in use, unreachable scheduler) is printed as one line, exit status 1.
    """
    from unified_map._cluster import cluster_setup
    from unified_map.errors import ClusterSetupError

    setup = getattr(cluster_setup, args.engine)
    try:
        if args.command == "scheduler":
            setup.start_scheduler(args.address, block=True)
        elif args.command == "worker":
            setup.start_worker(
                args.address,
                block=True,
                n_workers=args.n_workers,
                threads=args.threads,
                memory=args.memory,
            )
        else:
            with setup.connect_to_scheduler(args.address, timeout=args.timeout):
                setup.report_status()  # prints the table
    except ClusterSetupError as exc:
        print(f"unified-map {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the suite as ``args`` (from :func:`build_parser`) asks and print the tables.

    Names, output files and matplotlib (for ``--plot``) are checked before anything is
    measured; a problem is a usage error (exit status 2). Returns the exit code.
    """
    from tqdm.auto import tqdm

    from unified_map.benchmark import Measurement
    from unified_map.report import PLOT_INSTALL_HINT, plot_results, require_matplotlib

    def fail(message: str) -> int:
        if parser is not None:
            parser.error(message)  # exits with status 2
        print(f"unified-map bench: error: {message}", file=sys.stderr)
        return 2

    known = available_backends()
    names = args.backends or [name for name, installed in known.items() if installed]
    unknown = [name for name in names if name not in known]
    if unknown:
        return fail(f"unknown backend(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    suite = builtin_suite()
    if args.workloads:
        by_name = {w.name: w for w in suite}
        missing = [name for name in args.workloads if name not in by_name]
        if missing:
            return fail(f"unknown workload(s) {', '.join(missing)}; valid: {', '.join(by_name)}")
        suite = [by_name[name] for name in args.workloads]
    # Refuse unusable output files now, not after minutes of measuring.
    for option, path in [("--json", args.json), ("--plot", args.plot)]:
        problem = _unwritable(path) if path else None
        if problem:
            return fail(f"cannot write {option} {path}: {problem}")
    if args.plot:
        try:
            require_matplotlib()
        except ImportError:
            return fail(f"--plot needs matplotlib: {PLOT_INSTALL_HINT}")
    warmup = 1

    not_installed = [name for name, installed in known.items() if not installed]
    print(
        f"unified-map bench: {len(suite)} workloads x {len(names)} backends "
        f"({', '.join(names)}); each backend started afresh, then {warmup} warm-up and "
        f"{args.repeat} timed maps with its pool warm; results checked against builtin map."
    )
    if not_installed:
        print(f"Not installed, skipped: {', '.join(not_installed)}")
    started = time.perf_counter()
    results = []
    with tqdm(
        total=len(suite) * len(names) * (warmup + args.repeat),
        unit="map",
        file=sys.stderr,
        desc="bench",
    ) as bar:
        for workload in suite:
            bar.set_postfix_str(f"{workload.name}: preparing")
            measurement = Measurement(
                workload.func,
                workload.make_items(args.items or workload.default_items),
                repeat=args.repeat,
                warmup=warmup,
                name=workload.name,
            )
            rows = []
            for name in names:
                bar.set_postfix_str(f"{workload.name}: {name}")
                before = bar.n
                rows.append(measurement.measure(name, on_run=lambda: bar.update(1)))
                bar.update(warmup + args.repeat - (bar.n - before))  # failed backends too
            results.append(measurement.result(rows))
            del measurement  # free the workload's input and reference results (payloads are large)
    elapsed = time.perf_counter() - started

    for result, workload in zip(results, suite, strict=True):
        print()
        print(f"[{workload.purpose}]")
        print(result)
    print()
    print(f"Whole suite: {elapsed:.1f} s")
    if args.json:
        rows = [row for result in results for row in result.to_dicts()]
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)
        print(f"Rows written to {args.json}")
    if args.plot:
        plot_results(results, args.plot)
        print(f"Plot saved to {args.plot}")
    return 0


def _unwritable(path: str) -> str | None:
    """Why a file cannot be created at ``path``, or ``None`` when it looks writable."""
    target = Path(path)
    if target.is_dir():
        return "it is a directory"
    parent = target.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        return f"directory {str(parent)!r} {what}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable"
    if target.exists() and not os.access(target, os.W_OK):
        return "the file is not writable"
    return None


if __name__ == "__main__":
    sys.exit(main())
