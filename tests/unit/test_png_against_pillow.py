"""The streaming PNG check accepts what Pillow decodes, and refuses at least what Pillow refuses."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from airflow_bettertoken.exceptions import BetterTokenResponseError
from airflow_bettertoken.protocol.png import verify_png
from tests.broken_pngs import adam7_rows, build_png, chunk, rgb_rows, with_bad_crc


def pillow_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
    except Exception:
        return False
    return True


def saved(mode: str, size=(37, 23), **options) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


VALID = {
    "rgb": saved("RGB"),
    "rgba": saved("RGBA"),
    "grey": saved("L"),
    "grey-alpha": saved("LA"),
    "bilevel": saved("1"),
    "palette": saved("P"),
    "16-bit-grey": saved("I;16"),
    "small-idat-chunks": saved("RGB", (300, 200), compress_level=0),
    "one-row": saved("RGB", (500, 1)),
    "interlaced": build_png(13, 11, adam7_rows(13, 11), color_type=0, interlace=1),
    "split-idat": build_png(20, 10, rgb_rows(20, 10), idat_parts=4),
}


@pytest.mark.parametrize("name", VALID)
def test_whatever_pillow_decodes_passes(name):
    assert pillow_decodes(VALID[name])
    header = verify_png(VALID[name])
    assert header.width > 0


GOOD = build_png(20, 10, rgb_rows(20, 10))
DATA = zlib.compress(rgb_rows(20, 10))
SPLIT_BY_TEXT = (
    GOOD[:33]
    + chunk(b"IDAT", DATA[:30])
    + chunk(b"tEXt", b"k\x00v")
    + chunk(b"IDAT", DATA[30:])
    + chunk(b"IEND", b"")
)
BROKEN = {
    "truncated-mid-data": GOOD[: len(GOOD) // 2],
    "no-iend": build_png(20, 10, rgb_rows(20, 10), iend=False),
    "bad-idat-crc": with_bad_crc(GOOD),
    "missing-rows": build_png(20, 10, rgb_rows(20, 9)),
    "extra-rows": build_png(20, 10, rgb_rows(20, 11)),
    "unknown-filter-type": build_png(20, 10, rgb_rows(20, 10, filter_type=7)),
    "palette-without-plte": build_png(20, 10, bytes(10 * 21), color_type=3),
    "bad-bit-depth": build_png(20, 10, rgb_rows(20, 10), bit_depth=3),
    "corrupt-deflate": GOOD.replace(DATA[2:12], bytes(10)),
    "idat-split-by-another-chunk": SPLIT_BY_TEXT,
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_images_are_refused(name):
    # Pillow lets a few of these through (a missing IEND, say); this check is never more lenient.
    with pytest.raises(BetterTokenResponseError):
        verify_png(BROKEN[name])


def test_the_broken_images_start_from_a_sound_one():
    assert pillow_decodes(GOOD)
    assert GOOD != SPLIT_BY_TEXT
