"""Ray: the local instance the ``"ray"`` backend starts (results, errors, cancelling, its
sockets on loopback, quiet, gone at exit), and the multi-node suite run in a network namespace.

The contract suite runs on ``"ray-local"`` in this process (see ``tests/conftest.py``). A Ray
head with worker nodes is started only inside a network namespace that has nothing but
``lo``, since Ray rewrites 127.0.0.1 to the machine's outward address: the test
:func:`test_multi_node_suite_in_a_loopback_only_namespace` runs ``tests/ns_ray_cluster.py``
(the generic cluster suite, the ``ray-connected`` contract and Ray's own cases) in a child
pytest started under ``unshare -n`` (as root; ``unshare -r -n`` otherwise). Run only this
file with ``python -m pytest tests/test_cluster_ray.py --durations=10``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy
import psutil
import pytest

import unified_map as um
from tests.helpers import is_alive, run_python
from tests.test_cluster_common import REPO_ROOT

LOOPBACK_ONLY = "ip link set lo up"
#: A stand-in outward address on lo: Ray takes it for the machine's, and any use shows.
STAND_IN = (
    "ip link set lo up && ip addr add 10.200.0.1/24 dev lo && "
    "ip route add default dev lo src 10.200.0.1"
)


def in_namespace(setup: str, command: list[str]) -> list[str]:
    """``command`` in a new network namespace prepared by the shell commands ``setup``."""
    user = [] if os.geteuid() == 0 else ["-r"]  # without root: a user namespace too
    return ["unshare", *user, "-n", "sh", "-c", f'{setup} && exec "$@"', "ns", *command]


def ray_processes() -> set[int]:
    """Pids of Ray's daemons on this machine (to check that none is left by a test)."""
    found = set()
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("raylet", "gcs_server"):
            found.add(process.pid)
    return found


