"""How a command recognises its own earlier outputs (which it may replace without ``--overwrite``; the
rule itself is :func:`r2r.fileio.check_output_file`): a marker in the JSON reports it writes, and a
marker in the PNG text chunk / JPEG comment of the images it writes."""

from __future__ import annotations

import json
import os
import stat

#: the key and value r2r puts in the JSON reports it writes (how a later run recognises its own report)
REPORT_KEY = "written_by"


def report_marker(tool: str) -> dict:
    """The entry r2r puts first in a JSON report written by ``tool`` (see :func:`is_own_report`)."""
    return {REPORT_KEY: tool}


def is_own_report(path, tool: str, max_bytes: int = 512 << 20, keys: tuple[str, ...] = (REPORT_KEY,)) -> bool:
    """True when ``path`` is a regular JSON file (not a pipe or device: never blocks) that ``tool`` wrote
    earlier, named under one of ``keys``: it may be replaced without asking."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) or os.path.getsize(path) > max_bytes:
            return False
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and any(data.get(key) == tool for key in keys)


#: the text key r2r writes into the PNG/JPEG images a command produces (how a later run of that command
#: recognises its own earlier result and may replace it without --overwrite)
IMAGE_MARKER = b"r2r-output"


def _marker_text(marker: str) -> bytes:
    return IMAGE_MARKER + b"\0" + marker.encode("ascii")


def with_marker(data: bytes, ext: str, marker: str) -> bytes:
    import struct
    import zlib

    text = _marker_text(marker)
    if ext == ".png":  # a tEXt chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)
        chunk = b"tEXt" + text
        return data[:33] + struct.pack(">I", len(text)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    if ext in (".jpg", ".jpeg"):  # a COM segment right after SOI
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    return data  # .webp/.bmp/.tif: no marker (such an earlier result needs --overwrite to be replaced)


def is_own_image(path, marker: str, head_bytes: int = 4096) -> bool:
    """True when ``path`` is an image r2r wrote with ``marker`` (its PNG text chunk or JPEG comment)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(head_bytes)
    except OSError:
        return False
    return _marker_text(marker) in head
