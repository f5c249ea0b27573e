"""Compatibility paths: yoton 2.2's module names, for code that imports them.

yoton 2.2 kept its code in ``yoton.misc``, ``yoton.core``,
``yoton.connection``, ``yoton.connection_tcp``, ``yoton.connection_itc``,
``yoton.clientserver`` and ``yoton.channels.channels_*`` /
``yoton.channels.message_types``. This project is laid out differently
(``yoton.wire``, ``yoton.transport``, ``yoton.channels``, ``yoton.sugar``),
so the modules in this folder stand in for the old names: each only
re-exports, from where it lives now, what yoton 2.2 had under that name
(internals without a counterpart here, such as 2.2's I/O thread and queue
classes, are left out).

They are reached by their old names, never as ``yoton._compat22``:
``yoton/__init__.py`` adds this folder to ``yoton.__path__`` and
``yoton/channels/__init__.py`` adds ``channels/`` to ``yoton.channels.__path__``,
so ``import yoton.clientserver`` or
``from yoton.channels.channels_file import FileWrapper`` just work.
"""
