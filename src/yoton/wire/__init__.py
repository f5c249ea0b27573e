"""Wire layer: byte-level formats of the yoton 2.2 protocol (framing, handshake, naming, codecs); no I/O."""
