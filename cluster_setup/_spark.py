"""``cluster_setup.spark``: only Spark's commands, readiness probes and connection
(:class:`SparkConnection`): start a standalone master and workers, connect to one, report on it.

The master and workers are Spark's own standalone daemons (``org.apache.spark.deploy.master.
Master`` and ``...deploy.worker.Worker``) launched with the ``bin/spark-class`` of the Spark
distribution that ships inside the pyspark wheel: no separate Spark install and no
``SPARK_HOME`` are needed. A connection is a :class:`pyspark.SparkContext` on the master (or,
for a backend with no connection, on ``local[n]``). pyspark allows one SparkContext per
process, so connections to the same master share one, and a private ``local[n]`` session that
no map uses gives way to a connection that needs another master. ``pyspark`` is imported only
when a method is called.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from functools import partial
from typing import Any

from .addresses import Address, check_port_free, local_address_towards, parse_address
from .base import ClusterSetup, check_positive_ints
from .connection import ClusterConnection
from .environment import environment_versions
from .errors import (
    ClusterStartError,
    EngineNotInstalledError,
    InvalidAddressError,
    SchedulerUnreachableError,
)
from .processes import StartedProcess, process_environment, user_import_folders
from .status import WorkerInfo

__all__ = ["SparkSetup", "SparkConnection", "DEFAULT_ADDRESS", "spark_home", "check_java"]

#: Spark's usual master port, on this machine only.
DEFAULT_ADDRESS = "127.0.0.1:7077"
#: The oldest Java that Spark 4 runs on.
MIN_JAVA = 17
#: Driver memory of every SparkContext of this process: the defaults ran out of Java heap on
#: 20 x 10 MB items in local mode.
DRIVER_MEMORY = "4g"
#: Heap of each master and worker daemon (Spark's default is 1g; they need little).
DAEMON_MEMORY = "512m"

_MEMORY_RE = re.compile(r"^\s*(\d+)\s*(k|kb|m|mb|g|gb|t|tb)?\s*$", re.IGNORECASE)
_UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


# -- the distribution and Java --------------------------------------------------------------


def import_pyspark():
    """Import ``pyspark``, or raise the install hint naming the pip extra.

    Examples
    --------
    >>> import_pyspark().__name__
    'pyspark'
    """
    try:
        import pyspark
    except ImportError as exc:
        raise EngineNotInstalledError(
            "cluster_setup.spark needs the package 'pyspark', which is not installed: "
            "pip install unified_map[spark]"
        ) from exc
    return pyspark


def spark_home() -> str:
    """The Spark distribution inside the pyspark wheel (its ``bin/spark-class`` and ``jars``).

    Examples
    --------
    >>> os.path.isfile(os.path.join(spark_home(), "bin", "spark-class"))
    True
    """
    home = os.path.dirname(os.path.abspath(import_pyspark().__file__))
    if not os.path.isfile(os.path.join(home, "bin", "spark-class")) or not os.path.isdir(
        os.path.join(home, "jars")
    ):
        raise EngineNotInstalledError(
            f"the pyspark package at {home} has no bin/spark-class or jars/ (not a full "
            f"pyspark install): pip install --force-reinstall unified_map[spark]"
        )
    return home


_java_checked: dict[tuple[str | None, str | None], str] = {}


def check_java() -> str:
    """The ``java`` Spark will run (``$JAVA_HOME/bin/java``, else the one on ``PATH``), after
    checking that it is Java 17 or later; raise a clear error otherwise, before any JVM of
    Spark's is spawned.

    Raises
    ------
    EngineNotInstalledError
        No Java, or one older than Spark needs (an ``ImportError``: part of the engine).

    Examples
    --------
    >>> os.path.basename(check_java())
    'java'
    """
    key = (os.environ.get("JAVA_HOME"), os.environ.get("PATH"))
    if key in _java_checked:
        return _java_checked[key]
    if key[0]:
        java = os.path.join(key[0], "bin", "java")
        where = f"JAVA_HOME={key[0]}"
        if not os.access(java, os.X_OK):
            java = None
    else:
        java, where = shutil.which("java"), "PATH"
    advice = (
        f"Spark needs Java {MIN_JAVA} or later: install one (on Debian/Ubuntu: apt-get install "
        f"openjdk-{MIN_JAVA}-jre-headless) or set JAVA_HOME to one"
    )
    if java is None:
        raise EngineNotInstalledError(f"no Java was found (looked in {where}). {advice}")
    text = _java_release(java)
    if text is None:  # no release file: ask java itself (a tenth of a second)
        try:
            answer = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineNotInstalledError(f"{java} -version failed ({exc}). {advice}") from exc
        text = answer.stderr or answer.stdout
    match = _JAVA_VERSION_RE.search(text)
    major = int(match[1]) if match else 0
    if major == 1 and match[2]:  # "1.8.0_392" is Java 8
        major = int(match[2])
    if major < MIN_JAVA:
        first = text.strip().splitlines()[0] if text.strip() else "no version"
        raise EngineNotInstalledError(f"{java} is {first!r}, too old. {advice}")
    _java_checked[key] = java
    return java


def _java_release(java: str) -> str | None:
    """The version line of the ``release`` file of the Java installation ``java`` belongs to
    (read, not run: no process is started), or None."""
    home = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    with contextlib.suppress(OSError):
        with open(os.path.join(home, "release")) as file:
            for line in file:
                if line.startswith("JAVA_VERSION="):
                    return f'version "{line.split("=", 1)[1].strip().strip(chr(34))}"'
    return None


def memory_megabytes(memory: str | int) -> int:
    """A worker's memory in MiB: bytes, or Spark's own form (``"512m"``, ``"2g"``; binary
    units, as Spark reads them).

    Examples
    --------
    >>> memory_megabytes("1g"), memory_megabytes("1536m"), memory_megabytes(2**30)
    (1024, 1536, 1024)
    >>> memory_megabytes("1.5GB")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: memory must be a number of bytes or like '512m' or '2g' (binary units, ...
    """
    if isinstance(memory, int) and not isinstance(memory, bool) and memory >= 2**20:
        return memory // 2**20
    match = _MEMORY_RE.match(memory) if isinstance(memory, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(
            "memory must be a number of bytes or like '512m' or '2g' (binary units, as Spark "
            f"reads them), got {memory!r}"
        )
    unit = (match[2] or "").lower()[:1]
    return max(1, int(match[1]) * _UNITS[unit] // 2**20)


# -- ports and the master's status page --------------------------------------------------


def _free_port(host: str) -> int:
    """A port free on ``host`` now (the daemons are told it, so it is known in advance)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _contact_host(host: str) -> str:
    """Where to reach a daemon listening on ``host`` from this machine."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return "127.0.0.1" if host == "localhost" else host


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http only
        return json.load(answer)


def _master_json(ui_url: str, timeout: float = 5.0) -> dict:
    """The master's status page (``/json/``): its url, status and workers."""
    answer = _get_json(ui_url.rstrip("/") + "/json/", timeout)
    if not isinstance(answer, dict) or "workers" not in answer:
        raise ValueError(f"{ui_url} is not a Spark master's web UI")
    return answer


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


#: Web UI of each master this process knows of: (host to contact, port) -> UI url.
_known_ui: dict[tuple[str, int], str] = {}


def _find_master_ui(where: Address, timeout: float) -> str | None:
    """The web UI of the Spark master at ``where``, or None when it cannot be found.

    Masters started or joined by this process are known; a master on this machine is found
    by the process listening on its port (its other listening ports are tried for the status
    page); else Spark's default UI port 8080 is tried. Raises SchedulerUnreachableError when
    the process listening on the port is visible and is not a Spark master.
    """
    host = _contact_host(where.host)
    known = _known_ui.get((host, where.port))
    if known is not None:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            if _port_of(_master_json(known, timeout)["url"]) == where.port:
                return known
    owner = None
    with contextlib.suppress(Exception):
        import psutil

        listening = [
            c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
        ]
        owner = next((c.pid for c in listening if c.laddr.port == where.port and c.pid), None)
        candidates = [c.laddr.port for c in listening if c.pid == owner and c.pid is not None]
    if owner is not None:
        for port in candidates:
            if port == where.port:
                continue
            url = f"http://{host}:{port}"
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                if _port_of(_master_json(url, min(timeout, 2.0))["url"]) == where.port:
                    _known_ui[(host, where.port)] = url
                    return url
        raise SchedulerUnreachableError(
            f"no Spark master answered at {where.url}: the process listening there "
            f"(pid {owner}) has no Spark master status page (is it a Spark master?)"
        )
    url = f"http://{host}:8080"
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        if _port_of(_master_json(url, min(timeout, 2.0))["url"]) == where.port:
            _known_ui[(host, where.port)] = url
            return url
    return None


def _probe_master(where: Address, timeout: float) -> str | None:
    """Check that a Spark master answers at ``where`` within ``timeout``; return its web UI
    url when found. The JVM's own clients retry for minutes: this says no at once."""
    deadline = time.monotonic() + timeout
    host = _contact_host(where.host)
    while True:
        try:
            socket.create_connection((host, where.port), timeout=max(0.1, timeout)).close()
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise SchedulerUnreachableError(
                    f"no Spark master answered at {where.url} within {timeout:g} s "
                    f"(is it running, and is the address right?): {exc}"
                ) from None
            time.sleep(0.1)
    return _find_master_ui(where, max(0.5, deadline - time.monotonic()))


# -- the one SparkContext of this process ---------------------------------------------------

_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [spark] %d{HH:mm:ss} %p %c{1}: %enc{%m%ex}{CRLF}%n
logger.hadoopnative.name = org.apache.hadoop.util.NativeCodeLoader
logger.hadoopnative.level = error
"""
# Spark's records (tagged by the pattern above) and the JVM's own start-up warning.
_NOISE_RE = re.compile(rb"^(\[spark\] |WARNING: Using incubator modules)")


class _Driver:
    """The py4j gateway JVM and the one SparkContext pyspark allows per process, shared by
    every connection to the same master; stopped when its last connection closes."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.gateway = None
        self.context = None
        self.master: str | None = None
        self.users: list[SparkConnection] = []
        self.show_logs = False
        self.log_dir: str | None = None
        self.java_options = ""

    def acquire(self, master: str, conf: dict[str, str], timeout: float, connection_factory):
        """A new connection (made by ``connection_factory(context)``) on ``master``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.context is not None and self.master != master:
                idle = [c for c in self.users if c.evictable and not c._users]
                if idle and len(idle) == len(self.users):
                    for connection in idle:  # a private local session no map uses
                        connection.disconnect()  # (the lock is reentrant)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClusterStartError(
                        f"pyspark runs one SparkContext per process, and the one on "
                        f"{self.master} is still in use by a running map: cannot connect to "
                        f"{master} before it ends (waited {timeout:g} s)"
                    )
                self.cond.wait(min(left, 0.5))
            if self.context is None:
                self.context = self._start_context(master, conf)
                self.master = master
            connection = connection_factory(self.context)
            self.users.append(connection)
            return connection

    def release(self, connection: SparkConnection) -> None:
        with self.cond:
            if connection in self.users:
                self.users.remove(connection)
            context = None
            if not self.users and self.context is not None:
                context, self.context, self.master = self.context, None, None
            self.cond.notify_all()
        if context is not None:
            with contextlib.suppress(Exception):
                context.stop()

    def _start_context(self, master: str, conf: dict[str, str]):
        pyspark = import_pyspark()
        own = pyspark.SparkContext._active_spark_context
        if own is not None:
            raise ClusterStartError(
                f"cannot start a SparkContext on {master}: this script has one of its own "
                f"(master {own.master}) and pyspark allows one per process; stop it first "
                f"(spark.stop()), or map on it (backend='spark' without connect_to_scheduler)"
            )
        check_java()
        # Workers run this very interpreter (pyspark reads it from the environment only).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark_conf = pyspark.SparkConf(loadDefaults=False).setMaster(master)
        spark_conf.setAppName("unified_map")
        for key, value in conf.items():
            spark_conf.set(key, value)
        if self.gateway is None:
            self.gateway = self._launch_gateway(pyspark, spark_conf)
        # executors log like the driver (to their work folder: never the terminal)
        spark_conf.set("spark.executor.extraJavaOptions", self.java_options)
        context = pyspark.SparkContext(conf=spark_conf, gateway=self.gateway)
        context.setLogLevel("INFO" if self.show_logs else "WARN")
        return context

    def _launch_gateway(self, pyspark, spark_conf):
        """Launch the driver JVM ourselves: its stderr goes through a filter that keeps
        Spark's records (in a log file) off the terminal, but not what tasks print (local
        mode sends the Python workers' output there)."""
        from pyspark.java_gateway import launch_gateway

        from .processes import make_log_dir

        self.log_dir = make_log_dir("cluster_setup-spark-driver-")
        log4j = os.path.join(self.log_dir, "log4j2.properties")
        with open(log4j, "w") as file:
            file.write(_LOG4J2)
        options = self.java_options = f"-Dlog4j2.configurationFile=file:{log4j}"
        conf = pyspark.SparkConf(loadDefaults=False)
        for key, value in spark_conf.getAll():
            conf.set(key, value)
        conf.set("spark.driver.memory", DRIVER_MEMORY)  # only settable before the JVM starts
        conf.set("spark.driver.extraJavaOptions", options)
        saved = {name: os.environ.get(name) for name in ("SPARK_LOCAL_IP", "SPARK_HOME")}
        os.environ["SPARK_HOME"] = spark_home()
        os.environ.setdefault("SPARK_LOCAL_IP", spark_conf.get("spark.driver.bindAddress"))
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        log_path = os.path.join(self.log_dir, "driver-jvm.log")
        threading.Thread(
            target=self._pump,
            args=(gateway.proc.stderr, log_path),
            daemon=True,
            name="cluster_setup spark driver log",
        ).start()
        atexit.register(self.shutdown)
        return gateway

    def _pump(self, stream, log_path: str) -> None:
        with open(log_path, "ab") as log:
            for line in iter(stream.readline, b""):
                log.write(line)
                log.flush()
                if self.show_logs or not _NOISE_RE.match(line):
                    with contextlib.suppress(Exception):
                        sys.stderr.buffer.write(line)
                        sys.stderr.flush()

    def shutdown(self) -> None:
        """Stop the SparkContext and the driver JVM (at exit)."""
        with self.cond:
            users, self.users = list(self.users), []
            context, self.context, self.master = self.context, None, None
            gateway, self.gateway = self.gateway, None
        for connection in users:
            connection._open = False
        if context is not None:
            with contextlib.suppress(Exception):
                context.stop()
        if gateway is not None:
            import pyspark

            proc = gateway.proc
            with contextlib.suppress(Exception):
                gateway.shutdown()
            with contextlib.suppress(Exception):
                proc.stdin.close()  # the driver JVM exits when its stdin closes
                proc.wait(10)
            with contextlib.suppress(Exception):
                proc.kill()
            pyspark.SparkContext._gateway = None
            pyspark.SparkContext._jvm = None
        if self.log_dir is not None:
            from .processes import remove_log_dir

            remove_log_dir(self.log_dir)
            self.log_dir = None


_driver = _Driver()


class SparkConnection(ClusterConnection):
    """A :class:`pyspark.SparkContext` on a Spark master (or ``local[n]``), as ``parallel``
    uses it.

    Made by :meth:`SparkSetup.connect_to_scheduler` (or ``start_local_cluster``); a context
    manager that disconnects at exit. Connections to the same master share the process's one
    SparkContext, which stops when the last of them disconnects.

    Attributes
    ----------
    context : pyspark.SparkContext
        The SparkContext, for anything Spark-specific (``connection.context.parallelize``).
    webui_url : str or None
        The master's web UI, where its status comes from (None for ``local[n]``).

    Examples
    --------
    >>> from cluster_setup import spark
    >>> connection = spark.start_local_cluster(1)
    >>> connection.context.parallelize([1, 2, 3]).map(abs).sum()
    6
    >>> connection.slots(), connection.reachable
    (1, True)
    >>> connection.disconnect()
    >>> connection.reachable
    False
    """

    backend_name = "spark"

    def __init__(
        self,
        setup: ClusterSetup,
        address: str,
        context: Any,
        webui_url: str | None = None,
        evictable: bool = False,
        adopted: bool = False,
    ):
        super().__init__(setup, address)
        self.context = context
        self.webui_url = webui_url
        #: A private local session that gives way when another master is needed.
        self.evictable = evictable
        self.adopted = adopted
        self._checked = (-1.0, True)

    @property
    def session_ended(self) -> bool:
        """Whether the script stopped its own SparkContext (see ``adopted``)."""
        try:
            return self.context._jsc is None or self.context._jsc.sc().isStopped()
        except Exception:  # noqa: BLE001 - its gateway is gone
            return True

    @property
    def local(self) -> bool:
        """Whether this is a ``local[n]`` session (no master)."""
        return not self.address.startswith("spark://")

    @property
    def reachable(self) -> bool:
        """Whether the SparkContext runs and its master answers (checked at most twice a
        second: a map asks for every chunk)."""
        if self._closed:
            return False
        with contextlib.suppress(Exception):
            if self.context._jsc is None or self.context._jsc.sc().isStopped():
                return False
        if self.local:
            return True
        checked_at, answer = self._checked
        if time.monotonic() - checked_at > 0.5:
            where = parse_address(self.address, schemes=("spark",))
            try:
                socket.create_connection((_contact_host(where.host), where.port), 1).close()
                answer = True
            except OSError:
                answer = False
            self._checked = (time.monotonic(), answer)
        return answer

    def status(self) -> dict:
        """The master's status page (``/json/``), or a SchedulerUnreachableError."""
        if self.webui_url is None:
            raise self.lost(RuntimeError("the master's web UI is unknown"))
        try:
            return _master_json(self.webui_url, timeout=5)
        except (OSError, ValueError) as exc:
            raise self.lost(exc) from exc

    def _count_slots(self) -> int:
        """Cores of the master's ALIVE workers; the local session's threads."""
        if not self.local and self.webui_url is not None:
            workers = self.status()["workers"]
            return sum(w.get("cores", 0) for w in workers if w.get("state") == "ALIVE")
        if not self.reachable:
            raise self.lost()
        return self.context.defaultParallelism

    def _close(self) -> None:
        if not self.adopted:  # the script's own SparkContext: it stops it
            _driver.release(self)


class SparkSetup(ClusterSetup):
    """Start a Spark standalone master and workers, connect to a master, report on it.

    The instance is ``cluster_setup.spark``; users never create one. A master address is
    ``"host:port"`` or ``"spark://host:port"``; the host defaults to 127.0.0.1 everywhere, so
    listening on another interface is always an explicit choice. Java 17 or later is needed
    (checked before anything starts).

    Examples
    --------
    >>> import unified_map as um
    >>> from cluster_setup import spark
    >>> address = spark.start_scheduler("127.0.0.1:0")
    >>> workers = spark.start_worker(address, cores=1, memory="1g")
    >>> with spark.connect_to_scheduler(address):
    ...     um.parallel(lambda x: x * x, range(6))
    [0, 1, 4, 9, 16, 25]
    >>> spark.stop(address)
    """

    engine = "spark"
    extra = "spark"
    engine_package = "pyspark"

    def start_scheduler(
        self,
        address: str = DEFAULT_ADDRESS,
        block: bool = False,
        *,
        dashboard_port: int | None = 0,
        timeout: float = 60,
    ) -> str:
        """Start a Spark standalone master listening on ``address``.

        Parameters
        ----------
        address : str, default "127.0.0.1:7077"
            ``"host:port"`` or ``"spark://host:port"`` to listen on; port 0 picks a free
            port. Use the node's own address when workers run elsewhere.
        block : bool, default False
            False: start in the background, wait until its status page says ALIVE, return.
            True: serve until the master exits, Ctrl-C or SIGTERM, then stop it and return.
        dashboard_port : int or None, default 0
            Port of the master's web UI (where :meth:`report_status` reads the workers), on
            the same host; 0 or None picks a free one (Spark's master always has a web UI).
            Its REST submission server (a fixed port, 6066) is turned off.
        timeout : float, default 60
            Seconds to wait for the master to start.
        scheduler_file : str, optional
            Write the engine and address to this JSON file once ready (removed when the
            scheduler stops); with no ``address``, listen on this node's host name then.

        Returns
        -------
        str
            ``"spark://host:port"`` with the real port.

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed (a ``ValueError``).
        PortInUseError
            The port is taken (an ``OSError``), raised before anything starts.
        ClusterStartError, ClusterStartTimeoutError
            The master exited while starting, or was not ready within ``timeout``.
        EngineNotInstalledError
            ``pyspark`` is not installed, or no Java 17+ was found.

        Examples
        --------
        >>> from cluster_setup import spark
        >>> address = spark.start_scheduler("127.0.0.1:0")
        >>> address.startswith("spark://127.0.0.1:")
        True
        >>> spark.stop(address)
        """
        where = parse_address(address, schemes=self._schemes(), listen=True)
        if where.host == "localhost":
            where = Address(where.scheme, "127.0.0.1", where.port)
        home = spark_home()  # the install hint before anything starts
        check_java()
        bind_host = where.host.strip("[]")
        check_port_free(bind_host, where.port)
        check_port_free(bind_host, dashboard_port or 0)
        port = where.port or _free_port(bind_host)
        ui_port = dashboard_port or _free_port(bind_host)
        url = f"spark://{where.host}:{port}"
        options = "-Dspark.master.rest.enabled=false -Dspark.ui.killEnabled=false"
        # A taken port makes Spark silently try the next 16: fail instead (we picked it).
        options += " -Dspark.port.maxRetries=0"
        env = self._daemon_env(home, bind_host, {"SPARK_MASTER_OPTS": options})
        command = [
            os.path.join(home, "bin", "spark-class"),
            "org.apache.spark.deploy.master.Master",
            "--host",
            where.host,
            "--port",
            str(port),
            "--webui-port",
            str(ui_port),
        ]
        record = self._spawn("scheduler", url, command, block=block, env=env)
        ui_url = f"http://{_contact_host(where.host)}:{ui_port}"

        def ready():
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                status = _master_json(ui_url, timeout=2)
                if status.get("status") == "ALIVE" and _port_of(status["url"]) == port:
                    return status
            return None

        self._wait_until(record, ready, timeout, f"the Spark master on {where.host}:{port}")
        _known_ui[(_contact_host(where.host), port)] = ui_url
        if block:
            self._serve(
                [record],
                f"cluster_setup: spark scheduler at {url}, web UI {ui_url}; "
                f"serving until Ctrl-C or SIGTERM",
            )
        return url

    def start_worker(
        self,
        address: str,
        block: bool = False,
        *,
        n_workers: int = 1,
        cores: int = 1,
        memory: str | int = "1g",
        host: str | None = None,
        timeout: float = 60,
    ) -> list[str]:
        """Start Spark workers that join the master at ``address``.

        Parameters
        ----------
        address : str
            The master, ``"host:port"`` or ``"spark://host:port"``.
        block : bool, default False
            False: return once every worker is registered with the master. True: serve
            until the workers exit, Ctrl-C or SIGTERM; then stop them.
        n_workers : int, default 1
            Worker processes (JVMs) to start.
        cores : int, default 1
            Cores each worker offers: the tasks it runs at once.
        memory : str or int, default "1g"
            Memory each worker offers to executors, in Spark's form (``"512m"``, ``"2g"``,
            binary units) or bytes.
        host : str, optional
            Interface the workers listen on. Default: 127.0.0.1 for a master on this
            machine, else this machine's address on the route to the master.
        timeout : float, default 60
            Seconds to wait for the master to answer; the workers then get at least 60 s to
            register (a JVM takes seconds to start).
        scheduler_file : str, optional
            Instead of ``address``: the scheduler file to read it from, waited for up to
            ``timeout`` seconds.

        Returns
        -------
        list of str
            The workers' ``"host:port"`` addresses, as the master lists them.

        Raises
        ------
        InvalidAddressError
            ``address`` is malformed (a ``ValueError``).
        SchedulerUnreachableError
            No Spark master answered at ``address`` within ``timeout`` (a
            ``ConnectionError``), or the workers could not register with it.
        ClusterStartError, ClusterStartTimeoutError
            A worker exited while starting, or did not register in time.

        Examples
        --------
        >>> from cluster_setup import spark
        >>> address = spark.start_scheduler("127.0.0.1:0")
        >>> spark.start_worker(address, cores=1, memory="512m")  # doctest: +ELLIPSIS
        ['127.0.0.1:...']
        >>> spark.stop(address)
        """
        where = parse_address(address, schemes=self._schemes())
        if where.port == 0:
            raise InvalidAddressError(f"a master address needs its real port, got {address!r}")
        check_positive_ints(n_workers=n_workers, cores=cores)
        megabytes = memory_megabytes(memory)
        home = spark_home()
        check_java()
        ui_url = _probe_master(where, timeout)
        contact = _contact_host(where.host)
        master_url = f"spark://{contact if where.host == 'localhost' else where.host}:{where.port}"
        if host is None:
            loopback = where.is_loopback
            host = "127.0.0.1" if loopback else local_address_towards(contact, where.port)
        records: list[tuple[StartedProcess, int, int]] = []
        try:
            for _ in range(n_workers):
                port, ui_port = _free_port(host), _free_port(host)
                work_dir = self._new_file("work-", "")
                os.remove(work_dir)
                os.mkdir(work_dir)
                command = [
                    os.path.join(home, "bin", "spark-class"),
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui_port),
                    "--cores",
                    str(cores),
                    "--memory",
                    f"{megabytes}m",
                    # the default is $SPARK_HOME/work, inside site-packages
                    "--work-dir",
                    work_dir,
                    master_url,
                ]
                env = self._daemon_env(
                    home, host, {"SPARK_WORKER_OPTS": "-Dspark.port.maxRetries=0"}
                )
                record = self._spawn("worker", master_url, command, block=block, env=env)
                record.names = [f"{host}:{port}"]
                records.append((record, port, ui_port))
            addresses = []
            for record, port, ui_port in records:
                state = self._wait_until(
                    record,
                    lambda ui_port=ui_port: _registered_worker(host, ui_port),
                    max(timeout, 60),
                    f"the Spark worker {host}:{port} joining {master_url}",
                )
                if ui_url is None and state.get("masterwebuiurl"):
                    ui_url = state["masterwebuiurl"]
                    _known_ui[(contact, where.port)] = ui_url
                addresses.append(f"{host}:{port}")
        except BaseException:
            for record, _, _ in records:
                self.stop_process(record)
            raise
        if block:
            self._serve(
                [record for record, _, _ in records],
                f"cluster_setup: {n_workers} spark worker(s) joined {master_url}: "
                f"{', '.join(addresses)}; serving until Ctrl-C or SIGTERM",
            )
        return addresses

    def connect_to_scheduler(
        self, address: str, timeout: float = 10, *, show_logs: bool = False
    ) -> SparkConnection:
        """Connect to the Spark master at ``address`` and make it the active connection.

        While it is active, ``unified_map.parallel(f, xs)`` with no backend (and
        ``backend="spark"``) runs on this cluster as Spark tasks. The connection is a
        SparkContext (driver on this machine, UI off, no console progress bar, Spark's logs
        reduced to warnings and errors) whose executors run this very interpreter
        (``sys.executable``). Connecting again replaces the previous active connection.

        Parameters
        ----------
        address : str
            ``"host:port"`` or ``"spark://host:port"``.
        timeout : float, default 10
            Seconds to wait for the master to answer before giving up.
        scheduler_file : str, optional
            Instead of ``address``: a scheduler file (see :doc:`hpc`), waited for up to
            ``timeout`` seconds.
        py_files : list of str, optional
            Local ``.py``, ``.zip`` or ``.egg`` files and package folders to make importable
            on every worker (code the workers cannot see otherwise).
        show_logs : bool, default False
            Show Spark's own INFO logs on stderr.

        Returns
        -------
        SparkConnection
            A context manager that disconnects at exit; ``disconnect()`` does it by hand.

        Raises
        ------
        SchedulerUnreachableError
            No Spark master answered within ``timeout`` (a ``ConnectionError`` naming the
            address).

        Examples
        --------
        >>> import cluster_setup
        >>> from cluster_setup import spark
        >>> address = spark.start_scheduler("127.0.0.1:0")
        >>> with spark.connect_to_scheduler(address, timeout=10) as connection:
        ...     cluster_setup.active_connection() is connection
        True
        >>> spark.stop(address)
        """
        _driver.show_logs = show_logs
        where = parse_address(address, schemes=self._schemes())
        active = self.connection
        if active is not None and active.address != self._master_url(where):
            # pyspark has one SparkContext per process: the previous one goes first
            active.disconnect()
        return super().connect_to_scheduler(address, timeout)

    # -- the engine's parts for the shared verbs -------------------------------------------

    def _master_url(self, where: Address) -> str:
        host = _contact_host(where.host) if where.host == "localhost" else where.host
        return f"spark://{host}:{where.port}"

    def _connect(self, address: str, timeout: float) -> SparkConnection:
        where = parse_address(address, schemes=self._schemes())
        import_pyspark()
        check_java()
        ui_url = _probe_master(where, timeout)
        url = self._master_url(where)
        conf = _context_conf("127.0.0.1" if where.is_loopback else None, where)
        if ui_url is not None:
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                alive = [
                    w["memory"]
                    for w in _master_json(ui_url, timeout)["workers"]
                    if w.get("state") == "ALIVE"
                ]
                if alive:  # an executor bigger than a worker offers would never start
                    conf["spark.executor.memory"] = f"{min(alive)}m"
        return _driver.acquire(
            url, conf, timeout, lambda context: SparkConnection(self, url, context, ui_url)
        )

    def session_in_this_process(self) -> SparkConnection | None:
        """The SparkContext the script started itself (a SparkSession's), if any."""
        pyspark = sys.modules.get("pyspark")
        if pyspark is None or not hasattr(pyspark, "SparkContext"):
            return None
        context = pyspark.SparkContext._active_spark_context
        if context is None or context is _driver.context:
            return None
        return SparkConnection(self, context.master, context, adopted=True)

    def _start_local_cluster(self, n_workers: int) -> SparkConnection:
        """A ``local[n]`` session: one JVM, ``n_workers`` task threads, each running a
        Python worker process of this interpreter."""
        master = f"local[{n_workers}]"
        conf = _context_conf("127.0.0.1", None)
        return _driver.acquire(
            master,
            conf,
            60,
            lambda context: SparkConnection(self, master, context, evictable=True),
        )

    def _describe(self, connection: SparkConnection) -> tuple[list[WorkerInfo], str | None]:
        """The master's own list of workers (cores, memory, state) and its web UI."""
        if connection.local:
            cores = connection.context.defaultParallelism
            return [WorkerInfo(connection.address, cores, None, "local")], None
        status = connection.status()
        workers = [
            WorkerInfo(
                address=f"{w['host']}:{w['port']}",
                cores=w.get("cores", 0),
                memory=w.get("memory", 0) * 2**20 or None,
                name=w.get("state", ""),
            )
            for w in sorted(status["workers"], key=lambda w: (w["host"], w["port"]))
            if w.get("state") != "DEAD"
        ]
        return workers, connection.webui_url

    def _lost_workers(self, connection: SparkConnection) -> list[WorkerInfo]:
        """Workers the master lists as DEAD (it keeps them a while after losing them)."""
        if connection.local:
            return []
        return [
            WorkerInfo(f"{w['host']}:{w['port']}", w.get("cores", 0), name="DEAD")
            for w in sorted(connection.status()["workers"], key=lambda w: (w["host"], w["port"]))
            if w.get("state") == "DEAD"
        ]

    def _schemes(self) -> tuple[str, ...]:
        return ("spark",)

    # -- hooks of the shared verbs (see ClusterSetup) ----------------------------------------

    def _ship_py_files(self, connection: SparkConnection, files: list[str]) -> None:
        """``SparkContext.addPyFile``: every task of this application can import them."""
        for path in files:
            connection.context.addPyFile(path)

    def _worker_versions(self, connection: SparkConnection) -> dict[str, dict[str, str]]:
        """One small Spark job of one task per core running
        :func:`.environment.environment_versions`, keyed by each worker's host; given up
        (cancelled) after 30 s, and not run at all while no worker is alive."""
        hosts = set()
        if not connection.local:
            alive = [w for w in connection.status()["workers"] if w.get("state") == "ALIVE"]
            if not alive:
                return {}
            hosts = {w["host"] for w in alive}
        context = connection.context
        n = max(1, connection.slots())
        group = f"cluster_setup-versions-{uuid.uuid4().hex[:8]}"
        package = self.engine_package

        def run():
            context.setJobGroup(group, "cluster_setup: worker versions", interruptOnCancel=True)
            rdd = context.parallelize(range(n), n)
            return rdd.mapPartitions(partial(_versions_here, package)).collect()

        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: outcome.update(found=run()), daemon=True, name=group
        )
        thread.start()
        thread.join(30)
        if "found" not in outcome:
            with contextlib.suppress(Exception):
                context.cancelJobGroup(group)
            raise TimeoutError("the Spark job asking the workers' versions did not finish")
        found = {}
        for names, versions in outcome["found"]:  # the worker's host as the master lists it
            found[next((n for n in names if n in hosts), names[0])] = versions
        return found

    def _observe(self, address: str, timeout: float) -> ClusterConnection:
        """The master's status page only: no SparkContext (an application would take the
        workers' cores)."""
        where = parse_address(address, schemes=self._schemes())
        ui_url = _probe_master(where, timeout)
        return _MasterView(self, self._master_url(where), ui_url)

    def _worker_options(self, cores: int | None, memory: int | None) -> dict[str, Any]:
        """One worker offering the node's ``cores`` and ``memory`` (default: the machine's
        memory less 1 GiB, as Spark's own scripts do)."""
        if memory is None:
            import psutil

            memory = max(psutil.virtual_memory().total - 2**30, 2**29)
        return {"n_workers": 1, "cores": cores or 1, "memory": memory}

    def _daemon_env(self, home: str, host: str, options: dict[str, str]) -> dict[str, str]:
        env = {"SPARK_HOME": home, "SPARK_DAEMON_MEMORY": DAEMON_MEMORY, **options}
        if host not in ("0.0.0.0", "::", ""):
            env["SPARK_LOCAL_IP"] = host
        env["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
        return process_environment(env)


class _MasterView(ClusterConnection):
    """A Spark master seen through its status page: what the command line and the launcher
    watch for workers joining and leaving (see ``SparkSetup._observe``)."""

    backend_name = "spark"
    local = False
    status = SparkConnection.status

    def __init__(self, setup: ClusterSetup, address: str, webui_url: str | None):
        super().__init__(setup, address)
        self.webui_url = webui_url

    @property
    def reachable(self) -> bool:
        try:
            self.status()
        except SchedulerUnreachableError:
            return False
        return True

    def _count_slots(self) -> int:
        return sum(w.get("cores", 0) for w in self.status()["workers"] if w["state"] == "ALIVE")

    def _close(self) -> None:
        pass


def _versions_here(package: str, partition) -> list[tuple[list[str], dict[str, str]]]:
    """A Spark task's partition function: the names this worker's host may have in its
    master's list, and this worker's versions."""
    names = [os.environ.get(v, "") for v in ("SPARK_LOCAL_IP", "SPARK_LOCAL_HOSTNAME")]
    names.append(socket.gethostname())
    with contextlib.suppress(OSError):
        names.append(socket.gethostbyname(socket.gethostname()))
    return [([n for n in names if n], environment_versions(package))]


def _registered_worker(host: str, ui_port: int) -> dict | None:
    """The worker's own status page once it is registered with its master, else None."""
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        state = _get_json(f"http://{_contact_host(host)}:{ui_port}/json/", 2)
        if isinstance(state, dict) and state.get("masterwebuiurl"):
            return state
    return None


def _context_conf(driver_host: str | None, master: Address | None) -> dict[str, str]:
    """The SparkContext settings: driver on this machine's address towards the master, no
    UI, no console progress bar, this interpreter on the workers, the user's import folders
    on their path."""
    if driver_host is None and master is not None:
        driver_host = local_address_towards(_contact_host(master.host), master.port)
    conf = {
        "spark.driver.host": driver_host or "127.0.0.1",
        "spark.driver.bindAddress": driver_host or "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "spark.python.worker.reuse": "true",
    }
    folders = user_import_folders()
    if folders:
        conf["spark.executorEnv.PYTHONPATH"] = os.pathsep.join(folders)
    return conf
