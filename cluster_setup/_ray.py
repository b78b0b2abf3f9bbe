"""``cluster_setup.ray``: only Ray's commands, readiness probes and connection
(:class:`RayConnection`): start a head node and worker nodes, connect to a head, report on it.

Thin wrappers over Ray's own command line (``python -m ray.scripts.scripts start --head
--block`` and ``start --address ... --block``, what ``ray start`` runs) and over
:func:`ray.init`. Each node is a ``ray start`` process of its own, started with this
interpreter and stopped by its pid (never ``ray stop``, which stops every Ray process of the
machine by name). ``ray`` is imported only when a method is called.

Loopback and authentication, as Ray 2.60 behaves:

- Ray rewrites ``127.0.0.1`` to the machine's outward address and its GCS listens on every
  interface. The private local instance (:meth:`RaySetup.start_local_cluster`, what the
  ``"ray"`` backend uses without a connection) is started with Ray's single-machine switch
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and ``127.0.0.1`` as its node address, which keeps
  every socket on loopback. Several nodes on one machine stay on loopback only inside a
  network namespace that has nothing but ``lo`` (how the tests run them).
- ``ray start --head`` turns token authentication on. The token is this process's
  ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's own
  places); a head started here writes a new one there (mode 0600) when there is none. The nodes
  started here and the connections get it; nodes on other machines need the same file (or
  ``RAY_AUTH_TOKEN``) and ``RAY_AUTH_MODE=token``. A head that refuses the token is an error at
  once, not a retry loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
import zipfile
from typing import Any

from .addresses import Address, check_port_free, parse_address
from .base import ClusterSetup
from .connection import ClusterConnection
from .errors import (
    EngineNotInstalledError,
    InvalidAddressError,
    SchedulerUnreachableError,
)
from .processes import _parent_watch, make_log_dir, process_environment, remove_log_dir
from .status import WorkerInfo

__all__ = ["RaySetup", "RayConnection", "DEFAULT_ADDRESS", "import_ray", "auth_token"]

#: Ray's usual GCS port, on this machine only.
DEFAULT_ADDRESS = "127.0.0.1:6379"

#: Ray's switch that keeps a single-node instance on 127.0.0.1 (and refuses worker nodes).
_SINGLE_NODE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_ray_lock = threading.RLock()  # one ray.init at a time in this process
_current: RayConnection | None = None  # the connection whose ray.init is live
_token_lock = threading.Lock()


def import_ray():
    """Import ``ray``, or raise the install hint naming the pip extra.

    Examples
    --------
    >>> import_ray().__name__
    'ray'
    """
    if "ray" not in sys.modules:
        # Ray reads its authentication settings once, when it is imported.
        auth_token()
    try:
        import ray
    except ImportError as exc:
        raise EngineNotInstalledError(
            "cluster_setup.ray needs the package 'ray', which is not installed: "
            "pip install unified_map[ray]"
        ) from exc
    return ray


# -- authentication ------------------------------------------------------------------------


def _token_path() -> str:
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")


def auth_token(create: bool = False) -> str | None:
    """The token Ray's token authentication uses in this process, or ``None`` when it is
    turned off (``RAY_AUTH_MODE=disabled``).

    Looked up where Ray looks (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``). With none found, ``create=True`` writes a new one to that file
    (mode 0600), as ``ray start --head`` would; otherwise a new one is kept in this process
    only. Either way it is put in ``os.environ`` (``RAY_AUTH_MODE=token``,
    ``RAY_AUTH_TOKEN``): Ray reads the token once per process, at its first use.

    Examples
    --------
    >>> token = auth_token()
    >>> len(token) >= 32 and os.environ["RAY_AUTH_TOKEN"] == token
    True
    """
    with _token_lock:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            return None
        token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        path = _token_path()
        if not token:
            with contextlib.suppress(OSError), open(path) as file:
                token = file.read().strip()
        if not token:
            token = secrets.token_hex(32)  # what Ray's own generator makes
        if create and not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(handle, "w") as file:
                file.write(token)
        _use_token(token)
        return token


def _use_token(token: str) -> None:
    """Make ``token`` this process's Ray token (caller holds ``_token_lock``).

    Ray reads ``RAY_AUTH_MODE`` and the token into its config when ``ray`` is imported. A
    script that imported ``ray`` before using cluster_setup or the ``"ray"`` backend would
    keep authentication off in its driver while the nodes started for it turn it on: every
    call is then refused and Ray retries it for ever ("InvalidAuthToken", once a second).
    So when the settings change after ``ray`` was imported, and no Ray session is live yet,
    Ray's config and token cache are read again (what Ray's own tests do between sessions).
    """
    changed = (os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN")) != (
        "token",
        token,
    )
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    ray = sys.modules.get("ray")
    if not changed or ray is None or not hasattr(ray, "is_initialized") or ray.is_initialized():
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # the config first: the token loader checks the mode it holds
    AuthenticationTokenLoader.instance().reset_cache()


def _auth_hint() -> str:
    return (
        f"every node and driver needs RAY_AUTH_MODE=token and the head's token, in "
        f"RAY_AUTH_TOKEN or in the file {_token_path()} (RAY_AUTH_TOKEN_PATH)"
    )


def _node_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``ray start`` process: the token, no usage stats, and not the
    single-node switch (it makes ``ray start --address`` refuse to join)."""
    env = process_environment(extra)
    token = auth_token()
    if token is not None:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A Ray Client driver gets a server process of its own on the head, which Ray gives up
    # on after 30 s; on a busy node starting it (importing ray) took longer here.
    env.setdefault("RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S", "120")
    if env.get(_SINGLE_NODE_SWITCH) == "0":
        env.pop(_SINGLE_NODE_SWITCH)
    return env


