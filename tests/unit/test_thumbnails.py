"""Gallery thumbnails: small, cached within a byte budget, and never decoded past the pixel limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_bettertoken.plugins._images import ImageTooLarge, NotAnImage, ThumbnailCache
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import chunk, png_claiming


def size_of(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return image.size


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_a_thumbnail_is_at_most_512_pixels_a_side(fmt):
    assert size_of(ThumbnailCache().thumbnail(sample_image(1536, 1024, fmt))) == (512, 341)


def test_the_cache_keeps_within_its_byte_budget_dropping_the_least_recently_used():
    images = [sample_image(600, 400, seed=seed) for seed in range(4)]
    one = len(ThumbnailCache().thumbnail(images[0]))
    cache = ThumbnailCache(max_bytes=int(one * 2.5))
    for image in images[:3]:
        cache.thumbnail(image)
    assert len(cache._entries) == 2 and cache._size <= cache.max_bytes
    assert cache.thumbnail(images[2]) is cache.thumbnail(images[2])  # served from the cache


@pytest.mark.parametrize(("side", "message"), [(5000, "5000x5000 pixels"), (20000, "400000000 pixels")])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(side, message):
    bomb = png_claiming(side, side) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match=message):
        ThumbnailCache(max_pixels=4096 * 4096).thumbnail(bomb)


def test_a_file_that_is_no_image_is_named_so():
    with pytest.raises(NotAnImage):
        ThumbnailCache().thumbnail(b"these are my notes, not a picture")
