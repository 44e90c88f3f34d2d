"""The gallery's images: read from S3 with the task's own connection, thumbnails made and cached.

Nothing larger than the limits below is read or decoded: a source at most 50 MB (the API's own
limit), and at most ``max_pixels`` pixels, checked in the header before Pillow decodes a byte.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from PIL import Image, UnidentifiedImageError

from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES, sniff_image_type
from airflow_bettertoken.storage.locations import S3Location

THUMBNAIL_SIDE = 512
THUMBNAIL_CACHE_BYTES = 64 * 1024 * 1024


class ImageTooLarge(Exception):
    """An image over the byte or pixel limit: it is not decoded."""


class NotAnImage(Exception):
    """An object that is not an image (a failed edit's source may be a text file named .png)."""


def read_image(aws_conn_id: str | None, location: S3Location) -> tuple[bytes, str]:
    """The object's bytes and content type (from its magic bytes, never from S3's metadata)."""
    response = S3Hook(aws_conn_id=aws_conn_id).get_conn().get_object(Bucket=location.bucket, Key=location.key)
    if response["ContentLength"] > MAX_IMAGE_BYTES:
        response["Body"].close()
        raise ImageTooLarge(f"{location.uri} is {response['ContentLength']} bytes")
    data = response["Body"].read()
    return data, sniff_image_type(data) or "application/octet-stream"


class ThumbnailCache:
    """JPEG thumbnails keyed by the sha256 of the image they were made from, bounded in bytes (LRU)."""

    def __init__(self, max_bytes: int = THUMBNAIL_CACHE_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def thumbnail(self, data: bytes) -> bytes:
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        thumb = self._make(data)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = thumb
                self._size += len(thumb)
            while self._size > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return thumb

    def _make(self, data: bytes) -> bytes:
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError as err:  # Pillow's own, looser guard
            raise ImageTooLarge(str(err)) from err
        except (UnidentifiedImageError, OSError) as err:
            raise NotAnImage("the object is not an image Pillow can read") from err
        with image:
            if image.width * image.height > self.max_pixels:
                raise ImageTooLarge(
                    f"{image.width}x{image.height} pixels, over the limit of {self.max_pixels}"
                )
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a reduced scale
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=85)
        return out.getvalue()
