"""Run the multi-node Ray suite (``tests/ns_ray_cluster.py`` and the ``ray-connected``
contract) in a network namespace that has only ``lo``, and check it left nothing behind.

Ray rewrites 127.0.0.1 to the machine's outward address, so a head with worker nodes is only
started where there is no other address: ``unshare -n`` (as root; ``unshare -r -n``, a user
namespace too, otherwise). README's test command runs this after the main suite::

    python -m tests.ray_in_namespace

It is a step of its own, not a test inside the main pytest: started from the main pytest
process, the namespaced pytest exited with code 1 and no output midway, 2 times in 2 runs
today (and 3 in 7 before), while it passed every time started directly (8 of 8); the cause
was not found (see the closing note of issues 8/9).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ray_daemons() -> set[int]:
    """Pids of Ray's daemons on this machine."""
    return {
        process.pid
        for process in psutil.process_iter(["name"])
        if process.info["name"] in ("raylet", "gcs_server")
    }


def main() -> int:
    if shutil.which("unshare") is None:
        print("the Ray multi-node tests need unshare (util-linux) to make a namespace")
        return 1
    user = [] if os.geteuid() == 0 else ["-r"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home_token = os.path.expanduser("~/.ray/auth_token")
    home_token_existed = os.path.exists(home_token)
    before = ray_daemons()
    with tempfile.TemporaryDirectory(prefix="um-ray-ns-") as folder:
        env.update(
            UNIFIED_MAP_RAY_NAMESPACE="1",
            RAY_AUTH_TOKEN_PATH=os.path.join(folder, "auth_token"),  # ~/.ray left alone
            RAY_USAGE_STATS_ENABLED="0",
        )
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        command += ["tests/ns_ray_cluster.py", "tests/test_contract.py"]
        command += ["-k", "ns_ray_cluster or ray-connected", "--durations=5"]
        setup = 'ip link set lo up && exec "$@"'
        returncode = subprocess.call(
            ["unshare", *user, "-n", "sh", "-c", setup, "ns", *command], cwd=REPO_ROOT, env=env
        )
    left = ray_daemons() - before
    if left:
        print(f"Ray daemons left running by the namespaced tests: {sorted(left)}")
        return 1
    if os.path.exists(home_token) != home_token_existed:
        print("the namespaced tests changed ~/.ray/auth_token")
        return 1
    return returncode


if __name__ == "__main__":
    sys.exit(main())
