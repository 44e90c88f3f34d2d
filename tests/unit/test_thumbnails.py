"""Gallery thumbnails: small, cached within a byte budget, and never decoded past the pixel limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_bettertoken.plugins._images import ImageTooLarge, NotAnImage, ThumbnailCache, make_thumbnail
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import chunk, png_claiming


def size_of(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return image.size


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_a_thumbnail_is_at_most_512_pixels_a_side(fmt):
    assert size_of(make_thumbnail(sample_image(1536, 1024, fmt))) == (512, 341)


def test_the_cache_keeps_within_its_byte_budget_dropping_the_least_recently_used():
    images = [sample_image(600, 400, seed=seed) for seed in range(4)]
    one = len(make_thumbnail(images[0]))
    cache = ThumbnailCache(max_bytes=int(one * 2.5))
    reads = []

    def read(index):
        reads.append(index)
        return images[index]

    for index in range(3):
        cache.thumbnail(("conn", "bucket", f"key-{index}", "etag"), lambda index=index: read(index))
    assert len(cache._entries) == 2 and cache._size <= cache.max_bytes
    again = cache.thumbnail(("conn", "bucket", "key-2", "etag"), lambda: read(2))
    assert again is cache.thumbnail(("conn", "bucket", "key-2", "etag"), lambda: read(2))
    assert reads == [0, 1, 2]  # a hit reads nothing: the image's GET happens only on a miss


@pytest.mark.parametrize(("side", "message"), [(5000, "5000x5000 pixels"), (20000, "400000000 pixels")])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(side, message):
    bomb = png_claiming(side, side) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match=message):
        make_thumbnail(bomb, max_pixels=4096 * 4096)


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, format="GIF")  # Pillow reads it, but it is not served
    return out.getvalue()


@pytest.mark.parametrize(
    "data",
    [b"these are my notes, not a picture", gif(), b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
    ids=["text", "gif", "svg"],
)
def test_what_is_not_png_jpeg_or_webp_is_not_an_image(data):
    with pytest.raises(NotAnImage):
        make_thumbnail(data)
