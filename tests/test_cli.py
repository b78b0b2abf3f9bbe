"""The ``unified-map`` command: argument parsing, help texts, and small real ``bench`` runs
with their results folder.

Tiny sizes and no timing assertions; the full default suite is too slow for the test run.
Every ``bench`` run here writes into a temporary ``--out`` folder, never into the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unified_map import cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_bench_options_are_parsed():
    args = parse(
        "bench",
        "--backends",
        "serial, threads,dask",
        "--workloads",
        "tiny",
        "--items",
        "7",
        "--repeat",
        "2",
        "--json",
        "rows.json",
        "--plot",
        "bench.png",
    )
    assert args.command == "bench"
    assert args.backends == ["serial", "threads", "dask"]
    assert args.workloads == ["tiny"]
    assert (args.items, args.repeat, args.json, args.plot) == (7, 2, "rows.json", "bench.png")


def test_bench_defaults():
    args = parse("bench")
    assert args.backends is None and args.workloads is None and args.items is None
    assert (args.repeat, args.json, args.plot) == (3, None, None)
    assert args.out == "unified_map_bench"


def test_the_default_results_folder_is_ignored_by_git():
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "unified_map_bench/" in ignored


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_a_help_text():
    parser = cli.build_parser()
    commands = _subcommands(parser)
    assert {"bench", "scheduler", "worker", "status", "launch"} <= set(commands)
    missing = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, command in [("unified-map", parser), *commands.items()]
        for action in command._actions
        if not isinstance(action, argparse._SubParsersAction)
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


@pytest.mark.parametrize("command", ["worker", "status"])
def test_port_zero_hint_is_not_given_where_nothing_listens(command, capsys):
    with pytest.raises(SystemExit):
        parse(command, "--help")
    assert "port 0" not in " ".join(capsys.readouterr().out.split())
    assert cli.main([command, "dask", "nonsense"]) == 1
    err = capsys.readouterr().err
    assert "invalid address 'nonsense'" in err and "port 0" not in err


def test_port_zero_hint_is_given_where_the_scheduler_listens(capsys):
    with pytest.raises(SystemExit):
        parse("scheduler", "--help")
    assert "port 0 picks a free one" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["scheduler", "dask", "--address", "nonsense"]) == 1
    assert "port 0 picks a free one" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--items", "0"],
        ["bench", "--items", "many"],
        ["bench", "--repeat", "-1"],
        ["bench", "--backends", ","],
        ["bench", "--colour"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        parse(*argv)
    assert excinfo.value.code == 2
    assert "usage: unified-map" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--backends", "serial,nope"], "unknown backend(s) nope; valid:"),
        (["bench", "--workloads", "tiny,huge"], "unknown workload(s) huge; valid:"),
    ],
)
def test_unknown_names_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_in_a_missing_directory_is_refused_before_any_work(option, tmp_path, capsys):
    path = tmp_path / "no-such-dir" / "out.file"
    argv = ["bench", "--backends", "serial", "--workloads", "tiny", "--items", "3"]
    argv += ["--out", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as excinfo:
        cli.main([*argv, "--repeat", "1", option, str(path)])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert f"cannot write {option} {path}" in err and "does not exist" in err
    assert "Traceback" not in err
    assert "tiny:" not in out and "Whole suite" not in out  # no workload ran
    assert not (tmp_path / "results").exists()


def test_output_that_is_a_directory_is_refused(tmp_path, capsys):
    argv = ["bench", "--backends", "serial", "--out", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as excinfo:
        cli.main([*argv, "--json", str(tmp_path)])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "it is a directory" in err and "Whole suite" not in out


def test_results_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["bench", "--backends", "serial", "--out", str(tmp_path / "taken")])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "cannot write to --out" in err and "not a directory" in err
    assert "Whole suite" not in out


def test_plot_without_matplotlib_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    argv = ["bench", "--backends", "serial", "--workloads", "tiny", "--items", "3"]
    argv += ["--out", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as excinfo:
        cli.main([*argv, "--repeat", "1", "--plot", str(tmp_path / "bench.png")])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "pip install unified_map[plot]" in err
    assert "tiny:" not in out and "Whole suite" not in out
    assert not (tmp_path / "bench.png").exists()


def test_without_matplotlib_the_bench_runs_and_says_how_to_get_the_chart(
    monkeypatch, tmp_path, capsys
):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out_dir = tmp_path / "results"
    argv = ["bench", "--backends", "serial", "--workloads", "tiny", "--items", "3"]
    assert cli.main([*argv, "--repeat", "1", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "plot     not drawn: matplotlib is missing (pip install unified_map[plot])" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["bench.json", "summary.md"]
    assert "![" not in (out_dir / "summary.md").read_text()


def test_python_m_bench_with_a_missing_json_directory_fails_without_traceback(tmp_path):
    path = tmp_path / "missing" / "rows.json"
    argv = [sys.executable, "-m", "unified_map", "bench", "--backends", "serial"]
    argv += ["--items", "2", "--repeat", "1", "--json", str(path), "--out", str(tmp_path / "r")]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert "usage: unified-map" in completed.stderr and str(path) in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Whole suite" not in completed.stdout


def test_no_arguments_runs_the_default_bench(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_bench", lambda args, parser=None: seen.append(args) or 0)
    assert cli.main([]) == 0
    assert seen[0].command == "bench" and seen[0].backends is None and seen[0].repeat == 3
    assert seen[0].out == "unified_map_bench"


def test_options_without_a_command_are_options_of_bench(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_bench", lambda args, parser=None: seen.append(args) or 0)
    assert cli.main(["--out", "elsewhere", "--repeat", "2"]) == 0  # python -m unified_map --out
    assert seen[0].command == "bench" and (seen[0].out, seen[0].repeat) == ("elsewhere", 2)
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])  # still the help of the whole command
    assert excinfo.value.code == 0


def test_bench_in_process_writes_json_and_plot(tmp_path, capsys):
    rows_path, plot_path = tmp_path / "rows.json", tmp_path / "bench.png"
    argv = ["bench", "--backends", "serial,threads", "--workloads", "tiny,uneven"]
    argv += ["--items", "5", "--repeat", "1", "--json", str(rows_path), "--plot", str(plot_path)]
    assert cli.main([*argv, "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "tiny: 5 items, 1 run after 1 warm-up" in out
    assert "uneven: 5 items" in out
    document = json.loads(rows_path.read_text())
    assert document == json.loads((tmp_path / "results" / "bench.json").read_text())
    rows = document["rows"]
    assert {(row["workload"], row["backend"]) for row in rows} == {
        ("tiny", "serial"),
        ("tiny", "threads"),
        ("uneven", "serial"),
        ("uneven", "threads"),
    }
    assert all(row["error"] is None and row["n_items"] == 5 for row in rows)
    assert plot_path.read_bytes()[:8] == PNG_SIGNATURE


def test_python_m_unified_map_bench_runs(tmp_path):
    """A real command-line run over every workload, one failing backend included."""
    rows_path = tmp_path / "rows.json"
    argv = [sys.executable, "-m", "unified_map", "bench", "--backends", "serial,multiprocessing"]
    argv += ["--items", "3", "--repeat", "1", "--json", str(rows_path)]
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    for workload in ["tiny", "cpu-bound", "payload", "uneven"]:
        assert f"{workload}: 3 items" in completed.stdout
    assert "Whole suite:" in completed.stdout
    assert "bench" in completed.stderr  # the progress bar goes to stderr
    rows = json.loads(rows_path.read_text())["rows"]
    assert len(rows) == 8 and all(row["error"] is None for row in rows)
    # The default results folder, in the working directory; its paths end the output.
    folder = tmp_path / "unified_map_bench"
    assert sorted(p.name for p in folder.iterdir()) == ["bench.json", "bench.png", "summary.md"]
    assert completed.stdout.rstrip().endswith(str(folder / "summary.md"))


def _machine_details_head(out: str) -> None:
    head = "\n".join(out.splitlines()[:6])
    for words in ["Measured ", " cores, ", " GiB memory", "load average", "CPython", "numpy"]:
        assert words in head, (words, head)


def test_bench_writes_its_results_folder_headed_by_the_machine(tmp_path, capsys):
    out_dir = tmp_path / "new" / "results"  # created, parents too
    argv = ["bench", "--backends", "serial,threads", "--workloads", "tiny,cpu-bound"]
    assert cli.main([*argv, "--items", "4", "--repeat", "1", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    _machine_details_head(out)
    # What each column means, under the tables.
    legend = out.index("Columns:")
    assert out.rindex("overhead us/item") > legend > out.rindex("cpu-bound: 4 items")
    for column in ["workers", "start-up s", "median/min/max s", "speedup", "overhead us/item"]:
        assert f"\n  {column} " in out[legend:]
    # Where the files are, at the end.
    end = out[out.index("Results in") :].splitlines()
    assert end[0] == f"Results in {out_dir.resolve()}{os.sep}:"
    assert [line.split()[0] for line in end[1:]] == ["plot", "rows", "summary"]
    assert (out_dir / "bench.png").read_bytes()[:8] == PNG_SIGNATURE
    document = json.loads((out_dir / "bench.json").read_text())
    assert list(document) == ["machine", "run", "rows"]  # the details head the file
    machine = document["machine"]
    assert {"date", "cores", "memory_bytes", "load_average", "python", "packages"} <= set(machine)
    assert machine["cores"] == os.cpu_count() and machine["packages"]["unified_map"]
    assert document["run"]["busy"] in (True, False) and "load_average_max" in document["run"]
    assert {(r["workload"], r["backend"]) for r in document["rows"]} == {
        (w, b) for w in ["tiny", "cpu-bound"] for b in ["serial", "threads"]
    }
    summary = (out_dir / "summary.md").read_text()
    assert summary.startswith("# unified-map bench")
    assert "| backend | tiny (4 items) | cpu-bound (4 items) |" in summary
    assert "](bench.png)" in summary and "`bench.json`" in summary


def test_a_busy_machine_is_warned_about_in_the_output_the_json_and_the_summary(
    monkeypatch, tmp_path, capsys
):
    cores = os.cpu_count()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, cores + 2.0, cores + 1.0))
    out_dir = tmp_path / "results"
    argv = ["bench", "--backends", "serial", "--workloads", "tiny", "--items", "3"]
    assert cli.main([*argv, "--repeat", "1", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"load average ({cores + 3.0:.2f}) is already above the {cores} cores" in out
    warning = f"WARNING: the machine was busy: load average up to {cores + 3.0:.1f} on {cores}"
    assert warning in out
    run = json.loads((out_dir / "bench.json").read_text())["run"]
    assert run["busy"] is True and run["warning"].startswith(warning)
    assert warning in (out_dir / "summary.md").read_text()


def _cli_script(*argv: str) -> str:
    return (
        "import sys\nfrom unified_map.cli import main\n"
        f"code = main({list(argv)!r})\nprint('returned', flush=True)\nsys.exit(code)\n"
    )


def test_status_prints_the_workers_of_a_running_cluster(dask_cluster):
    result = subprocess.run(
        [sys.executable, "-m", "unified_map", "status", dask_cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"dask cluster at {dask_cluster.address}: connected" in result.stdout
    for worker in dask_cluster.worker_addresses:
        assert worker in result.stdout


def test_status_of_an_unreachable_scheduler_fails_with_its_address():
    result = subprocess.run(
        [sys.executable, "-m", "unified_map", "status", "dask", "127.0.0.1:9", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "127.0.0.1:9: connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_and_worker_commands_serve_until_sigterm(tmp_path):
    """Through a scheduler file, one line per event, no engine log without --verbose."""
    import cluster_setup
    from tests.helpers import BlockingScript

    path = str(tmp_path / "scheduler.json")
    scheduler = BlockingScript(
        _cli_script("scheduler", "dask", "--address", "127.0.0.1:0", "--scheduler-file", path)
    )
    try:
        address = scheduler.wait_for(r"scheduler listening at (tcp://\S+?)[,;]")
        assert json.loads(Path(path).read_text())["address"] == address
        worker = BlockingScript(
            _cli_script("worker", "dask", "--scheduler-file", path, "--cores", "2")
        )
        try:
            worker.wait_for(r"2 dask worker\(s\) joined")
            scheduler.wait_for(r"worker joined: (tcp://\S+)")
            with cluster_setup.dask.connect_to_scheduler(scheduler_file=path):
                assert len(cluster_setup.dask.report_status().workers) == 2
            worker.terminate_and_check()  # exits 0, leaves no child behind
        finally:
            worker.kill()
        scheduler.wait_for(r"(worker left: tcp://\S+)")
        scheduler.terminate_and_check()
        assert not os.path.exists(path)  # the scheduler file goes with its scheduler
        for script in (scheduler, worker):
            assert not [line for line in script.lines if " - INFO - " in line], script.lines
            assert all(line.startswith("unified-map ") for line in script.lines), script.lines
    finally:
        scheduler.kill()


def test_a_refused_connection_is_said_at_once(dask_cluster, capsys):
    """status fails at once; a worker says so and keeps trying until its timeout. A command
    run in a process stops only what it started there (not the session's cluster)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert cli.main(["status", f"127.0.0.1:{port}", "--timeout", "120"]) == 1
        err = capsys.readouterr().err
        assert "connection refused" in err and f"127.0.0.1:{port}" in err
        assert cli.main(["worker", "dask", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}: connection refused; the workers keep trying" in err
    assert all(process.running for process in dask_cluster.processes)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", "dask"], "give the scheduler's ADDRESS or --scheduler-file FILE"),
        (["worker", "dask", "1.2.3.4:5", "--scheduler-file", "f"], "ADDRESS or --scheduler-file"),
        (["status"], "give the scheduler's ADDRESS or --scheduler-file FILE"),
        (["status", "dask", "a:1", "b:2"], "expected [ENGINE] [ADDRESS]"),
        (["launch", "dask", "--scheduler-file", "f"], "launch needs the command"),
    ],
)
def test_cluster_commands_refuse_what_they_cannot_do(argv, message, capsys):
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


def test_launch_takes_everything_after_the_double_dash_as_the_command(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_launch", lambda hpc, args: seen.update(vars(args)) or 0)
    argv = ["launch", "spark", "--scheduler-file", "f.json", "--cores", "3", "--memory", "2g"]
    assert cli.main([*argv, "--", "python", "script.py", "--cores", "9"]) == 0
    assert seen["command_line"] == ["python", "script.py", "--cores", "9"]
    assert (seen["engine"], seen["cores"], seen["memory"]) == ("spark", 3, 2 * 2**30)
