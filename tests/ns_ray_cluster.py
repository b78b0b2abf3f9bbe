"""Ray with a head and worker nodes: the generic cluster suite, the connected contract suite,
and what only Ray does (its token, cancelling tasks), on a head and two worker nodes started
through ``cluster_setup.ray`` once for the session.

Ray rewrites 127.0.0.1 to the machine's outward address, so these tests run only inside a
network namespace that has nothing but ``lo``, where there is no other address to use:
``tests/test_cluster_ray.py`` runs this module (and the contract suite's ``ray-connected``
tests) in a child pytest started under ``unshare -n``. By hand, as root::

    unshare -n sh -c 'ip link set lo up && UNIFIED_MAP_RAY_NAMESPACE=1 \\
        python -m pytest tests/ns_ray_cluster.py tests/test_contract.py -k "ns_ray or ray-con"'

(without root, ``unshare -r -n`` where user namespaces are allowed).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time

import pytest

import cluster_setup
import unified_map as um
from tests import test_hpc
from tests.cluster_fixtures import ENGINES
from tests.helpers import run_python
from tests.test_cluster_common import REPO_ROOT, ClusterSuite


def only_loopback() -> bool:
    """Whether this process's network namespace has no interface but ``lo``."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


if not only_loopback() or os.environ.get("UNIFIED_MAP_RAY_NAMESPACE") != "1":
    pytest.skip(
        "Ray's multi-node tests run inside a network namespace with only lo: "
        "tests/test_cluster_ray.py runs them",
        allow_module_level=True,
    )


class TestRayCluster(ClusterSuite):
    @pytest.fixture
    def engine(self):
        return ENGINES["ray"]

    @pytest.fixture
    def cluster(self, ray_cluster):
        return ray_cluster


def sleep_then_mark(x, folder):
    time.sleep(0.3)
    with open(os.path.join(folder, str(x)), "w"):
        pass
    return x


def test_the_head_schedules_and_the_worker_nodes_compute(ray_cluster, ray_connection):
    status = cluster_setup.ray.report_status()
    assert [w.cores for w in status.workers] == [1, 1]  # the 0-CPU head is not a worker
    assert ray_connection.slots() == 2


def test_stopping_early_cancels_the_queued_ray_tasks(ray_connection, tmp_path):
    results = um.imap(sleep_then_mark, range(40), [str(tmp_path)] * 40, chunksize=1)
    assert next(results) == 0
    results.close()
    time.sleep(3)  # a task that was not withdrawn would have run by now
    ran = len(os.listdir(tmp_path))
    assert ran < 20, f"{ran} of 40 tasks ran after the consumer stopped"
    assert um.parallel(abs, [-1]) == [1]  # the connection still works


def test_the_head_wrote_its_token_where_ray_looks_readable_by_us_only(ray_cluster):
    path = os.environ["RAY_AUTH_TOKEN_PATH"]  # set by the parent test: ~/.ray is left alone
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as file:
        assert file.read().strip() == os.environ["RAY_AUTH_TOKEN"]


@pytest.mark.parametrize("token", ["wrong", "missing"])
def test_a_wrong_or_missing_token_is_a_clear_error_at_once(ray_cluster, token, tmp_path):
    env = dict(os.environ)
    env.pop("RAY_AUTH_TOKEN", None)
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token-here")
    if token == "wrong":
        env["RAY_AUTH_TOKEN"] = "0" * 64
    result = run_python(
        f"""
        import time
        from cluster_setup import ray
        from cluster_setup.errors import SchedulerUnreachableError
        for verb in (ray.connect_to_scheduler, ray.start_worker):
            started = time.monotonic()
            try:
                verb({ray_cluster.address!r}, timeout=20)
            except SchedulerUnreachableError as exc:
                print(round(time.monotonic() - started), exc)
        print(len(ray.started))
        """,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3, result.stdout + result.stderr
    for line in lines[:2]:
        seconds, message = line.split(" ", 1)
        assert int(seconds) < 10, line  # not Ray's retry loop
        assert ray_cluster.address in message and "refused" in message, line
        assert re.search(r"RAY_AUTH_MODE=token .*RAY_AUTH_TOKEN", message), line
    assert lines[2] == "0"  # no node was started


def test_ray_client_address_runs_maps_from_off_the_cluster(ray_cluster):
    # The head serves Ray Client (ray://) on a free port (ray[client] is part of the extra);
    # a driver that is not a cluster node connects through it.
    (head,) = [p for p in ray_cluster.processes if p.role == "scheduler"]
    (flag,) = [arg for arg in head.command if arg.startswith("--ray-client-server-port=")]
    address = f"ray://127.0.0.1:{flag.split('=')[1]}"
    # A generous limit: a try whose server process died (ray-project/ray#63202) can take
    # Ray's client a minute to report, and connect_to_scheduler then tries again.
    with cluster_setup.ray.connect_to_scheduler(address, timeout=150) as connection:
        assert cluster_setup.active_connection() is connection
        assert um.parallel(abs, range(-20, 0), chunksize=3) == list(range(20, 0, -1))
        with pytest.raises(ZeroDivisionError):
            um.parallel(lambda x: 1 / x, [1, 0])
        assert um.parallel(abs, [-5]) == [5]  # still usable after the error
    assert cluster_setup.active_connection() is None


def test_a_ray_allocation_runs_the_script_on_every_worker_and_stops_when_it_ends(tmp_path):
    # The launcher's 3-task allocation (tests/test_hpc.py), for Ray: only here, where a head
    # and worker nodes stay on loopback.
    test_hpc.test_an_allocation_runs_the_script_on_every_worker_and_stops_when_it_ends(
        "ray", tmp_path
    )
