"""Which transport serves an address: one registry of address schemes.

The context never looks at an address itself: ``Context.bind`` and
``Context.connect`` hand it to :func:`open_bind` / :func:`open_connect`
here, which pick the transport by the address's scheme (the part before
``://``; ``tcp`` when there is none) and pass the options on. Built in:

=======  ====================  ==============================================
scheme   address               transport
=======  ====================  ==============================================
tcp      ``[tcp://]host:port``  :mod:`.stream` over TCP (yoton 2.2's)
tls      ``tls://host:port``    :mod:`.stream` over TCP inside TLS
ipc      ``ipc://PATH``         :mod:`.stream` over a Unix socket (:mod:`.unix`)
itc      ``itc://NAME``         :mod:`.itc`: contexts of this process, no sockets
nats     ``nats://host:port``   :mod:`.nats`: a NATS network (``yoton[nats]``; connect only)
=======  ====================  ==============================================

A transport provides two functions and a :class:`~yoton.transport.link.Link`
subclass (the contract the router talks to):

* ``open_bind(owner, handle, address, **options) -> Link``: listen, return
  the WAITING link (``handle`` is the new :class:`~yoton.Connection`);
* ``open_connect(owner, handle, address, timeout, **options) -> Link``:
  connect, return the CONNECTED link, or raise
  :class:`~yoton.errors.ConnectError` (or a subclass).

and registers them with :func:`register` under its scheme, with the options
it takes; an option it does not take is refused with a ``ValueError``
before it is called (``connect_options=None``: the transport checks its
own). A transport whose module should load only when its scheme is used
(``nats``: nats-py is an optional dependency) is named in ``_LAZY`` and
registers itself when imported. A new transport (a broker bridge, say) plugs in that
way without any change to routing or channels.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .connection import Connection
    from .link import Link, LinkOwner

__all__ = ["Scheme", "register", "lookup", "scheme_of", "names", "open_bind", "open_connect"]


@dataclass(frozen=True)
class Scheme:
    """One transport as the registry knows it (see the module docstring)."""

    name: str  #: the scheme in addresses, lower case ("tcp")
    open_bind: Callable  #: (owner, handle, address, **options) -> Link
    open_connect: Callable  #: (owner, handle, address, timeout, **options) -> Link
    connection_class: type  #: the Connection class bind/connect return
    bind_options: frozenset = field(default_factory=frozenset)  #: keyword options open_bind takes
    #: keyword options open_connect takes (None: any, the transport checks them)
    connect_options: frozenset | None = field(default_factory=frozenset)
    summary: str = ""  #: one line for error messages and docs


_registry: dict = {}
#: Schemes whose transport module is imported on first use (it registers itself).
_LAZY = {"nats": "yoton.transport.nats"}
_lock = threading.Lock()
_builtins_loaded = False


def register(scheme: Scheme, replace: bool = False) -> None:
    """Add a transport under ``scheme.name``; ValueError if the name is taken (unless ``replace``)."""
    name = scheme.name.lower()
    if not name or not name.isidentifier():
        raise ValueError(f"a scheme name must be a non-empty identifier, not {scheme.name!r}")
    with _lock:
        if not replace and name in _registry:
            raise ValueError(f"the scheme {name!r} is already registered")
        _registry[name] = scheme


def _load_builtins() -> None:
    # (Imported on first use: the transports import the connection module, which imports this one.)
    global _builtins_loaded
    if _builtins_loaded:
        return
    from . import itc, stream, unix
    from .connection import IpcConnection, ItcConnection, TcpConnection

    tcp_bind = frozenset({"max_tries", "ssl_context", "max_connections"})
    tcp_connect = frozenset({"ssl_context", "reconnect"})
    builtins = [
        Scheme("tcp", stream.open_bind, stream.open_connect, TcpConnection, tcp_bind, tcp_connect, "TCP"),
        Scheme("tls", stream.open_bind, stream.open_connect, TcpConnection, tcp_bind, tcp_connect, "TCP inside TLS"),
        Scheme(
            "ipc",
            unix.open_bind,
            unix.open_connect,
            IpcConnection,
            frozenset({"max_connections", "mode"}),
            frozenset({"reconnect"}),
            "Unix domain sockets",
        ),
        Scheme(
            "itc",
            itc.open_bind,
            itc.open_connect,
            ItcConnection,
            frozenset({"max_connections"}),
            frozenset(),
            "contexts of this process",
        ),
    ]
    with _lock:
        for scheme in builtins:
            _registry.setdefault(scheme.name, scheme)
        _builtins_loaded = True


def scheme_of(address: object) -> str:
    """The scheme of ``address``: the part before ``://``, lower case; ``tcp`` without one."""
    if not isinstance(address, str):
        raise ValueError(f"Address should be a string, not {type(address).__name__}.")
    if "://" not in address:
        return "tcp"
    return address.partition("://")[0].strip().lower()


def lookup(address: object) -> Scheme:
    """The transport for ``address``; ValueError for a scheme nobody registered."""
    _load_builtins()
    name = scheme_of(address)
    scheme = _registry.get(name)
    if scheme is None and name in _LAZY:
        importlib.import_module(_LAZY[name])  # (registers the scheme)
        scheme = _registry.get(name)
    if scheme is None:
        known = ", ".join(f"{n}://" for n in names())
        raise ValueError(f"unsupported protocol {name!r} in address {address!r} (use one of {known})")
    return scheme


def names() -> list:
    """The registered schemes (and those whose transport loads on first use)."""
    _load_builtins()
    with _lock:
        return sorted(set(_registry) | set(_LAZY))


def _check(scheme: Scheme, options: dict, allowed: frozenset | None, what: str) -> None:
    if allowed is None:
        return
    for option in options:
        if option not in allowed:
            raise ValueError(f"{option} does not apply to {what} {scheme.name}:// addresses ({scheme.summary})")


def open_bind(owner: LinkOwner, handle: Connection, address: str, **options: Any) -> Link:
    """Listen on ``address`` with its scheme's transport; return the WAITING link."""
    scheme = lookup(address)
    _check(scheme, options, scheme.bind_options, "binding to")
    return scheme.open_bind(owner, handle, address, **options)


def open_connect(owner: LinkOwner, handle: Connection, address: str, timeout: float, **options: Any) -> Link:
    """Connect to ``address`` with its scheme's transport; return the CONNECTED link."""
    scheme = lookup(address)
    _check(scheme, options, scheme.connect_options, "connecting to")
    return scheme.open_connect(owner, handle, address, timeout, **options)
