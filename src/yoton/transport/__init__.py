"""Transport: the I/O thread and TCP connections of a context."""
