"""Addresses: parsing ``host:port`` / ``scheme://host:port``, loopback and port checks, and
comparing two addresses as endpoints (after resolving host names), never as strings.

Examples
--------
>>> from cluster_setup.addresses import parse_address, same_endpoint
>>> parse_address("127.0.0.1:8786").url
'tcp://127.0.0.1:8786'
>>> same_endpoint("localhost:8786", "tcp://127.0.0.1:8786")
True
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass

from .errors import InvalidAddressError, PortInUseError

__all__ = [
    "Address",
    "parse_address",
    "is_loopback",
    "check_port_free",
    "local_address_towards",
    "same_endpoint",
    "refusal",
]

_ADDRESS_RE = re.compile(
    r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[^\]]*\]|[^:/\s\[\]]+):(?P<port>[0-9]+)/?\Z"
)


@dataclass(frozen=True)
class Address:
    """A parsed ``scheme://host:port`` address.

    Examples
    --------
    >>> Address("tcp", "127.0.0.1", 8786).url
    'tcp://127.0.0.1:8786'
    >>> Address("tcp", "localhost", 1).is_loopback
    True
    """

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """The address as ``scheme://host:port``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether the host is this machine only (``127.x.x.x``, ``::1``, ``localhost``)."""
        return is_loopback(self.host)

    def __str__(self) -> str:
        return self.url


def _form(schemes: tuple[str, ...], listen: bool) -> str:
    forms = " or ".join(f"'{scheme}://host:port'" for scheme in schemes)
    hint = "; port 0 picks a free one" if listen else ""
    return f"'host:port' or {forms} (for example '127.0.0.1:8786'{hint})"


def parse_address(
    text: str, *, schemes: tuple[str, ...] = ("tcp",), listen: bool = False
) -> Address:
    """Parse ``"host:port"`` or ``"<scheme>://host:port"``; raise a ValueError naming the form.

    Parameters
    ----------
    text : str
        The address to parse. Port 0 means "pick a free port" where a server is started.
    schemes : tuple of str, default ("tcp",)
        The accepted schemes (``("spark",)``, ``("ray",)``...); the first one is used when
        the address has none.
    listen : bool, default False
        Whether a server will listen there (then port 0, "a free one", makes sense and the
        error message says so).

    Returns
    -------
    Address

    Raises
    ------
    InvalidAddressError
        A ``ValueError`` naming the expected form.

    Examples
    --------
    >>> parse_address("127.0.0.1:8786")
    Address(scheme='tcp', host='127.0.0.1', port=8786)
    >>> parse_address("tcp://node7:0").url
    'tcp://node7:0'
    >>> parse_address("[::1]:8786").host
    '[::1]'
    >>> parse_address("spark://node7:7077", schemes=("spark",)).url
    'spark://node7:7077'
    >>> parse_address("node7")
    Traceback (most recent call last):
    ...
    cluster_setup.errors.InvalidAddressError: invalid address 'node7': expected 'host:port' ...
    >>> parse_address("127.0.0.1:99999")
    Traceback (most recent call last):
    ...
    cluster_setup.errors.InvalidAddressError: invalid address '127.0.0.1:99999': the port must ...

    The port is ASCII digits, and a host in brackets must be an IPv6 address:

    >>> for bad in ["127.0.0.1:\\uff18\\uff17", "[]:1", "[not-ip]:1", "[127.0.0.1]:1"]:
    ...     try:
    ...         parse_address(bad)
    ...     except ValueError:
    ...         print("refused", ascii(bad))
    refused '127.0.0.1:\\uff18\\uff17'
    refused '[]:1'
    refused '[not-ip]:1'
    refused '[127.0.0.1]:1'
    """
    match = _ADDRESS_RE.match(text.strip()) if isinstance(text, str) else None
    scheme = (match and match["scheme"]) or schemes[0]
    if (
        match is None
        or scheme not in schemes
        or (match["host"].startswith("[") and not _is_ipv6(match["host"][1:-1]))
    ):
        raise InvalidAddressError(f"invalid address {text!r}: expected {_form(schemes, listen)}")
    if int(match["port"]) > 65535:
        raise InvalidAddressError(f"invalid address {text!r}: the port must be 0-65535")
    return Address(scheme, match["host"], int(match["port"]))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("10.0.0.5")
    (True, True, False)
    """
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` at once if ``host:port`` cannot be listened on.

    Port 0 is always free. The check binds the way the engines do (``SO_REUSEADDR``), so a
    port that is merely in TIME_WAIT after a previous run is not reported as taken.

    Examples
    --------
    >>> check_port_free("127.0.0.1", 0)
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise PortInUseError(
                exc.errno,
                f"cannot listen on {host}:{port}: the port is already in use "
                f"(choose another port, or port 0 for a free one)",
            ) from exc


def local_address_towards(host: str, port: int) -> str:
    """The IP address of this machine's interface that routes to ``host`` (no packet sent).

    Examples
    --------
    >>> local_address_towards("127.0.0.1", 8786)
    '127.0.0.1'
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return sock.getsockname()[0]


def same_endpoint(a: str | Address, b: str | Address) -> bool:
    """Whether two addresses reach the same listening socket, after resolving host names.

    ``"localhost:5"`` and ``"tcp://127.0.0.1:5"`` are the same endpoint; the scheme is not
    compared (an engine's addresses all share one). An address that cannot be parsed, or a
    host that cannot be resolved, is compared as written.

    Examples
    --------
    >>> same_endpoint("localhost:8786", "tcp://127.0.0.1:8786")
    True
    >>> same_endpoint("127.0.0.1:8786", "127.0.0.1:8787")
    False
    """
    try:
        first = a if isinstance(a, Address) else parse_address(a, schemes=_any_scheme(a))
        second = b if isinstance(b, Address) else parse_address(b, schemes=_any_scheme(b))
    except InvalidAddressError:
        return a == b
    if first.port != second.port:
        return False
    if first.host.strip("[]").lower() == second.host.strip("[]").lower():
        return True
    return bool(_resolve(first.host.strip("[]")) & _resolve(second.host.strip("[]")))


def _any_scheme(text: str) -> tuple[str, ...]:
    scheme = text.split("://", 1)[0] if "://" in text else "tcp"
    return (scheme,)


@functools.lru_cache(maxsize=256)
def _resolve(host: str) -> frozenset[str]:
    """The IP addresses ``host`` resolves to (itself when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset({host})
    return frozenset(str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos)


def refusal(host: str, port: int, timeout: float = 2.0) -> str | None:
    """Why nothing accepts TCP connections at ``host:port`` right now (``"connection
    refused"``, ``"timed out"``, ``"host not found"``...), or ``None`` when something does.

    A refused connection is known at once, where a client would keep retrying until its
    timeout: the command line says so immediately.

    Examples
    --------
    >>> with socket.socket() as listener:
    ...     listener.bind(("127.0.0.1", 0))
    ...     port = listener.getsockname()[1]
    ...     refusal("127.0.0.1", port)
    'connection refused'
    """
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror as exc:
        return f"host not found ({exc.strerror or exc})"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
