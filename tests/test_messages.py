"""Message type tests: TEXT, BINARY, OBJECT, user types and as_message_type."""

import io
import json
import sys

import pytest
from _orig import run_orig
from hypothesis import given, settings
from hypothesis import strategies as st

from yoton.messages import (
    BINARY,
    OBJECT,
    TEXT,
    BinaryMessageType,
    MessageType,
    ObjectMessageType,
    TextMessageType,
    as_message_type,
)


def test_names_and_empty_messages():
    assert (TEXT.message_type_name(), BINARY.message_type_name(), OBJECT.message_type_name()) == ("txt", "bin", "obj")
    assert TEXT.empty_message() == "" and BINARY.empty_message() == b"" and OBJECT.empty_message() is None
    assert TEXT.message_from_bytes(b"") == "" and BINARY.message_from_bytes(b"") == b""
    assert OBJECT.message_from_bytes(b"") is None
    assert isinstance(TEXT, TextMessageType) and isinstance(BINARY, BinaryMessageType)
    assert isinstance(OBJECT, ObjectMessageType)
    assert repr(TEXT) == "<TextMessageType 'txt'>"


def test_text():
    assert TEXT.message_to_bytes("hé") == b"h\xc3\xa9"
    assert TEXT.message_from_bytes(b"h\xc3\xa9") == "hé"
    assert TEXT.message_from_bytes(bytearray(b"ab")) == "ab"
    assert TEXT.message_from_bytes(memoryview(b"xab")[1:]) == "ab"
    assert TEXT.message_from_bytes(b"a\xffb") == "a\ufffdb"  # bad UTF-8 from a peer does not raise
    assert TEXT.message_to_bytes(b"h\xc3\xa9") == b"h\xc3\xa9"
    assert TEXT.message_to_bytes(bytearray(b"ok")) == b"ok"


def test_text_bytes_fall_back_to_stdin_encoding_then_repr(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(), encoding="latin-1"))
    assert TEXT.message_to_bytes(b"caf\xe9") == "café".encode()
    monkeypatch.setattr(sys, "stdin", None)
    assert TEXT.message_to_bytes(b"caf\xe9") == b"b'caf\\xe9'"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert TEXT.message_to_bytes(b"caf\xe9") == b"b'caf\\xe9'"


@pytest.mark.parametrize("bad, name", [(3, "int"), (None, "NoneType"), (["a"], "list"), (1.5, "float")])
def test_text_rejects(bad, name):
    with pytest.raises(ValueError, match=f"TEXT messages must be str, not {name}"):
        TEXT.message_to_bytes(bad)


def test_text_lone_surrogate():
    with pytest.raises(ValueError):
        TEXT.message_to_bytes("\udc80")


def test_binary():
    assert BINARY.message_to_bytes(b"\x00\xff") == b"\x00\xff"
    assert BINARY.message_to_bytes(bytearray(b"ab")) == b"ab"
    assert type(BINARY.message_to_bytes(memoryview(b"xab")[1:])) is bytes
    assert BINARY.message_from_bytes(memoryview(b"ab")) == b"ab"
    assert type(BINARY.message_from_bytes(bytearray(b"ab"))) is bytes


@pytest.mark.parametrize("bad, name", [("x", "str"), (3, "int"), (None, "NoneType")])
def test_binary_rejects(bad, name):
    with pytest.raises(ValueError, match=f"BINARY messages must be bytes, not {name}"):
        BINARY.message_to_bytes(bad)


def test_object():
    value = ("echo", ("hi", 3), {"sleep": 0.5})
    assert OBJECT.message_from_bytes(OBJECT.message_to_bytes(value)) == value
    assert OBJECT.message_to_bytes([1, "a"]).hex() == "6c02690100000000000000730161"
    with pytest.raises(ValueError, match="set"):
        OBJECT.message_to_bytes({1})
    with pytest.raises(ValueError):
        OBJECT.message_from_bytes(b"?")


class Upper(MessageType):
    def message_type_name(self):
        return "upper"

    def message_to_bytes(self, message):
        return message.upper().encode()

    def message_from_bytes(self, data):
        return bytes(data).decode().lower() or "<empty>"


def test_user_type_and_base_defaults():
    u = Upper()
    assert u.message_from_bytes(u.message_to_bytes("abc")) == "abc"
    assert u.empty_message() == "<empty>"  # default: decode b''
    base = MessageType()
    for call in (base.message_type_name, lambda: base.message_to_bytes("x"), lambda: base.message_from_bytes(b"")):
        with pytest.raises(NotImplementedError):
            call()
    assert "?" in repr(base)


def test_as_message_type():
    assert as_message_type(None) is TEXT
    assert as_message_type(OBJECT) is OBJECT
    assert isinstance(as_message_type(Upper), Upper)
    assert isinstance(as_message_type(BinaryMessageType), BinaryMessageType)
    for bad in ("txt", 3, str, object()):
        with pytest.raises(ValueError, match="MessageType"):
            as_message_type(bad)


@given(st.text(st.characters(blacklist_categories=("Cs",))))
@settings(max_examples=200)
def test_text_round_trip(text):
    assert TEXT.message_from_bytes(TEXT.message_to_bytes(text)) == text


@given(st.binary())
@settings(max_examples=200)
def test_binary_round_trip(data):
    assert BINARY.message_from_bytes(BINARY.message_to_bytes(data)) == data


def test_parity_with_original():
    code = r"""
import json, sys
import yoton
texts, blobs = json.loads(sys.stdin.read())
print(json.dumps({
    "names": [t.message_type_name() for t in (yoton.TEXT, yoton.BINARY, yoton.OBJECT)],
    "text": [yoton.TEXT.message_to_bytes(t).hex() for t in texts],
    "text_back": [yoton.TEXT.message_from_bytes(t.encode("utf-8")) for t in texts],
    "bin": [yoton.BINARY.message_to_bytes(bytes.fromhex(b)).hex() for b in blobs],
    "empty": [repr(t.message_from_bytes(b"")) for t in (yoton.TEXT, yoton.BINARY, yoton.OBJECT)],
}))
"""
    texts = ["", "a", "hé€😀", "x" * 1000, "line\r\nnext\x00"]
    blobs = ["", "00ff", "59544f4e2020"]
    out = json.loads(run_orig(code, json.dumps([texts, blobs])))
    assert out["names"] == ["txt", "bin", "obj"]
    assert out["text"] == [TEXT.message_to_bytes(t).hex() for t in texts]
    assert out["text_back"] == texts
    assert out["bin"] == [BINARY.message_to_bytes(bytes.fromhex(b)).hex() for b in blobs]
    assert out["empty"] == [repr(t.empty_message()) for t in (TEXT, BINARY, OBJECT)]
