"""README.md stays true: its quickstart runs as written and its set-up commands are the ones
CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import run_python

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"


def test_quickstart_runs_as_written():
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    result = run_python(snippet, timeout=300)
    assert result.returncode == 0, result.stderr
    # The last line prints the benchmark table: every installed backend ran and was checked.
    for name in ("serial", "threads", "multiprocessing", "futures", "joblib", "dask"):
        assert name in result.stdout
    assert "failed" not in result.stdout


def readme_blocks() -> dict[str, str]:
    """The whole fenced ``bash`` block after each ``<!-- ci:NAME -->`` marker, as a reader
    of README.md sees it."""
    pattern = r"<!-- ci:(\w+) -->\n```bash\n(.*?)```"
    return {name: body.strip() for name, body in re.findall(pattern, README.read_text(), re.S)}


def ci_extracts(name: str) -> str:
    """What ``.ci/run`` will run for ``name``: its own ``readme_command`` function, taken out
    of the script and run by bash on README.md."""
    script = CI_SCRIPT.read_text()
    (function,) = re.findall(r"^readme_command\(\) \{\n.*?^\}\n", script, flags=re.S | re.M)
    completed = subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{function}\nreadme_command "$1"', "bash", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return completed.stdout.strip()


def test_ci_runs_exactly_the_commands_readme_shows():
    shown = readme_blocks()
    assert set(shown) == {"main", "test"}
    for name, command in shown.items():
        assert "\n" not in command, f"ci:{name}: CI runs one line, the block shows several"
        assert ci_extracts(name) == command
    script = CI_SCRIPT.read_text()
    assert 'bash -c "$test_command"' in script and 'bash -c "$main_command"' in script
    # The test command installs the test extra and runs the whole suite; the main one runs
    # the project's main job.
    assert re.search(r'\.\[[^\]]*\btest\b[^\]]*\]"', shown["test"]), shown["test"]
    assert shown["test"].endswith("python -m pytest")
    assert shown["main"].endswith("python -m unified_map")
