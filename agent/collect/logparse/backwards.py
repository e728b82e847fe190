"""Read a file's lines from the end towards the start, in blocks.

"The last N hours of a 200 MB log" costs only the bytes of those hours: blocks are
read from the end and split on newlines; the caller stops when lines get too old.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["BLOCK_SIZE", "MAX_LINE_BYTES", "read_lines_backwards"]

BLOCK_SIZE = 256 * 1024
# A "line" longer than this (a binary file, a log without newlines) is cut into pieces
# rather than growing without bound while we look for its start.
MAX_LINE_BYTES = 1024 * 1024


def read_lines_backwards(
    fh: BinaryIO, *, block_size: int = BLOCK_SIZE, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, line)`` newest first, without the newline; offset = line start.

    ``end`` defaults to the file's size now: bytes appended meanwhile are ignored, so a
    live log gives a consistent snapshot. A final line without newline is yielded too.
    """
    pos = os.fstat(fh.fileno()).st_size if end is None else end
    tail = b""  # the partial (oldest-so-far) line carried between blocks
    first = True
    while pos > 0:
        size = min(block_size, pos)
        pos -= size
        fh.seek(pos)
        block = fh.read(size)
        if len(block) < size:  # the file shrank under us (rotation): stop cleanly
            return
        buf = block + tail
        if first:
            first = False
            if buf.endswith(b"\n"):
                buf = buf[:-1]
        lines = buf.split(b"\n")
        tail = lines[0]
        offset = pos + len(buf)
        for line in reversed(lines[1:]):
            offset -= len(line) + 1
            yield offset + 1, line.rstrip(b"\r")
        if len(tail) > MAX_LINE_BYTES:
            cut = len(tail) - MAX_LINE_BYTES
            yield pos + cut, tail[cut:]
            tail = tail[:cut]
    if not first:  # something was read: the remaining tail is the file's first line
        yield 0, tail.rstrip(b"\r")
