"""Channel internals that code written for yoton 2.2 touches.

Custom channel classes name their slots with ``_messaging_patterns()``;
``BaseChannel`` cannot be made directly; channels have ``message_to_bytes`` /
``message_from_bytes``; ``Package`` keeps 2.2's attribute names; a
``received`` event is queued when messages arrive, so handlers bound before
the event loop runs are called for them.
"""

from __future__ import annotations

import textwrap
import threading

import pytest
from compat_run import run_script
from helpers import link, wait_until

import yoton

pytestmark = pytest.mark.timeout(60)


class MinePub(yoton.PubChannel):
    """A channel class as written for yoton 2.2: its own patterns, so only MineSub hears it."""

    def _messaging_patterns(self):
        return "mine-x", "x-mine"


class MineSub(yoton.SubChannel):
    def _messaging_patterns(self):
        return "x-mine", "mine-x"


def test_custom_patterns_name_the_slots(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    pub, sub, plain = MinePub(a, "c"), MineSub(b, "c"), yoton.SubChannel(b, "c")
    assert (pub.slot_outgoing, pub.slot_incoming) == ("c.txt.mine-x", "c.txt.x-mine")
    assert (sub.slot_outgoing, sub.slot_incoming) == ("c.txt.x-mine", "c.txt.mine-x")
    pub.send("for mine only")
    assert sub.recv(5) == "for mine only"
    assert plain.recv(0.2) == ""  # a plain pub/sub channel of the same name is elsewhere


def test_custom_channel_of_22_talks_to_ours(ctx):
    code = textwrap.dedent("""
        import sys, yoton
        class MineSub(yoton.SubChannel):
            def _messaging_patterns(self):
                return "x-mine", "mine-x"
        ct = yoton.Context()
        sub = MineSub(ct, "c")
        ct.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
        print(sub.slot_incoming, sub.recv(10.0))
    """)
    a = ctx()
    conn = a.bind("127.0.0.1:0")
    pub = MinePub(a, "c")
    box = []
    thread = threading.Thread(target=lambda: box.append(run_script("orig", code, conn.port1)))
    thread.start()
    wait_until(lambda: conn.is_connected, 15, "the original to connect")
    pub.send("from ours")
    thread.join(30)
    assert box[0].stdout == "c.txt.mine-x from ours\n"


def test_base_channel_cannot_be_made(ctx):
    c = ctx()
    with pytest.raises(NotImplementedError):
        yoton.BaseChannel(c, "base")

    class NoSlots(yoton.BaseChannel):
        def _messaging_patterns(self):
            return "", ""

    with pytest.raises(ValueError):
        NoSlots(c, "none")


def test_message_conversion_on_channels(run_both):
    code = textwrap.dedent("""
        import yoton
        ct = yoton.Context()
        for channel in (yoton.PubChannel(ct, "t"), yoton.SubChannel(ct, "o", yoton.OBJECT),
                        yoton.StateChannel(ct, "b", yoton.BINARY), yoton.ReqChannel(ct, "r")):
            print(type(channel).__name__)
            # (not bytes for TEXT: ours reads them as UTF-8 text where 2.2 refused them)
            values = [b"raw"] if channel.slot_outgoing.endswith(".bin.state") else ["h\\u00e9", [1, (2.5, None)]]
            for value in values:
                try:
                    data = channel.message_to_bytes(value)
                    print(" ", repr(data), repr(channel.message_from_bytes(data)))
                except ValueError:
                    print("  ValueError")
    """)
    orig, ours = run_both(code)
    assert "PubChannel" in orig
    assert ours == orig


def test_package_names_of_22(run_both):
    code = textwrap.dedent("""
        import yoton
        p = yoton.Package(b"abc", 10, 1, 2, 3, 4, 5)
        print(str(p))
        print(p._data, p._slot, p._source_id, p._source_seq, p._dest_id, p._dest_seq, p._recv_seq)
        header, body = p.parts()
        print(header.hex(), body)
        q, n = yoton.Package.from_header(header)
        print(q._data, q._slot, q._source_id, q._source_seq, q._dest_id, q._dest_seq, q._recv_seq, n)
        print(yoton.Package.from_header(b"x" * 56))
        p._slot = 11
        print(str(p))
    """)
    orig, ours = run_both(code)
    assert orig.startswith("At slot 10: b'abc'")
    assert ours == orig


STATUS = textwrap.dedent("""
    import sys, time, yoton
    a, b = yoton.Context(), yoton.Context()
    a.bind("127.0.0.1:%s" % sys.argv[1])
    b.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
    pub, sub = yoton.StateChannel(a, "s"), yoton.StateChannel(b, "s")
    pub.send("READY")
    deadline = time.time() + 10
    while sub.recv() != "READY" and time.time() < deadline:
        time.sleep(0.01)
    got = []
    sub.received.bind(lambda ch: got.append(ch.recv()))  # bound after the state arrived
    yoton.process_events()
    print(got)
""")


def test_received_for_what_arrived_before_the_handler(run_both, free_port):
    orig, ours = run_both(STATUS, free_port())
    assert orig == "['READY']\n"
    assert ours == orig
