"""PNG checks on bytes in memory: the header for the real size, and a streaming check of every byte."""

from __future__ import annotations

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


# Bits per pixel sample count by colour type, and the bit depths each allows (PNG spec, 11.2.2).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7: (x start, y start, x step, y step) of the seven passes.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Inflate at most this much at a time, so a check never holds more than this of the pixels.
_INFLATE_STEP = 1 << 20


def _scanline_bytes(width: int, bits_per_pixel: int) -> int:
    return 1 + (width * bits_per_pixel + 7) // 8  # the filter-type byte, then the pixels


def _image_data_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """How many bytes the inflated image data must have: every row of every pass."""
    if not interlaced:
        return height * _scanline_bytes(width, bits_per_pixel)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pass_width, pass_height = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pass_width and pass_height:
            total += pass_height * _scanline_bytes(pass_width, bits_per_pixel)
    return total


def verify_png(data: bytes | bytearray, max_pixels: int = DEFAULT_MAX_PIXELS) -> PngHeader:
    """Check the whole PNG, so that no truncated or corrupt image is ever stored.

    Every chunk's CRC is checked, and the image data is inflated to its end, with its zlib
    checksum, its exact length and every row's filter type checked: each way a PNG's bytes can
    be broken. It streams, holding at most about 1 MB of pixels, where a full decode would hold
    them all (33 MB for a 4K image). The header's pixel limit is checked first.

    :raises BetterTokenResponseError: naming what is broken.
    """
    header = read_png_header(data, max_pixels)
    bit_depth, color_type, compression, filtering, interlace = data[24:29]
    if bit_depth not in _BIT_DEPTHS.get(color_type, ()) or compression or filtering or interlace > 1:
        raise BetterTokenResponseError(
            f"the PNG header is invalid (bit depth {bit_depth}, colour type {color_type})"
        )
    bits_per_pixel = _CHANNELS[color_type] * bit_depth
    expected = _image_data_size(header.width, header.height, bits_per_pixel, interlace == 1)
    row = _scanline_bytes(header.width, bits_per_pixel)
    view = memoryview(data)
    inflater = zlib.decompressobj()
    inflated = 0

    def take(piece: bytes) -> None:
        nonlocal inflated
        if not interlace:
            filters = piece[(-inflated) % row :: row]
            if filters and max(filters) > 4:
                raise BetterTokenResponseError("the PNG has a row with an unknown filter type")
        inflated += len(piece)
        if inflated > expected:
            raise BetterTokenResponseError("the PNG's image data is longer than its size says")

    position = 8
    seen: list[bytes] = []
    while True:
        if position + 12 > len(data):
            raise BetterTokenResponseError(f"the PNG is truncated after {position} bytes (no IEND)")
        length, chunk_type = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            raise BetterTokenResponseError(f"the PNG is truncated inside its {chunk_type!r} chunk")
        body = view[position + 8 : end]
        if zlib.crc32(body, zlib.crc32(chunk_type)) != struct.unpack_from(">I", data, end)[0]:
            raise BetterTokenResponseError(f"the PNG's {chunk_type.decode('latin-1')} chunk has a bad CRC")
        if chunk_type == b"IDAT":
            if b"IDAT" in seen and seen[-1] != b"IDAT":
                raise BetterTokenResponseError("the PNG's image data is split by other chunks")
            if color_type == 3 and b"PLTE" not in seen:
                raise BetterTokenResponseError(
                    "the PNG has a palette colour type but no palette before its data"
                )
            try:
                for start in range(0, length, _INFLATE_STEP):  # bounded input, so no large copies
                    pending = body[start : start + _INFLATE_STEP]
                    while pending:
                        take(inflater.decompress(pending, _INFLATE_STEP))
                        pending = inflater.unconsumed_tail
            except zlib.error as err:
                raise BetterTokenResponseError(f"the PNG's image data does not inflate: {err}") from err
        seen.append(chunk_type)
        position = end + 4
        if chunk_type == b"IEND":
            break
    take(inflater.flush())
    if not inflater.eof or inflated != expected:
        raise BetterTokenResponseError(
            f"the PNG's image data is incomplete: {inflated} of {expected} bytes inflate"
        )
    return header