def test_multi_node_suite_in_a_loopback_only_namespace(tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("the Ray multi-node tests need unshare (util-linux) to make a namespace")
    env = dict(os.environ)
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        env.pop(key, None)
    env.update(
        UNIFIED_MAP_RAY_NAMESPACE="1",
        RAY_AUTH_TOKEN_PATH=str(tmp_path / "auth_token"),  # ~/.ray is left alone
        RAY_USAGE_STATS_ENABLED="0",
    )
    before = ray_processes()
    home_token = os.path.expanduser("~/.ray/auth_token")
    home_token_existed = os.path.exists(home_token)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["tests/ns_ray_cluster.py", "tests/test_contract.py"]
    command += ["-k", "ns_ray_cluster or ray-connected", "--durations=5"]
    result = subprocess.run(
        in_namespace(LOOPBACK_ONLY, command),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (tmp_path / "child.log").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    print(result.stdout[-6000:])
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    assert " passed" in tail and "skipped" not in tail, tail
    assert not ray_processes() - before, "Ray daemons left running by the namespaced tests"
    assert os.path.exists(home_token) == home_token_existed  # ~/.ray left as it was


LOOPBACK_CHECK = r"""
import json, subprocess, threading, time
import unified_map as um

def slow(x):
    time.sleep(0.05)
    return x + 1

samples, done = [], threading.Event()

def sample():
    while not done.is_set():
        samples.append(subprocess.run(["ss", "-tuanp"], capture_output=True, text=True).stdout)
        time.sleep(0.1)

thread = threading.Thread(target=sample)
thread.start()
try:
    assert um.parallel(slow, range(60), backend="ray", chunksize=2) == list(range(1, 61))
finally:
    done.set()
    thread.join()

def host(endpoint):
    return endpoint.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")

LOOPBACK, ANY = {"127.0.0.1", "::1"}, {"0.0.0.0", "*", "::"}
lines = [line.split() for s in samples for line in s.splitlines()[1:] if line.strip()]
# Netid State Recv-Q Send-Q Local Peer Process
elsewhere = [
    " ".join(l) for l in lines
    if host(l[4]) not in LOOPBACK | ANY or host(l[5]) not in LOOPBACK | ANY
]
anywhere = [" ".join(l) for l in lines if l[1] == "LISTEN" and host(l[4]) in ANY]
print(json.dumps({"sockets": len(lines), "elsewhere": elsewhere, "anywhere": anywhere}))
"""


def test_local_instance_keeps_every_socket_on_loopback(tmp_path):
    # In a namespace whose lo also carries 10.200.0.1 and a default route through it, Ray
    # takes 10.200.0.1 for the machine's outward address: during a map, no TCP or UDP socket
    # may use it or talk to any address but loopback (Ray's API server, not started, would
    # ask the cloud metadata service at 169.254.169.254).
    if shutil.which("unshare") is None or shutil.which("ss") is None:
        pytest.fail("this test needs unshare and ss")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "auth_token")
    result = subprocess.run(
        in_namespace(STAND_IN, [sys.executable, "-c", LOOPBACK_CHECK]),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["sockets"] > 5, found  # ss saw Ray's sockets
    assert found["elsewhere"] == [] and found["anywhere"] == [], found


# -- the local instance, in this process --------------------------------------------------------


def zeros(n):
    return numpy.zeros(n)


def test_results_are_ordinary_writeable_objects():
    small, big = um.parallel(zeros, [3, 2_000_000], backend="ray", chunksize=1)
    assert small.flags.writeable and big.flags.writeable  # Ray's own would be read-only
    big[0] = 1.0
    payloads = [numpy.full(1_500_000, i, dtype=numpy.uint8) for i in range(4)]
    assert um.parallel(len, payloads, backend="ray") == [1_500_000] * 4  # 1.5 MB chunks


def mark_then_sleep(x, folder):
    """Item 0 returns at once; the others record that they started, then sleep until
    interrupted (and record that too)."""
    if x == 0:
        return x
    open(os.path.join(folder, f"started-{x}"), "w").close()
    try:
        time.sleep(300)
    except KeyboardInterrupt:
        open(os.path.join(folder, f"interrupted-{x}"), "w").close()
        raise
    return x


def test_closing_an_imap_interrupts_running_chunks_and_drops_queued_ones(tmp_path):
    results = um.imap(mark_then_sleep, range(40), [str(tmp_path)] * 40, backend="ray", chunksize=1)
    assert next(results) == 0
    results.close()
    deadline = time.monotonic() + 120  # a correctness bound: interrupts come within 0.2 s
    while time.monotonic() < deadline:
        names = os.listdir(tmp_path)
        started = {n.split("-")[1] for n in names if n.startswith("started-")}
        interrupted = {n.split("-")[1] for n in names if n.startswith("interrupted-")}
        if started and started == interrupted:
            break
        time.sleep(0.2)
    assert started and started == interrupted, (sorted(started), sorted(interrupted))
    assert len(started) < 39, "queued chunks ran after the consumer stopped"
    assert um.parallel(abs, [-1, -2], backend="ray") == [1, 2]  # the workers are free again


def test_many_early_stopped_maps_leave_the_driver_alive():
    # ray.cancel racing with a task's reply killed the driver in Ray 2.60 (see _CancelWatch):
    # a few hundred of these in a row ended the process within seconds.
    for _ in range(150):
        results = um.imap(abs, itertools.count(), backend="ray", chunksize=5)
        assert [next(results) for _ in range(10)] == list(range(10))
        results.close()
    assert um.parallel(abs, [-4], backend="ray") == [4]


@pytest.fixture
def submitted(monkeypatch) -> list:
    """The arguments of every Ray task the ray backend submits, as they were sent."""
    from unified_map.backends import ray as ray_backend

    sent = []
    original = ray_backend._task

    def spy():
        task = original()

        class Recording:
            def remote(self, *args):
                sent.append(args)
                return task.remote(*args)

        return Recording()

    monkeypatch.setattr(ray_backend, "_task", spy)
    return sent


def test_chunks_are_tasks_not_one_task_per_item(submitted):
    assert um.parallel(abs, range(-500, 500), backend="ray") == [abs(x) for x in range(-500, 500)]
    assert 1 <= len(submitted) <= 32
    for func, header, *buffers in submitted:
        assert isinstance(func, bytes) and isinstance(header, bytes) and buffers == []


def test_a_big_func_goes_to_the_object_store_once_and_items_out_of_band(submitted):
    from unified_map.backends import ray as ray_backend

    table = numpy.arange(1_000_000)  # 8 MB that func closes over

    def lookup(array):
        return table[array].sum()

    arrays = [numpy.arange(i, i + 300_000) for i in range(12)]  # 2.4 MB each
    expected = [table[a].sum() for a in arrays]
    assert um.parallel(lookup, arrays, backend="ray", chunksize=2) == expected
    funcs = {id(func) for func, *_ in submitted}
    assert len(submitted) == 6 and len(funcs) == 1  # one shared func for the whole map
    (func,) = {func for func, *_ in submitted}
    assert isinstance(func, ray_backend.SharedFunc)
    for _, header, *buffers in submitted:
        assert len(header) < 10_000 and len(buffers) == 2  # the arrays travel out of band


@pytest.mark.parametrize("imports", ["unified_map", "ray first"])
def test_a_script_using_the_ray_backend_is_quiet_and_leaves_nothing(tmp_path, imports):
    # "ray first": Ray reads its authentication settings when it is imported; a script that
    # imported it before unified_map was refused by the local instance ("InvalidAuthToken",
    # retried once a second for ever) until the settings were reloaded.
    result = run_python(
        ("import ray\n" if imports == "ray first" else "")
        + """
import os, psutil
import unified_map as um
print(um.parallel(abs, [-1, -2, -3], backend="ray"))
print(sorted(p.pid for p in psutil.Process().children(recursive=True)))
""",
        timeout=180,
        cwd=REPO_ROOT,
        env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token"), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    output, children = result.stdout.splitlines()
    assert output == "[1, 2, 3]"
    assert result.stderr == ""
    left = [pid for pid in json.loads(children) if psutil.pid_exists(pid)]
    for pid in left:  # zombies reaped by init a moment later do not count
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
        except psutil.NoSuchProcess:
            pass
    assert not os.path.exists(tmp_path / ".ray" / "auth_token")  # no token file written


KILLED_DRIVER = """
import json, psutil, time
import unified_map as um
um.parallel(abs, [-1], backend="ray")
print(json.dumps([p.pid for p in psutil.Process().children(recursive=True)]), flush=True)
time.sleep(600)
"""


def test_the_local_instance_dies_with_a_killed_driver(tmp_path):
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    driver = subprocess.Popen(
        [sys.executable, "-c", KILLED_DRIVER], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE
    )
    pids = []
    try:
        pids = json.loads(driver.stdout.readline())
        assert pids, "the driver started no process?"
        driver.kill()  # SIGKILL: no exit handler runs
        driver.wait(30)
        deadline = time.monotonic() + 60  # a correctness bound, not a speed target
        while [pid for pid in pids if is_alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in pids if is_alive(pid)], "Ray processes outlived the driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in pids:
            if is_alive(pid):
                psutil.Process(pid).kill()
