"""The ``unified-map`` command: ``unified-map bench`` runs the built-in benchmark suite on every
installed backend, prints one table per workload and writes the chart, the rows (JSON) and a
Markdown summary to a results folder; ``scheduler``, ``worker`` and ``status`` start and
inspect a cluster from a shell or a batch script, and ``launch`` runs a script on a whole
allocation (thin wrappers over :mod:`cluster_setup.hpc`).

``python -m unified_map`` with no command runs ``bench`` (the project's main job), with any
options of ``bench`` given: ``python -m unified_map --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from unified_map.backends import available_backends
from unified_map.bench_suite import builtin_suite

__all__ = ["main", "build_parser", "run_bench", "run_cluster_command"]

#: Where ``unified-map bench`` writes its files unless ``--out`` says otherwise.
DEFAULT_OUT = "unified_map_bench"
#: The files ``unified-map bench`` writes in its results folder.
OUT_FILES = {"plot": "bench.png", "rows": "bench.json", "summary": "summary.md"}

#: Engines whose setup object lives in :mod:`cluster_setup` under the same name.
CLUSTER_ENGINES = ("dask", "spark", "ray")


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
        description="Map a function over any parallel engine; compare the engines here. "
        "With no command, or with only options of bench (such as --out DIR), runs bench.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="benchmark every installed backend on a built-in suite",
        description="Run a built-in suite of workloads on every installed backend (local "
        "engines) and print one table per workload, fastest backend first; write the chart "
        f"({OUT_FILES['plot']}), every row with the machine's details ({OUT_FILES['rows']}) "
        f"and a summary ({OUT_FILES['summary']}) to the results folder. Workloads: "
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
    bench.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"results folder, created if missing (default ./{DEFAULT_OUT}/)",
    )
    bench.add_argument(
        "--json", metavar="FILE", help="also write the rows as JSON to FILE (as in the folder)"
    )
    bench.add_argument(
        "--plot", metavar="FILE", help="also save the chart to FILE (.png, .svg, .pdf)"
    )
    _add_cluster_commands(commands)
    return parser


def _memory(text: str) -> int:
    from unified_map._cluster import cluster_setup

    try:
        return cluster_setup.hpc.parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port_or_none(text: str) -> int | None | str:
    if text.lower() in ("none", "off"):
        return None
    if text == "default":  # the engine's own choice
        return text
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port or 'none', got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {text!r}")
    return port


def _add_cluster_commands(commands) -> None:
    engines = ", ".join(CLUSTER_ENGINES)

    def engine_argument(command):
        command.add_argument("engine", choices=CLUSTER_ENGINES, help=f"cluster engine: {engines}")

    def timeout_option(command, default: float, what: str):
        command.add_argument(
            "--timeout",
            type=float,
            default=default,
            metavar="SECONDS",
            help=f"give up {what} after this long (default {default:g})",
        )

    def scheduler_file_option(command, what: str):
        command.add_argument(
            "--scheduler-file",
            metavar="FILE",
            help=f"{what} (JSON, on a filesystem every node shares)",
        )

    def sizing_options(command):
        command.add_argument(
            "--cores",
            type=_positive_int,
            metavar="N",
            help="cores this node gives to workers (default: every core this task may use; "
            "dask runs one single-threaded worker process per core, spark and ray one worker "
            "with N cores)",
        )
        command.add_argument(
            "--memory",
            type=_memory,
            metavar="SIZE",
            help="memory this node gives to workers, e.g. 16GB, 16GiB or 16g (default: the "
            "engine's own choice; dask shares it between its worker processes)",
        )

    def verbose_option(command):
        command.add_argument(
            "--verbose",
            action="store_true",
            help="also show the engine's own log (INFO level); by default one line per event",
        )

    scheduler = commands.add_parser(
        "scheduler",
        help="start a scheduler and serve until Ctrl-C or SIGTERM",
        description="Start a scheduler and serve until Ctrl-C or SIGTERM (what a batch job "
        "sends at its end), then shut it down cleanly. Prints where it listens, who joins and "
        "leaves, and why it stopped, one line each.",
    )
    engine_argument(scheduler)
    scheduler.add_argument(
        "--address",
        help="host:port to listen on (default: the engine's port on 127.0.0.1, or with "
        "--scheduler-file a free port on this node's host name, UNIFIED_MAP_HOST to pick "
        "another; port 0 picks a free one; other machines can reach it only on a non-loopback "
        "host)",
    )
    scheduler_file_option(scheduler, "write the engine and address to FILE once ready")
    scheduler.add_argument(
        "--dashboard-port",
        type=_port_or_none,
        default="default",
        metavar="PORT",
        help="port of the web dashboard (0: a free one; 'none': no dashboard; default: the "
        "engine's own choice)",
    )
    timeout_option(scheduler, 60, "starting")
    verbose_option(scheduler)

    worker = commands.add_parser(
        "worker",
        help="start workers that join a scheduler and serve until Ctrl-C or SIGTERM",
        description="Start workers sized for this node that join the scheduler at ADDRESS (or "
        "the one FILE names); serve until Ctrl-C or SIGTERM, then leave the scheduler cleanly.",
    )
    engine_argument(worker)
    worker.add_argument(
        "address", nargs="?", help="the scheduler's address, host:port or scheme://host:port"
    )
    scheduler_file_option(worker, "join the scheduler FILE names, waiting for it to appear")
    sizing_options(worker)
    timeout_option(worker, 60, "waiting for the scheduler file and the scheduler")
    verbose_option(worker)

    status = commands.add_parser(
        "status",
        help="connect to a scheduler and print its workers",
        description="Connect to a scheduler, print its workers (cores, memory, Python and "
        "engine versions, any that differ from this machine's flagged) and disconnect. ENGINE "
        "defaults to the one the address's scheme or FILE names, else dask.",
    )
    status.add_argument(
        "target",
        nargs="*",
        metavar="[ENGINE] [ADDRESS]",
        help=f"the engine ({engines}) and the scheduler's address, host:port or scheme://host:port",
    )
    scheduler_file_option(status, "the scheduler FILE names")
    timeout_option(status, 10, "connecting")

    launch = commands.add_parser(
        "launch",
        help="run a script on a whole allocation: run it under srun or mpirun in every task",
        description="Run in every task of an allocation (srun, mpirun): task 0 starts the "
        "scheduler, waits for the others' workers, then runs COMMAND with "
        "UNIFIED_MAP_SCHEDULER set, so that unified_map.parallel in it runs on the "
        "allocation; every other task starts workers sized for its node. All stop when "
        "COMMAND ends (its exit code is task 0's) or on SIGTERM. Rank and size come from "
        "SLURM_PROCID/SLURM_NTASKS, PMI_RANK/PMI_SIZE or OMPI_COMM_WORLD_RANK/SIZE.",
    )
    engine_argument(launch)
    launch.add_argument(
        "--scheduler-file",
        required=True,
        metavar="FILE",
        help="where task 0 writes the scheduler's address (JSON, on a filesystem every node "
        "shares); removed at the end",
    )
    launch.add_argument(
        "--host",
        help="interface (host name or IP) the scheduler listens on (default: UNIFIED_MAP_HOST, "
        "else this node's host name)",
    )
    sizing_options(launch)
    timeout_option(launch, 300, "waiting for the scheduler and the workers")
    verbose_option(launch)
    launch.usage = (
        "unified-map launch [-h] ENGINE --scheduler-file FILE [--host HOST] [--cores N] "
        "[--memory SIZE] [--timeout SECONDS] [--verbose] -- COMMAND..."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unified-map`` and ``python -m unified_map``; returns the exit code.

    With no command, or options only (``python -m unified_map --out DIR``), it runs
    ``bench``: the project's main job.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["bench", *argv]
    # `launch ... -- COMMAND...`: what follows -- is the command, never our options
    command: list[str] = []
    if argv[:1] == ["launch"] and "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    args.command_line = command
    if args.command == "bench":
        return run_bench(args, parser)
    return run_cluster_command(args)


def run_cluster_command(args: argparse.Namespace) -> int:
    """Run ``scheduler``, ``worker``, ``status`` or ``launch`` as ``args`` asks; returns the
    exit code.

    ``scheduler`` and ``worker`` serve until Ctrl-C or SIGTERM (exit status 0), printing one
    line per event on stderr. A cluster error (malformed address, port in use, unreachable
    scheduler, missing scheduler file) is printed as one line, exit status 1.
    """
    from unified_map._cluster import cluster_setup
    from unified_map.errors import ClusterSetupError

    hpc = cluster_setup.hpc
    # What `python -m` does: modules in the working directory are importable here and on the
    # workers started from here (they get this process's own import folders).
    if os.getcwd() not in [os.path.abspath(p or ".") for p in sys.path]:
        sys.path.insert(0, os.getcwd())
    engine = getattr(args, "engine", None)
    label = f"unified-map {args.command}" + (f" [{engine}]" if engine else "")

    def say(line: str) -> None:
        print(f"{label}: {line}", file=sys.stderr, flush=True)

    try:
        if args.command == "scheduler":
            return hpc.serve_scheduler(
                hpc.setup_for(engine),
                args.address,
                args.scheduler_file,
                say,
                dashboard_port=args.dashboard_port,
                timeout=args.timeout,
                verbose=args.verbose,
            )
        if args.command == "worker":
            if (args.address is None) == (args.scheduler_file is None):
                raise ValueError("give the scheduler's ADDRESS or --scheduler-file FILE (one)")
            return hpc.serve_workers(
                hpc.setup_for(engine),
                args.address,
                args.scheduler_file,
                say,
                cores=args.cores or hpc.available_cores(),
                memory=args.memory,
                timeout=args.timeout,
                verbose=args.verbose,
            )
        if args.command == "launch":
            return _launch(hpc, args)
        return _status(hpc, args)
    except (ClusterSetupError, ValueError, TypeError) as exc:
        print(f"{label}: error: {exc}", file=sys.stderr)
        return 1


def _status(hpc, args: argparse.Namespace) -> int:
    target = list(args.target)
    engine = None
    if target and target[0] in CLUSTER_ENGINES:
        engine = target.pop(0)
    if len(target) > 1:
        raise ValueError(f"expected [ENGINE] [ADDRESS], got {' '.join(args.target)}")
    address = target[0] if target else None
    if (address is None) == (args.scheduler_file is None):
        raise ValueError("give the scheduler's ADDRESS or --scheduler-file FILE (one)")
    if engine is None and address is not None:
        scheme = address.split("://", 1)[0] if "://" in address else "tcp"
        engine = {"spark": "spark", "ray": "ray"}.get(scheme, "dask")
    elif engine is None:
        from unified_map._cluster import cluster_setup

        document = cluster_setup.scheduler_file.wait_for_scheduler_file(
            args.scheduler_file, args.timeout
        )
        engine = document["engine"]
    return hpc.describe(hpc.setup_for(engine), address, args.scheduler_file, args.timeout)


def _launch(hpc, args: argparse.Namespace) -> int:
    command = list(getattr(args, "command_line", []))
    if not command:
        raise ValueError("launch needs the command task 0 runs, after --: -- python script.py")
    return hpc.launch(
        args.engine,
        args.scheduler_file,
        command,
        host=args.host,
        cores=args.cores or hpc.available_cores(),
        memory=args.memory,
        timeout=args.timeout,
        verbose=args.verbose,
    )


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the suite as ``args`` (from :func:`build_parser`) asks, print the tables and write
    the results folder; returns the exit code.

    The output opens with what the figures depend on (date, cores, memory, load average,
    Python and engine versions) and ends with a warning when the machine was busy during the
    run, then the paths of the files written in ``args.out``: the chart, the rows as JSON
    (headed by the same details) and a Markdown summary. Without matplotlib the chart is
    left out and the output says how to get it.

    Names, the results folder, output files and matplotlib (for ``--plot``) are checked
    before anything is measured; a problem is a usage error (exit status 2).
    """
    from tqdm.auto import tqdm

    from unified_map.benchmark import LoadMonitor, Measurement, machine_info
    from unified_map.report import (
        PLOT_INSTALL_HINT,
        format_legend,
        format_machine,
        require_matplotlib,
    )

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
    try:
        require_matplotlib()
        can_plot = True
    except ImportError:
        if args.plot:
            return fail(f"--plot needs matplotlib: {PLOT_INSTALL_HINT}")
        can_plot = False  # the rest is written; the output says how to get the chart
    out = Path(getattr(args, "out", None) or DEFAULT_OUT)
    problem = _unusable_folder(out)  # creates it: last, once everything else is known good
    if problem:
        return fail(f"cannot write to --out {out}: {problem}")
    warmup = 1

    info = machine_info()
    not_installed = [name for name, installed in known.items() if not installed]
    print(
        f"unified-map bench: {len(suite)} workloads x {len(names)} backends "
        f"({', '.join(names)}); each backend started afresh, then {warmup} warm-up and "
        f"{args.repeat} timed maps with its pool warm; results checked against builtin map."
    )
    print(format_machine(info))
    if not_installed:
        print(f"Not installed, skipped: {', '.join(not_installed)}")
    if info["load_average"] and info["load_average"][0] > info["cores"]:
        print(
            f"Note: the load average ({info['load_average'][0]:.2f}) is already above the "
            f"{info['cores']} cores: expect slow figures."
        )
    sys.stdout.flush()  # the header before the progress bar (stderr)
    started = time.perf_counter()
    results = []
    with (
        LoadMonitor(cores=info["cores"]) as monitor,
        tqdm(
            total=len(suite) * len(names) * (warmup + args.repeat),
            unit="map",
            file=sys.stderr,
            desc="bench",
        ) as bar,
    ):
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
    load = monitor.summary()

    for result, workload in zip(results, suite, strict=True):
        print()
        print(f"[{workload.purpose}]")
        print(result)
    print()
    print(format_legend())
    print()
    if load["warning"]:
        print(textwrap.fill(load["warning"], 96))
    print(f"Whole suite: {elapsed:.1f} s")

    document = {
        "machine": info,
        "run": {
            "backends": names,
            "workloads": [w.name for w in suite],
            "items": args.items,
            "repeat": args.repeat,
            "warmup": warmup,
            "seconds": round(elapsed, 3),
            **load,
        },
        "rows": [row for result in results for row in result.to_dicts()],
    }
    written = _write_results(out.resolve(), results, document, can_plot)
    print()
    if args.json:
        _write_json(Path(args.json), document)
        print(f"Rows also written to {args.json}")
    if args.plot:
        _plot(Path(args.plot), results, document)
        print(f"Chart also saved to {args.plot}")
    print(f"Results in {out.resolve()}{os.sep}:")
    width = max(len(label) for label, _ in written)
    for label, path in written:
        print(f"  {label:<{width}}  {path}")
    return 0


