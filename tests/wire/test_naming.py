"""Naming tests: port/slot hash vectors, address parsing, context ids and UID."""

import json
import socket
import threading

import pytest
from _orig import run_orig
from hypothesis import given, settings
from hypothesis import strategies as st

from yoton.wire.naming import UID, new_id, parse_address, port_hash, slot_hash


@pytest.mark.parametrize(
    "name, port", [("test", 56337), ("test1", 49382), ("yoton", 58084), ("chat", 49264), ("", 49152)]
)
def test_port_hash_vectors(name, port):
    assert port_hash(name) == port


@pytest.mark.parametrize(
    "name, slot",
    [
        ("foo.txt.pub-sub", 15285871923228),
        ("foo.txt.sub-pub", 15294965165520),
        ("bar.obj.req-rep", 14551158792090),
        ("bar.obj.rep-req", 14548763864078),
        ("spam.txt.state", 13684054656108),
        ("x.bin.pub-sub", 10806010495084),
    ],
)
def test_slot_hash_vectors(name, slot):
    assert slot_hash(name) == slot


def test_slot_hash_hashes_the_string_as_given():
    assert slot_hash("Foo.txt.pub-sub") != slot_hash("foo.txt.pub-sub")
    assert slot_hash(" Foo .txt.pub-sub ".strip().lower()) == slot_hash("foo .txt.pub-sub")


@given(st.text(max_size=60))
@settings(max_examples=200)
def test_hash_ranges(name):
    assert 49152 <= port_hash(name) < 2**16
    assert 8 <= slot_hash(name) < 2**64


def test_hash_rejects_non_str():
    with pytest.raises(TypeError):
        port_hash(b"test")