# -- probes ----------------------------------------------------------------------------------


def _in_thread(call, timeout: float, name: str) -> tuple[bool, Any]:
    """Run ``call()`` in a daemon thread for at most ``timeout`` seconds: Ray's clients retry
    for up to a minute and cannot be told otherwise. Returns (finished, value or error)."""
    box: dict[str, Any] = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        return True, box["error"]
    return "value" in box, box.get("value")


def _probe_head(where: Address, timeout: float) -> Any:
    """A :class:`ray._raylet.GcsClient` for the head at ``where`` once it answers and
    accepts our token; a ConnectionError naming the address otherwise, within ``timeout``."""
    address = f"{where.host}:{where.port}"
    try:
        socket.create_connection((where.host, where.port), timeout=min(timeout, 5)).close()
    except OSError as exc:
        raise SchedulerUnreachableError(
            f"no Ray head answers at {address} (is it running, is the address right?): {exc}"
        ) from exc
    import_ray()
    auth_token()
    from ray._raylet import GcsClient

    def connect():
        client = GcsClient(address=address)
        client.get_all_node_info(timeout=timeout)  # an answer, not only an accepted socket
        return client

    finished, outcome = _in_thread(connect, timeout, f"cluster_setup probe {address}")
    if not finished:
        raise SchedulerUnreachableError(
            f"something accepts connections at {address} but no Ray head answered within "
            f"{timeout:g} s (is it a Ray head's GCS port?)"
        )
    if isinstance(outcome, BaseException):
        if type(outcome).__name__ == "AuthenticationError":
            raise SchedulerUnreachableError(
                f"the Ray head at {address} refused this process's authentication token: "
                f"{_auth_hint()}"
            ) from outcome
        raise SchedulerUnreachableError(
            f"no Ray head answered at {address}: {outcome}"
        ) from outcome
    return outcome


def _nodes(client, timeout: float = 10) -> list:
    return list(client.get_all_node_info(timeout=timeout).values())


def _node_address(info) -> str:
    return f"{info.node_manager_address}:{info.node_manager_port}"


