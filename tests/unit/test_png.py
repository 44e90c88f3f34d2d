from __future__ import annotations

import struct
import zlib

import pytest

from airflow_bettertoken.emulator.samples import sample_image
from airflow_bettertoken.exceptions import BetterTokenResponseError
from airflow_bettertoken.png import read_png_header, verify_png

PNG = sample_image(120, 80, "png")


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


def test_header_gives_the_real_size():
    header = read_png_header(PNG)
    assert (header.width, header.height) == (120, 80)


def test_a_header_claiming_a_huge_image_is_refused_before_decoding():
    with pytest.raises(BetterTokenResponseError, match="100000x100000 pixels, more than the limit"):
        read_png_header(png_claiming(100_000, 100_000))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PNG[: len(PNG) // 2], "does not decode"),
        (with_bad_crc(PNG), "does not decode"),
        (png_claiming(100_000, 100_000), "more than the limit"),
        (b"not a png at all", "not a PNG"),
    ],
    ids=["truncated", "bad-crc", "bomb", "not-png"],
)
def test_verify_refuses_broken_images(data, message):
    with pytest.raises(BetterTokenResponseError, match=message):
        verify_png(data)


def test_verify_accepts_a_whole_png():
    assert verify_png(PNG).width == 120
