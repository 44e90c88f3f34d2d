"""Broken PNGs for the tests: made by hand, since no encoder makes them."""

from __future__ import annotations

import struct
import zlib


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR for any size, with no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def with_bad_crc(png: bytes) -> bytes:
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    crc_at = idat + 4 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def build_png(
    width: int,
    height: int,
    raw: bytes,
    *,
    color_type: int = 2,
    bit_depth: int = 8,
    interlace: int = 0,
    extra: list[bytes] = (),
    idat_parts: int = 1,
    iend: bool = True,
) -> bytes:
    """A PNG from raw, already filtered scanlines, with control over every part that can break."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    data = zlib.compress(raw)
    step = -(-len(data) // idat_parts)
    idats = b"".join(chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + idats
        + (chunk(b"IEND", b"") if iend else b"")
    )


def rgb_rows(width: int, height: int, filter_type: int = 0) -> bytes:
    return b"".join(
        bytes([filter_type]) + bytes((x * 7 + y) % 256 for x in range(width * 3)) for y in range(height)
    )


def adam7_rows(width: int, height: int) -> bytes:
    """Raw scanlines of an interlaced 8-bit greyscale image, pass after pass."""
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    out = b""
    for x0, y0, dx, dy in passes:
        pass_width = (width - x0 + dx - 1) // dx
        for y in range(y0, height, dy):
            if pass_width:
                out += b"\x00" + bytes((x * 3 + y) % 256 for x in range(x0, width, dx))
    return out
