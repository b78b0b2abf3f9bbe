"""The Dask dashboard: the link ``report_status()`` prints answers with the dashboard itself.

The session cluster (``tests/cluster_fixtures.py``) starts its scheduler with a dashboard on a
free port of 127.0.0.1. Without bokeh the link answers with a page saying "Dask needs
bokeh>=3.1.0 for the dashboard"; the ``dask`` extra installs bokeh so that it does not.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import cluster_setup


def test_dashboard_link_opens_the_dask_dashboard(dask_connection):
    link = cluster_setup.dask.report_status().dashboard_link
    assert link, "the session scheduler was started with a dashboard, but no link is reported"
    assert urlsplit(link).hostname == "127.0.0.1"
    with urllib.request.urlopen(link, timeout=30) as response:
        status = response.status
        page = response.read().decode("utf-8", errors="replace")
    assert status == 200
    assert "needs bokeh" not in page.lower(), page[:500]
    assert "bokeh" in page.lower() and "dask" in page.lower(), page[:500]


def test_dask_extra_installs_the_dashboard_needs():
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    dask_extra = re.search(r'"dask":\s*\[([^\]]*)\]', setup_py.read_text(encoding="utf-8"))
    assert dask_extra, "setup.py has no dask extra"
    assert '"bokeh>=3.1.0"' in dask_extra.group(1)
