"""README.md stays true: its quickstart runs as written and its set-up commands are the ones
CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import run_python

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs_as_written():
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    result = run_python(snippet, timeout=300)
    assert result.returncode == 0, result.stderr
    # The last line prints the benchmark table: every installed backend ran and was checked.
    for name in ("serial", "threads", "multiprocessing", "futures", "joblib", "dask"):
        assert name in result.stdout
    assert "failed" not in result.stdout


def test_ci_runs_the_commands_readme_shows():
    text = README.read_text()
    for marker in ("<!-- ci:main -->", "<!-- ci:test -->"):
        assert re.search(re.escape(marker) + r"\n```bash\n.+\n```", text), marker
