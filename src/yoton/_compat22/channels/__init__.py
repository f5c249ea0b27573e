"""yoton 2.2's submodules of ``yoton.channels`` (compatibility paths; see ``yoton._compat22``).

Imported as ``yoton.channels.<name>``: this folder is on ``yoton.channels.__path__``.
"""
