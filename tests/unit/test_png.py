from __future__ import annotations

import pytest

from airflow_bettertoken.exceptions import BetterTokenResponseError
from airflow_bettertoken.protocol.png import read_png_header, verify_png
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import png_claiming, with_bad_crc

PNG = sample_image(120, 80, "png")


def test_header_gives_the_real_size():
    header = read_png_header(PNG)
    assert (header.width, header.height) == (120, 80)


def test_a_header_claiming_a_huge_image_is_refused_before_decoding():
    with pytest.raises(BetterTokenResponseError, match="100000x100000 pixels, more than the limit"):
        read_png_header(png_claiming(100_000, 100_000))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PNG[: len(PNG) // 2], "truncated"),
        (with_bad_crc(PNG), "IDAT chunk has a bad CRC"),
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