def _write_results(
    out: Path, results: list, document: dict, can_plot: bool
) -> list[tuple[str, str]]:
    """Write the folder's files; return ``(label, path or why not)`` for each."""
    from unified_map.report import PLOT_INSTALL_HINT, format_markdown

    written = []
    files = {"rows": OUT_FILES["rows"]}
    if can_plot:
        _plot(out / OUT_FILES["plot"], results, document)
        written.append(("plot", str(out / OUT_FILES["plot"])))
        files["plot"] = OUT_FILES["plot"]
    else:
        written.append(("plot", f"not drawn: matplotlib is missing ({PLOT_INSTALL_HINT})"))
    _write_json(out / OUT_FILES["rows"], document)
    written.append(("rows", str(out / OUT_FILES["rows"])))
    summary = format_markdown(results, document["machine"], document["run"], files)
    (out / OUT_FILES["summary"]).write_text(summary, encoding="utf-8")
    written.append(("summary", str(out / OUT_FILES["summary"])))
    return written


def _write_json(path: Path, document: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
        file.write("\n")


def _plot(path: Path, results: list, document: dict) -> None:
    from unified_map.report import format_machine, plot_results

    busy = " - on a busy machine: see the warning below" if document["run"].get("busy") else ""
    title = f"unified-map bench{busy}\n" + format_machine(document["machine"], width=130)
    plot_results(results, path, title=title, warning=document["run"].get("warning"))


def _unusable_folder(path: Path) -> str | None:
    """Create the results folder ``path``; say why it cannot be used, or ``None``."""
    if path.exists() and not path.is_dir():
        return "it exists and is not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(path, os.W_OK | os.X_OK):
        return "the directory is not writable"
    return None


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