# -- sizes -----------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(value: str | int | float) -> int:
    """``"1.5GB"`` -> ``1500000000`` (kB/MB/GB/TB powers of 1000, KiB/MiB/GiB of 1024).

    Examples
    --------
    >>> parse_bytes("1.5GB"), parse_bytes("2GiB"), parse_bytes(1000)
    (1500000000, 2147483648, 1000)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*", str(value).lower())
    if not match:
        raise ValueError(f"memory must be a number of bytes or like '2GB', got {value!r}")
    number, unit, binary = match.groups()
    scale = 1024 ** "kmgt".index(unit) * 1024 if binary and unit else _UNITS[unit]
    return int(float(number) * scale)


def _positive(label: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")


def _node_host(host: str) -> str:
    """The address a node announces: Ray resolves ``localhost`` to the outward address."""
    return "127.0.0.1" if host == "localhost" else host.strip("[]")


# -- the connection --------------------------------------------------------------------------


class RayConnection(ClusterConnection):
    """This process's Ray session (:func:`ray.init`), as ``parallel`` uses it.

    Ray allows one session per process: connecting again (or to another head) ends the
    previous one first, and the ``"ray"`` backend's private local instance is ended when a
    connection is made. Made by :meth:`RaySetup.connect_to_scheduler` (or
    ``start_local_cluster``); a context manager that disconnects (``ray.shutdown()``) at exit.

    Attributes
    ----------
    client : bool
        Whether this is a Ray Client connection (``"ray://host:port"``).

    Examples
    --------
    >>> from cluster_setup import ray
    >>> connection = ray.start_local_cluster(1)
    >>> import ray as ray_module
    >>> ray_module.get(ray_module.put("Ray's own API works on it"))
    "Ray's own API works on it"
    >>> connection.slots(), connection.reachable
    (1, True)
    >>> connection.disconnect()
    >>> connection.reachable
    False
    """

    backend_name = "ray"

    def __init__(
        self,
        setup,
        address: str,
        *,
        client: bool = False,
        local: bool = False,
        adopted: bool = False,
    ):
        super().__init__(setup, address)
        self.client = client
        self.local = local
        self.adopted = adopted
        self._live = True
        self._init_options: dict[str, Any] = {}  # what ray.init was given
        self._py_folders: list[str] = []  # py_files, as Ray's py_modules take them
        self._checked: tuple[float, bool] = (-math.inf, False)  # when reachable asked, answer

    @property
    def reachable(self) -> bool:
        """Whether this session is live and its head's port answers right now."""
        if not (self._live and _current is self):
            return False
        ray = import_ray()
        if not ray.is_initialized():
            return False
        where = parse_address(self.address, schemes=("ray",))
        try:
            socket.create_connection((where.host, where.port), timeout=2).close()
        except OSError:
            answer = False
        else:
            answer = True
        self._checked = (time.monotonic(), answer)
        return answer

    @property
    def session_ended(self) -> bool:
        """Whether the script ended its own session (``ray.shutdown()``; see ``adopted``)."""
        return not (self._live and _current is self and import_ray().is_initialized())

    def answered_recently(self, max_age: float = 0.5) -> bool:
        """:attr:`reachable`, asked at most every ``max_age`` seconds: a map asks before
        every chunk, and each connection to the head costs 0.3 ms. (A head lost meanwhile
        is caught by the map's health check.)"""
        checked_at, answer = self._checked
        if time.monotonic() - checked_at > max_age or not (self._live and _current is self):
            return self.reachable
        return answer

    def nodes(self, timeout: float = 10) -> list[dict]:
        """Ray's node table: one dict per node (``NodeName``, ``Alive``, ``Resources``...)."""
        if not self.reachable:
            raise self.lost()
        finished, outcome = _in_thread(
            import_ray().nodes, timeout, f"cluster_setup ray nodes {self.address}"
        )
        if not finished or isinstance(outcome, BaseException):
            raise self.lost(outcome if isinstance(outcome, BaseException) else None)
        return outcome

    def _count_slots(self) -> int:
        """CPUs of the nodes alive: the chunks Ray runs at once."""
        return int(sum(n["Resources"].get("CPU", 0) for n in self.nodes() if n["Alive"]))

    def _close(self) -> None:
        global _current
        with _ray_lock:
            self._live = False
            if _current is not self:
                return
            _current = None
            if self.adopted:
                return  # the script's own session: it shuts it down
            ray = import_ray()
            with contextlib.suppress(Exception):
                ray.shutdown()
            if self.local and self._temp_dir:
                remove_log_dir(self._temp_dir)
            for folder in self._py_folders:
                remove_log_dir(folder)
            for pid in self._daemons:
                _parent_watch.send("P-", pid)

    _temp_dir: str | None = None
    _daemons: list[str] = []


#: Tries of a Ray Client connection whose server process died as it started (see below).
CLIENT_SERVER_ATTEMPTS = 3


def _client_server_died(address: str, outcome: Any) -> bool:
    """Whether a ``ray://`` connection failed after its proxy answered (its port was probed
    first), most likely because the proxy could not start the session's server process. The
    proxy forks it from a process full of gRPC threads, and the child sometimes aborts in gRPC
    before it runs (ray-project/ray#63202, about one connection in five to thirty here under
    load). The client then reports it either at once ("Initialization failure from server")
    or after its reconnection grace period (30 s), as another ConnectionError: a new
    connection starts a new server process."""
    return address.startswith("ray://") and isinstance(outcome, ConnectionError)