@pytest.mark.parametrize(
    "address, expected",
    [
        ("localhost:test+2", ("tcp", "127.0.0.1", 56339)),
        ("LocalHost:yoton", ("tcp", "127.0.0.1", 58084)),
        ("tcp://localhost:0", ("tcp", "127.0.0.1", 0)),
        ("TCP://127.0.0.1:test", ("tcp", "127.0.0.1", 56337)),
        ("tls://localhost:test", ("tls", "127.0.0.1", 56337)),
        ("example.org:65535", ("tcp", "example.org", 65535)),
        ("Example.Org:80", ("tcp", "Example.Org", 80)),
        ("localhost:test+-3", ("tcp", "127.0.0.1", 56334)),
        ("localhost:test+ 2", ("tcp", "127.0.0.1", 56339)),
        ("localhost: 5 ", ("tcp", "127.0.0.1", 5)),
        ("localhost:+5", ("tcp", "127.0.0.1", 5)),
        ("localhost:", ("tcp", "127.0.0.1", 49152)),
        ("localhost:1:2", ("tcp", "127.0.0.1", port_hash("1:2"))),  # only the first ':' splits
        ("localhost:5+1", ("tcp", "127.0.0.1", port_hash("5") + 1)),
        ("localhost:0x10", ("tcp", "127.0.0.1", port_hash("0x10"))),
        (":5", ("tcp", "", 5)),
        ("publichostx:5", ("tcp", "publichostx", 5)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address, match",
    [
        (3, "string"),
        (None, "string"),
        (b"localhost:1", "string"),
        ("localhost", "host:port"),
        ("tcp://localhost", "host:port"),
        ("localhost:test+x", "offset"),
        ("localhost:a+b+3", "offset"),
        ("localhost:test+2+", "offset"),
        ("localhost:70000", "range"),
        ("localhost:65536", "range"),
        ("localhost:-1", "range"),
        ("localhost:test+-70000", "range"),
        ("localhost:test+20000", "range"),
        ("a://b://c:5", "protocol"),
        ("://c:5", "protocol"),
    ],
)
def test_parse_address_errors(address, match):
    with pytest.raises(ValueError, match=match):
        parse_address(address)


@pytest.fixture
def two_public_addresses(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    monkeypatch.setattr(socket, "gethostbyname_ex", lambda name: (name, [], ["10.0.0.5", "192.168.1.7"]))


def test_publichost(two_public_addresses):
    assert parse_address("publichost:5") == ("tcp", "10.0.0.5", 5)
    assert parse_address("PublicHost0:5") == ("tcp", "10.0.0.5", 5)
    assert parse_address("publichost1:test") == ("tcp", "192.168.1.7", 56337)
    with pytest.raises(ValueError, match=r"Invalid index \(2\)"):
        parse_address("publichost2:5")


@given(st.integers(min_value=0, max_value=2**16 - 1))
def test_parse_integer_ports(port):
    assert parse_address(f"localhost:{port}") == ("tcp", "127.0.0.1", port)


def test_new_id_layout_and_order():
    ids = [new_id() for _ in range(2000)]
    stamps = [i >> 32 for i in ids]
    assert all(0 <= i < 2**64 for i in ids)
    assert all(s != 0 for s in stamps)
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert len({i & 0xFFFFFFFF for i in ids}) > 1990  # random low half


def test_new_id_threads():
    results = [[] for _ in range(8)]

    def work(out):
        for _ in range(500):
            out.append(new_id())

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [i >> 32 for r in results for i in r]
    assert len(set(stamps)) == len(stamps) == 4000  # strictly increasing => all distinct
    for r in results:
        assert all(a >> 32 < b >> 32 for a, b in zip(r, r[1:]))


def test_uid():
    u = UID(0x0102030405060708)
    assert u.get_int() == 0x0102030405060708 == int(u)
    assert u.get_hex() == "0102030405060708"
    assert u.get_bytes() == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert repr(u) == "<UID 01020304-05060708>"
    assert u == UID(0x0102030405060708) and u != UID(1) and u != 0x0102030405060708
    assert hash(u) == hash(UID(0x0102030405060708))
    assert UID(0x0DFF0A2FAA7A6C71).get_hex() == "0dff0a2faa7a6c71"
    assert UID(5).get_hex() == "0000000000000005"
    fresh = UID()
    assert fresh.get_int() >> 32 != 0 and len(fresh.get_hex()) == 16
    assert UID(fresh) == fresh


@pytest.mark.parametrize(
    "bad, exc", [(-1, ValueError), (2**64, ValueError), ("12", TypeError), (1.0, TypeError), (True, TypeError)]
)
def test_uid_rejects(bad, exc):
    with pytest.raises(exc):
        UID(bad)


def test_against_original():
    """The original's UID renderings and bound ports match ours (sockets faked, nothing opened)."""
    code = r"""
import json, socket, sys
bound = []
class FakeSocket:
    def __init__(self, *a, **k): pass
    def bind(self, addr): bound.append(list(addr)); raise OSError("fake bind")
    def __getattr__(self, name): return lambda *a, **k: None
socket.socket = FakeSocket
import yoton
values = json.loads(sys.stdin.read())
uids = [[repr(yoton.UID(v)), yoton.UID(v).get_hex(), yoton.UID(v).get_bytes().hex()] for v in values["uids"]]
ctx = yoton.Context()
for address in values["addresses"]:
    try:
        ctx.bind(address, max_tries=1)
    except OSError:
        pass
print(json.dumps({"uids": uids, "bound": bound}))
"""
    uids = [0, 1, 0x0102030405060708, 2**64 - 1, new_id()]
    addresses = [
        "localhost:test",
        "localhost:yoton+3",
        "x:chat",
        "LOCALHOST:Spam Eggs",
        "h:1:2",
        "h:+7",
        "tcp://h:weird name é+100",
    ]
    out = json.loads(run_orig(code, json.dumps({"uids": uids, "addresses": addresses})))
    assert out["uids"] == [[repr(UID(v)), UID(v).get_hex(), UID(v).get_bytes().hex()] for v in uids]
    assert out["bound"] == [list(parse_address(a)[1:]) for a in addresses]
