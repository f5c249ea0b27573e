"""The ``itc://NAME`` transport (in progress)."""

from __future__ import annotations


def open_bind(owner, handle, address, max_connections=1):
    raise NotImplementedError


def open_connect(owner, handle, address, timeout=1.0):
    raise NotImplementedError