def _init(options: dict[str, Any], timeout: float) -> None:
    """``ray.init(**options)`` for a connection, given up on after ``timeout`` (at least
    30 s): a ConnectionError naming the address (called with ``_ray_lock`` held)."""
    ray = import_ray()
    shown = options["address"]
    env_address = os.environ.pop("RAY_ADDRESS", None)
    try:
        for attempt in range(1, CLIENT_SERVER_ATTEMPTS + 1):
            finished, outcome = _in_thread(
                lambda: ray.init(**options), max(timeout, 30), f"cluster_setup ray.init {shown}"
            )
            if not (_client_server_died(shown, outcome) and attempt < CLIENT_SERVER_ATTEMPTS):
                break
            with contextlib.suppress(Exception):
                ray.shutdown()
    finally:
        if env_address is not None:
            os.environ["RAY_ADDRESS"] = env_address
    if not finished or isinstance(outcome, BaseException):
        with contextlib.suppress(Exception):
            ray.shutdown()
        reason = f": {outcome}" if isinstance(outcome, BaseException) else ""
        raise SchedulerUnreachableError(
            f"could not connect to the Ray head at {shown}{reason}"
        ) from (outcome if isinstance(outcome, BaseException) else None)


def _end_previous_session(replacing: str) -> None:
    """End this process's live Ray session so that another can start, unless a map still
    runs on it or the script started it itself (called with ``_ray_lock`` held)."""
    global _current
    previous = _current
    ray = sys.modules.get("ray")
    own_session = ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized()
    if previous is not None and previous.adopted and not own_session:
        previous._live, _current = False, None  # the script shut its session down meanwhile
        previous = None
    if previous is None or previous.adopted:
        if own_session:
            raise SchedulerUnreachableError(
                f"cannot connect to the Ray head at {replacing}: this script started a Ray "
                f"session of its own (ray.init) and Ray allows one session per process; "
                f"call ray.shutdown() first, or map on that session (backend='ray' without "
                f"connect_to_scheduler)"
            )
        return
    if previous._users:
        raise SchedulerUnreachableError(
            f"cannot connect to the Ray head at {replacing}: a map is still running on the "
            f"Ray session at {previous.address}, and Ray allows one session per process"
        )
    previous.disconnect()
    previous._close()  # harmless if disconnect() already closed it


