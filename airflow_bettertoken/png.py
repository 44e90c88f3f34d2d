"""PNG checks on bytes in memory: the header for the real size, and a full decode before upload."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from airflow_bettertoken.exceptions import BetterTokenResponseError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Images larger than this are refused before decoding: a guard against decompression bombs.
#: 4096 x 4096 is twice the largest size tier (3840 x 2160).
DEFAULT_MAX_PIXELS = 4096 * 4096
# Signature, then the IHDR chunk: length, type, 13 bytes of data, CRC.
_IHDR_END = 8 + 4 + 4 + 13 + 4


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int


def read_png_header(data: bytes | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> PngHeader:
    """Read width and height from the IHDR chunk, checking the signature and the chunk's CRC.

    :raises BetterTokenResponseError: if the bytes are no PNG, or the size is zero or over ``max_pixels``.
    """
    head = bytes(data[:_IHDR_END])
    if not head.startswith(PNG_SIGNATURE):
        raise BetterTokenResponseError("the image is not a PNG (bad signature)")
    if len(head) < _IHDR_END:
        raise BetterTokenResponseError(f"the PNG is truncated: {len(head)} bytes, no complete IHDR")
    length, chunk_type = struct.unpack(">I4s", head[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise BetterTokenResponseError("the PNG has no IHDR chunk first")
    ihdr = head[16:29]
    (crc,) = struct.unpack(">I", head[29:33])
    if zlib.crc32(b"IHDR" + ihdr) != crc:
        raise BetterTokenResponseError("the PNG's IHDR chunk has a bad CRC")
    width, height = struct.unpack(">II", ihdr[:8])
    if width == 0 or height == 0:
        raise BetterTokenResponseError(f"the PNG claims an empty size of {width}x{height}")
    if width * height > max_pixels:
        raise BetterTokenResponseError(
            f"the PNG claims {width}x{height} pixels, more than the limit of {max_pixels} (max_pixels)"
        )
    return PngHeader(width, height)


def verify_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PngHeader:
    """Decode the whole PNG with Pillow, so that no truncated or corrupt image is ever stored.

    The header is checked first, so that Pillow never allocates an oversized image.
    The decoded pixels are released before this returns.

    :raises BetterTokenResponseError: if any chunk or pixel row is broken.
    """
    from PIL import Image  # Pillow is heavy: import it only where pixels are decoded.

    header = read_png_header(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()  # chunk structure and CRCs
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()  # every pixel row
    except Exception as err:  # Pillow raises many types for broken data (OSError, SyntaxError, ...)
        raise BetterTokenResponseError(f"the PNG does not decode: {type(err).__name__}: {err}") from err
    return header
