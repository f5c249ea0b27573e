"""Connection: a settable ``name`` (yoton 2.2) and the ``port`` property of yoton's reference page."""

from __future__ import annotations

import socket
import textwrap

import pytest
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def test_name_is_settable(ctx):
    a, b = ctx(), ctx()
    conn = a.bind("127.0.0.1:0", name="first")
    other = b.connect(f"127.0.0.1:{conn.port1}", timeout=5)
    wait_until(lambda: conn.is_connected, 5, "the connection")
    conn.name = "renamed"
    assert conn.name == "renamed" and a.connections["renamed"] is conn
    assert a.connections.get("first") is None
    other.name = "to a"
    assert b.connections["to a"] is other
    with pytest.raises(ValueError):  # as in yoton 2.2
        conn.name = 42
    assert conn.name == "renamed"


def test_name_setter_as_in_22(run_both):
    code = textwrap.dedent("""
        import yoton
        c = yoton.Context().bind("localhost:0")
        c.name = "x"
        print(c.name)
        for bad in (1, None, b"x"):
            try:
                c.name = bad
            except ValueError:
                print("ValueError")
        c.close()
    """)
    orig, ours = run_both(code)
    assert orig == "x\nValueError\nValueError\nValueError\n"
    assert ours == orig


def _taken_ports(count):
    """Listen on ``count`` consecutive free ports; return (first port, sockets)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
                s.listen(1)
            return first, socks
        except OSError:
            for s in socks:
                s.close()
    pytest.skip("found no run of free consecutive ports")


def test_port_is_where_a_bind_ended_up_and_what_a_connect_reached(ctx):
    # max_tries: after port p, 2.2 tries p+1, p+2, p+3, p+5 (adding int(sqrt(i + 1)))
    first, taken = _taken_ports(3)
    try:
        a, b = ctx(), ctx()
        conn = a.bind(f"127.0.0.1:{first}", max_tries=5)
        # p+3 unless another test's socket took it meanwhile (parallel runs): then p+5
        port = conn.port
        assert port in (first + 3, first + 5) and conn.port1 == port
        other = b.connect(f"127.0.0.1:{conn.port}", timeout=5)
        wait_until(lambda: conn.is_connected, 5, "the connection")
        assert other.port == port == other.port2  # the port connected to
        assert other.port1 != other.port  # (its own end is another port)
        assert conn.port == port  # once connected too
        other.close()
        wait_until(lambda: not conn.is_alive, 5, "the close")
        assert (conn.port, other.port) == (port, port)  # and after
    finally:
        for s in taken:
            s.close()