class RaySetup(ClusterSetup):
    """Start a Ray head node and worker nodes, connect to a head, report on it.

    The instance is ``cluster_setup.ray``; users never create one. An address is
    ``"host:port"`` (the head's GCS port; Ray's default 6379) or ``"ray://host:port"`` to
    connect through Ray Client where the driver is not on a cluster node. The host defaults to
    127.0.0.1 everywhere. The head starts with 0 CPUs (it schedules, workers compute) unless
    given ``cores``.

    Examples
    --------
    >>> from cluster_setup import ray
    >>> ray.engine, ray.extra, ray._schemes()
    ('ray', 'ray', ('ray',))
    """

    engine = "ray"
    extra = "ray"
    engine_package = "ray"

    def start_scheduler(
        self,
        address: str = DEFAULT_ADDRESS,
        block: bool = False,
        *,
        cores: int = 0,
        memory: str | int | None = None,
        dashboard_port: int | None = None,
        timeout: float = 60,
    ) -> str:
        """Start a Ray head node (``ray start --head``) listening on ``address``.

        Parameters
        ----------
        address : str, default "127.0.0.1:6379"
            ``"host:port"`` of the head's GCS; port 0 picks a free port. Use the node's own
            address when worker nodes run elsewhere.
        block : bool, default False
            False: start in the background, wait until it answers, return. True: serve until
            it exits, Ctrl-C or SIGTERM, then stop it and return (a job script).
        cores : int, default 0
            CPUs the head offers to tasks; 0 keeps it a pure scheduler.
        memory : str or int, optional
            Memory the head offers to tasks (``"2GB"`` or bytes); default: Ray's guess.
        dashboard_port : int or None, default None
            Port of Ray's dashboard (needs ``ray[default]``); None turns it off.
        timeout : float, default 60
            Seconds to wait for the head to start.

        Returns
        -------
        str
            The address worker nodes and drivers use, ``"host:port"`` with the real port.

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed (a ``ValueError``).
        PortInUseError
            The port is taken (an ``OSError``), raised before anything starts.
        ClusterStartError, ClusterStartTimeoutError
            The head exited while starting, or was not ready within ``timeout``.
        EngineNotInstalledError
            ``ray`` is not installed.

        Examples
        --------
        >>> from cluster_setup import ray
        >>> ray.start_scheduler("127.0.0.1:70000")
        Traceback (most recent call last):
        ...
        cluster_setup.errors.InvalidAddressError: invalid address '127.0.0.1:70000': the port must be 0-65535
        """  # noqa: E501
        where = parse_address(address, schemes=("ray",), listen=True)
        if address.strip().startswith("ray://"):
            raise InvalidAddressError(
                f"a head listens on 'host:port', got {address!r} ('ray://' is for "
                f"connecting through Ray Client)"
            )
        if not isinstance(cores, int) or isinstance(cores, bool) or cores < 0:
            raise ValueError(f"cores must be an int >= 0, got {cores!r}")
        import_ray()  # the install hint before anything starts
        host = _node_host(where.host)
        check_port_free(host, where.port)
        auth_token(create=True)
        temp_dir = self._node_dir("h")
        command = self._ray_start(host, cores, memory, temp_dir) + [
            "--head",
            f"--port={where.port}",
        ]
        if dashboard_port is None:
            command.append("--include-dashboard=false")
        else:
            command += [
                "--include-dashboard=true",
                f"--dashboard-host={host}",
                f"--dashboard-port={dashboard_port}",
            ]
        client = None
        if importlib.util.find_spec("grpc") is not None:  # Ray Client's server, on a free port
            client = f"ray://{host}:{_free_port(host)}"
            command.append(f"--ray-client-server-port={client.rsplit(':', 1)[1]}")
        record = self._spawn(
            "scheduler", f"{host}:{where.port}", command, block=block, env=_node_environment()
        )
        current = os.path.join(temp_dir, "ray_current_cluster")

        def ready():
            try:
                with open(current) as file:
                    text = file.read().strip()
            except OSError:
                return None
            if not text:
                return None
            found = parse_address(text, schemes=("ray",))
            with contextlib.suppress(OSError):
                socket.create_connection((found.host, found.port), timeout=1).close()
                return f"{found.host}:{found.port}"
            return None

        record.address = self._wait_until(record, ready, timeout, f"the Ray head on {address}")
        if block:
            self._serve(
                [record],
                f"cluster_setup: ray head (scheduler) at {record.address}; worker nodes "
                f"join with cluster_setup.ray.start_worker({record.address!r}); "
                + (f"drivers off the cluster connect to {client!r}; " if client else "")
                + f"{_auth_hint()}; serving until Ctrl-C or SIGTERM",
            )
        return record.address

    def start_worker(
        self,
        address: str,
        block: bool = False,
        *,
        n_workers: int = 1,
        cores: int = 1,
        memory: str | int | None = None,
        host: str | None = None,
        name: str | None = None,
        timeout: float = 60,
    ) -> list[str]:
        """Start worker nodes (``ray start --address``) that join the head at ``address``.

        Parameters
        ----------
        address : str
            The head, ``"host:port"``.
        block : bool, default False
            False: return once every node is registered with the head. True: serve until
            they exit, Ctrl-C or SIGTERM; then stop them.
        n_workers : int, default 1
            Worker nodes to start, each a ``ray start`` process of its own.
        cores : int, default 1
            CPUs each node offers: the chunks it runs at once.
        memory : str or int, optional
            Memory each node offers to tasks (``"2GB"`` or bytes); default: Ray's guess.
        host : str, optional
            Address the nodes announce. Default: 127.0.0.1 for a head on this machine, else
            Ray's choice (this machine's outward address).
        name : str, optional
            Node name (``name-0``, ``name-1``... for several); default: a unique one.
        timeout : float, default 60
            Seconds to wait for the head to answer and the nodes to register.

        Returns
        -------
        list of str
            The new nodes' ``"host:port"`` (their raylet's address).

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed (a ``ValueError``).
        SchedulerUnreachableError
            No head answered at ``address`` within ``timeout``, or it refused the token.
        ClusterStartError, ClusterStartTimeoutError
            A node exited while starting, or did not register within ``timeout``.

        Examples
        --------
        >>> from cluster_setup import ray
        >>> ray.start_worker("127.0.0.1:0")
        Traceback (most recent call last):
        ...
        cluster_setup.errors.InvalidAddressError: a head address needs its real port, got '127.0.0.1:0'
        """  # noqa: E501
        where = parse_address(address, schemes=("ray",))
        if address.strip().startswith("ray://"):
            raise InvalidAddressError(
                f"worker nodes join the head's 'host:port', not a Ray Client address: {address!r}"
            )
        if where.port == 0:
            raise InvalidAddressError(f"a head address needs its real port, got {address!r}")
        _positive("n_workers", n_workers)
        _positive("cores", cores)
        import_ray()
        head = Address("ray", _node_host(where.host), where.port)
        joined = f"{head.host}:{head.port}"
        client = _probe_head(head, timeout)
        if host is None and head.is_loopback:
            host = "127.0.0.1"
        name = name or f"worker-{uuid.uuid4().hex[:8]}"
        names = [name] if n_workers == 1 else [f"{name}-{i}" for i in range(n_workers)]
        records = []
        try:
            for node_name in names:
                command = self._ray_start(host, cores, memory, self._node_dir("w"))
                command += [f"--address={joined}", f"--node-name={node_name}"]
                records.append(
                    self._spawn(
                        "worker",
                        joined,
                        command,
                        block=block,
                        names=[node_name],
                        env=_node_environment(),
                    )
                )
            addresses = []
            for record, node_name in zip(records, names, strict=True):

                def registered(node_name=node_name):
                    for info in _nodes(client):
                        if info.node_name == node_name and info.state == 0:  # ALIVE
                            return _node_address(info)
                    return None

                addresses.append(
                    self._wait_until(
                        record,
                        registered,
                        timeout,
                        f"Ray worker node {node_name!r} joining {joined}",
                    )
                )
        except BaseException:
            for record in records:
                self.stop_process(record)
            raise
        if block:
            self._serve(
                records,
                f"cluster_setup: {n_workers} ray worker(s) joined {joined}: "
                f"{', '.join(addresses)}; serving until Ctrl-C or SIGTERM",
            )
        return addresses

    def connect_to_scheduler(self, address: str, timeout: float = 10) -> RayConnection:
        """Connect this process to the Ray head at ``address`` (:func:`ray.init`) and make it
        the active connection.

        While it is active, ``unified_map.parallel(f, xs)`` with no backend (and
        ``backend="ray"``) runs on this cluster, and Ray's own API (``ray.remote``,
        ``ray.get``) works too. Ray allows one session per process: connecting again ends
        the previous one (and the ``"ray"`` backend's private local instance) first.

        Parameters
        ----------
        address : str
            ``"host:port"`` of the head (a driver on a cluster node), or ``"ray://host:port"``
            for Ray Client (port 10001 by default; needs ``ray[client]``).
        timeout : float, default 10
            Seconds to wait for the head to answer.

        Returns
        -------
        RayConnection
            A context manager that disconnects at exit; ``disconnect()`` does it by hand.

        Raises
        ------
        SchedulerUnreachableError
            No head answered within ``timeout``, or it refused this process's token (a
            ``ConnectionError`` naming the address).

        Examples
        --------
        >>> from cluster_setup import ray
        >>> ray.connect_to_scheduler("127.0.0.1:1", timeout=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cluster_setup.errors.SchedulerUnreachableError: no Ray head answers at 127.0.0.1:1 ...
        """
        return super().connect_to_scheduler(address, timeout)

    def _connect(self, address: str, timeout: float) -> RayConnection:
        global _current
        where = parse_address(address, schemes=("ray",))
        client = address.strip().startswith("ray://")
        import_ray()  # the install hint first
        where = Address("ray", _node_host(where.host), where.port)
        shown = f"ray://{where.host}:{where.port}" if client else f"{where.host}:{where.port}"
        if client:
            if importlib.util.find_spec("grpc") is None:
                raise EngineNotInstalledError(
                    "connecting through Ray Client ('ray://') needs Ray's client extras, "
                    "which are not installed: pip install unified_map[ray] 'ray[client]'"
                )
            try:
                socket.create_connection((where.host, where.port), timeout=timeout).close()
            except OSError as exc:
                raise SchedulerUnreachableError(
                    f"no Ray Client server answers at {shown}: {exc}"
                ) from exc
            auth_token()
        else:
            _probe_head(where, timeout)
        options = {
            "address": shown,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            **({} if client else {"_node_ip_address": _driver_ip(where)}),
        }
        with _ray_lock:
            _end_previous_session(shown)
            _init(options, timeout)
            connection = RayConnection(self, shown, client=client)
            connection._init_options = options
            _current = connection
        return connection

    def _describe(self, connection: RayConnection) -> tuple[list[WorkerInfo], str | None]:
        """The nodes that run tasks (alive, with CPUs): raylet address, name, CPUs, memory.
        A head kept as a pure scheduler (0 CPUs) and nodes that died are left out."""
        workers = []
        for node in connection.nodes():
            resources = node.get("Resources", {})
            cores = int(resources.get("CPU", 0))
            head = "node:__internal_head__" in resources
            if not node.get("Alive") or (head and cores == 0):
                continue
            workers.append(
                WorkerInfo(
                    address=f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}",
                    cores=cores,
                    memory=int(resources["memory"]) if "memory" in resources else None,
                    name="head" if head else str(node.get("NodeName", "")),
                )
            )
        return sorted(workers, key=lambda w: w.address), None

    def _lost_workers(self, connection: RayConnection) -> list[WorkerInfo]:
        """Nodes Ray's GCS lists as dead (killed, or lost their heartbeat)."""
        lost = []
        for node in connection.nodes():
            if not node.get("Alive"):
                address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
                resources = node.get("Resources", {})
                lost.append(WorkerInfo(address, int(resources.get("CPU", 0)), name="dead"))
        return sorted(lost, key=lambda w: w.address)

    # -- HPC hooks (cluster_setup.base) -------------------------------------------------------

    def _scheduler_file_payload(self, address: str) -> tuple[dict[str, Any], bool]:
        """The head's token travels in the scheduler file, which is then readable by its
        owner only: worker nodes and drivers on other nodes need it to join."""
        token = auth_token()
        return ({"token": token}, True) if token is not None else ({}, False)

    def _use_scheduler_file(self, contents: dict[str, Any]) -> None:
        """Take the token of the file's head for this process and the nodes it starts
        (Ray reads it once per process, at its first use: before that is what counts)."""
        token = str(contents.get("token") or "").strip()
        if token:
            with _token_lock:
                _use_token(token)

    def _ship_py_files(self, connection: RayConnection, files: list[str]) -> None:
        """Ray's job-level ``runtime_env`` ``py_modules``: every task of this driver, maps
        and the user's own ``ray.remote`` calls, on every node, now and later.

        Ray takes packages (folders) there, so a ``.py`` file becomes a one-module package of
        its name and an archive is unpacked; they live in a folder removed with the
        connection. Ray uploads them once.
        """
        folder = make_log_dir("um-ray-py-")
        connection._py_folders.append(folder)
        modules = list(connection._init_options.get("runtime_env", {}).get("py_modules", []))
        for path in files:
            name = os.path.basename(path)
            if name.endswith(".py"):
                package = os.path.join(folder, name[:-3])
                os.makedirs(package, exist_ok=True)
                shutil.copyfile(path, os.path.join(package, "__init__.py"))
                modules.append(package)
                continue
            unpacked = os.path.join(folder, name + ".d")
            with zipfile.ZipFile(path) as archive:
                archive.extractall(unpacked)
            for entry in sorted(os.listdir(unpacked)):
                inside = os.path.join(unpacked, entry)
                if os.path.isdir(inside):
                    modules.append(inside)
                elif entry.endswith(".py"):
                    package = os.path.join(folder, entry[:-3])
                    os.makedirs(package, exist_ok=True)
                    shutil.copyfile(inside, os.path.join(package, "__init__.py"))
                    modules.append(package)
        # Ray takes local folders only for a whole job (ray.init), not per task: this
        # driver's session starts again with them, before any map of it has run.
        with _ray_lock:
            if _current is not connection or connection._users:
                raise RuntimeError("py_files are shipped when connecting, before any map")
            ray = import_ray()
            ray.shutdown()
            options = {**connection._init_options, "runtime_env": {"py_modules": modules}}
            _init(options, 60)
            connection._init_options = options

    def _worker_versions(self, connection: RayConnection) -> dict[str, dict[str, str]]:
        """:func:`.environment.environment_versions` run on each node with CPUs (pinned to
        it, taking no CPU), keyed by its raylet address as in ``_describe``."""
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .environment import environment_versions

        probe = ray.remote(num_cpus=0, max_retries=0)(environment_versions)
        refs = {}
        for node in connection.nodes():
            if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0:
                key = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                refs[key] = probe.options(scheduling_strategy=strategy).remote(self.engine_package)
        found: dict[str, dict[str, str]] = {}
        for key, ref in refs.items():
            try:
                found[key] = ray.get(ref, timeout=30)
            except Exception as exc:  # noqa: BLE001 - unknown, not a failed connection
                found[key] = {"error": f"{type(exc).__name__}: {exc}"}
        return found

    def session_in_this_process(self) -> RayConnection | None:
        """The Ray session the script started itself with ``ray.init()``, if any."""
        global _current
        ray = sys.modules.get("ray")
        if ray is None or not hasattr(ray, "is_initialized"):
            return None
        with _ray_lock:
            if _current is not None or not ray.is_initialized():
                return None  # one of ours, or none
            try:
                address = ray.get_runtime_context().gcs_address
            except Exception:  # noqa: BLE001 - a Ray Client session has no GCS address here
                return None
            connection = RayConnection(self, address, adopted=True)
            _current = connection
            return connection

    def _start_local_cluster(self, n_workers: int) -> RayConnection:
        """Ray's own local mode: :func:`ray.init` with ``n_workers`` CPUs, every socket on
        127.0.0.1, no dashboard, no usage stats, quiet logs."""
        global _current
        ray = import_ray()
        import ray._private.ray_constants as constants
        import ray._private.services as services

        auth_token()
        with _ray_lock:
            _end_previous_session("a local instance")
            temp_dir = make_log_dir("um-ray-")  # removed even if this process dies
            saved = {
                key: os.environ.get(key)
                for key in (_SINGLE_NODE_SWITCH, "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")
            }
            switch, api_server = constants.ENABLE_RAY_CLUSTER, services.start_api_server
            # The switch is read at import (this process) and by every process Ray starts.
            constants.ENABLE_RAY_CLUSTER = False
            # Without a dashboard, Ray still starts its API server for usage statistics,
            # which asks the cloud metadata services (169.254.169.254,
            # metadata.google.internal) where it runs even with usage statistics off: not
            # started, nothing leaves the machine.
            services.start_api_server = _no_api_server
            os.environ[_SINGLE_NODE_SWITCH] = "0"
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            os.environ.pop("RAY_ADDRESS", None)
            _parent_watch.ensure_started()  # not among Ray's processes below
            before = set(_descendants())
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            try:
                context = ray.init(
                    num_cpus=n_workers,
                    num_gpus=0,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=temp_dir,
                )
            except BaseException:
                remove_log_dir(temp_dir)
                raise
            finally:
                constants.ENABLE_RAY_CLUSTER, services.start_api_server = switch, api_server
                if main and sigterm is not None:
                    # ray.init installs a SIGTERM handler that exits with code 1; the
                    # script's own (cluster_setup's exit through SystemExit(143), whose exit
                    # handlers shut this instance down too) stays in charge.
                    signal.signal(signal.SIGTERM, sigterm)
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            address = context.address_info.get("gcs_address") or "127.0.0.1:0"
            connection = RayConnection(self, address, local=True)
            connection._temp_dir = temp_dir
            # Ray's GCS and raylet die with this process, but its agents would outlive a
            # killed driver: the parent watch stops them then (processes.py).
            connection._daemons = [str(pid) for pid in _descendants() if pid not in before]
            for pid in connection._daemons:
                _parent_watch.send("P+", pid)
            _current = connection
        return connection

    def _schemes(self) -> tuple[str, ...]:
        return ("ray",)

    # -- helpers ----------------------------------------------------------------------------

    def _node_dir(self, prefix: str) -> str:
        """A new ``--temp-dir`` for one node (its sockets, logs, session), in this setup's log
        folder, so that it goes with :meth:`stop`. Ray's socket paths must stay short."""
        log_file = self._new_file(prefix, "")
        os.remove(log_file)
        os.mkdir(log_file)
        return log_file

    def _ray_start(
        self, host: str | None, cores: int, memory: str | int | None, temp_dir: str
    ) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            f"--num-cpus={cores}",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # random worker ports: several nodes (or clusters) on one machine never clash
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        if host is not None:
            command.append(f"--node-ip-address={host}")
        if memory is not None:
            command.append(f"--memory={parse_bytes(memory)}")
        return command


def _descendants() -> list[int]:
    """Pids of this process's descendants (none without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    return [child.pid for child in psutil.Process().children(recursive=True)]


def _no_api_server(*args: Any, **kwargs: Any) -> tuple[None, None]:
    """Stands in for Ray's ``start_api_server``: no dashboard URL, no process."""
    return None, None


def _driver_ip(head: Address) -> str | None:
    return "127.0.0.1" if head.is_loopback else None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
