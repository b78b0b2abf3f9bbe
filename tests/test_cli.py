"""The ``unified-map`` command: argument parsing, and a small real ``bench`` run.

Tiny sizes and no timing assertions; the full default suite is too slow for the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
    with pytest.raises(SystemExit) as excinfo:
        cli.main([*argv, "--repeat", "1", option, str(path)])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert f"cannot write {option} {path}" in err and "does not exist" in err
    assert "Traceback" not in err
    assert "tiny:" not in out and "Whole suite" not in out  # no workload ran


def test_output_that_is_a_directory_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["bench", "--backends", "serial", "--json", str(tmp_path)])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "it is a directory" in err and "Whole suite" not in out


def test_plot_without_matplotlib_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    argv = ["bench", "--backends", "serial", "--workloads", "tiny", "--items", "3"]
    with pytest.raises(SystemExit) as excinfo:
        cli.main([*argv, "--repeat", "1", "--plot", str(tmp_path / "bench.png")])
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "pip install unified_map[plot]" in err
    assert "tiny:" not in out and "Whole suite" not in out
    assert not (tmp_path / "bench.png").exists()


def test_python_m_bench_with_a_missing_json_directory_fails_without_traceback(tmp_path):
    path = tmp_path / "missing" / "rows.json"
    argv = [sys.executable, "-m", "unified_map", "bench", "--backends", "serial"]
    argv += ["--items", "2", "--repeat", "1", "--json", str(path)]
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


def test_bench_in_process_writes_json_and_plot(tmp_path, capsys):
    rows_path, plot_path = tmp_path / "rows.json", tmp_path / "bench.png"
    argv = ["bench", "--backends", "serial,threads", "--workloads", "tiny,uneven"]
    argv += ["--items", "5", "--repeat", "1", "--json", str(rows_path), "--plot", str(plot_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "tiny: 5 items, 1 run after 1 warm-up" in out
    assert "uneven: 5 items" in out
    rows = json.loads(rows_path.read_text())
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
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    for workload in ["tiny", "cpu-bound", "payload", "uneven"]:
        assert f"{workload}: 3 items" in completed.stdout
    assert "Whole suite:" in completed.stdout
    assert "bench" in completed.stderr  # the progress bar goes to stderr
    rows = json.loads(rows_path.read_text())
    assert len(rows) == 8 and all(row["error"] is None for row in rows)


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
        [sys.executable, "-m", "unified_map", "status", "127.0.0.1:9", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "tcp://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_scheduler_and_worker_commands_serve_until_sigterm():
    import cluster_setup
    from tests.helpers import BlockingScript

    scheduler = BlockingScript(_cli_script("scheduler", "--address", "127.0.0.1:0"))
    try:
        address = scheduler.wait_for(r"scheduler at (tcp://\S+?)[,;]")
        worker = BlockingScript(_cli_script("worker", address, "--n-workers", "2"))
        try:
            worker.wait_for(r"2 \S+ worker\(s\) joined")
            with cluster_setup.dask.connect_to_scheduler(address):
                assert len(cluster_setup.dask.report_status().workers) == 2
            worker.terminate_and_check()  # exits 0, leaves no child behind
        finally:
            worker.kill()
        scheduler.terminate_and_check()
    finally:
        scheduler.kill()
