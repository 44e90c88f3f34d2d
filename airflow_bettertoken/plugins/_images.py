"""The gallery's images: S3 reads with one client per connection, and thumbnails cached by ETag.

Every read starts with a HEAD: an object over 50 MB (the API's own limit) is never downloaded, and a
thumbnail already made from this very object (same bucket, key and ETag) is served without a GET. The
GET then asks for that ETag (``IfMatch``), so the bytes are those the cache key names. Only PNG, JPEG
and WEBP are served, as their magic bytes say (never S3's content type), and Pillow decodes nothing
over ``max_pixels`` pixels, checked in the header first.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.exceptions import ClientError
from PIL import Image, UnidentifiedImageError

from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES, sniff_image_type
from airflow_bettertoken.storage.locations import S3Location

THUMBNAIL_SIDE = 512
THUMBNAIL_CACHE_BYTES = 64 * 1024 * 1024
# A client is rebuilt after this long, so that a connection changed by an admin is picked up.
CLIENT_TTL_S = 300.0


class ImageTooLarge(Exception):
    """An image over the byte or pixel limit: it is not downloaded, or not decoded."""


class NotAnImage(Exception):
    """An object that is not a PNG, JPEG or WEBP (a failed edit's source may be a text file named .png)."""


@dataclass(frozen=True)
class ObjectHead:
    """What a HEAD says about an object: enough to refuse it, or to find its thumbnail, before a GET."""

    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)


class S3Objects:
    """HEAD and GET through one boto3 client per AWS connection, kept for ``client_ttl`` seconds.

    ``S3Hook`` looks the connection up and builds a session each time; boto3 clients are thread-safe.
    """

    def __init__(self, client_ttl: float = CLIENT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.client_ttl = client_ttl
        self._clock = clock
        self._clients: dict[str | None, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def client(self, conn_id: str | None) -> Any:
        now = self._clock()
        with self._lock:
            built = self._clients.get(conn_id)
            if built is not None and now - built[0] < self.client_ttl:
                return built[1]
        client = S3Hook(aws_conn_id=conn_id).get_conn()
        with self._lock:
            self._clients[conn_id] = (now, client)
        return client

    def head(self, conn_id: str | None, location: S3Location) -> ObjectHead | None:
        """The object's size, ETag and user metadata; None when it is missing or may not be read."""
        try:
            answer = self.client(conn_id).head_object(Bucket=location.bucket, Key=location.key)
        except ClientError:
            return None
        return ObjectHead(answer["ContentLength"], answer["ETag"], answer.get("Metadata") or {})

    def get(self, conn_id: str | None, location: S3Location, head: ObjectHead) -> bytes:
        """The bytes of the object that ``head`` describes, if it is within the byte limit.

        :raises ImageTooLarge: before any GET, from the HEAD's size.
        :raises botocore.exceptions.ClientError: when the object is gone or changed since the HEAD.
        """
        if head.size > MAX_IMAGE_BYTES:
            raise ImageTooLarge(f"{location.uri} is {head.size} bytes, over the limit of {MAX_IMAGE_BYTES}")
        answer = self.client(conn_id).get_object(Bucket=location.bucket, Key=location.key, IfMatch=head.etag)
        with answer["Body"] as body:
            return body.read(MAX_IMAGE_BYTES + 1)


def image_type(data: bytes) -> str:
    """The content type of a PNG, JPEG or WEBP, from its magic bytes.

    :raises NotAnImage: for anything else, GIF and SVG included.
    """
    content_type = sniff_image_type(data)
    if content_type is None:
        raise NotAnImage("the object is not a PNG, JPEG or WEBP image")
    return content_type


def make_thumbnail(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG at most 512 pixels a side, from a PNG, JPEG or WEBP of at most ``max_pixels`` pixels."""
    image_type(data)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as err:  # Pillow's own, looser guard
        raise ImageTooLarge(str(err)) from err
    except (UnidentifiedImageError, OSError) as err:
        raise NotAnImage("the object is not an image Pillow can read") from err
    with image:
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(f"{image.width}x{image.height} pixels, over the limit of {max_pixels}")
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a reduced scale
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails by the object they were made from, bounded in bytes (least recently used first out)."""

    def __init__(self, max_bytes: int = THUMBNAIL_CACHE_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._entries: OrderedDict[Any, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def thumbnail(self, key: Any, read: Callable[[], bytes]) -> bytes:
        """The cached thumbnail for ``key``; only on a miss is the image ``read`` (the GET) and decoded.

        :param key: names the image's bytes, such as (connection, bucket, key, ETag).
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        thumb = make_thumbnail(read(), self.max_pixels)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = thumb
                self._size += len(thumb)
            while self._size > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return thumb


class GalleryImages:
    """Full images and thumbnails of S3 objects, each read after its HEAD."""

    def __init__(self, objects: S3Objects | None = None, thumbnails: ThumbnailCache | None = None) -> None:
        self.objects = objects or S3Objects()
        self.thumbnails = thumbnails or ThumbnailCache()

    def full(self, conn_id: str | None, location: S3Location, head: ObjectHead) -> tuple[bytes, str]:
        """The image's bytes and its content type."""
        data = self.objects.get(conn_id, location, head)
        if len(data) > MAX_IMAGE_BYTES:  # more than the HEAD said: refused all the same
            raise ImageTooLarge(f"{location.uri} is over the limit of {MAX_IMAGE_BYTES} bytes")
        return data, image_type(data)

    def thumbnail(self, conn_id: str | None, location: S3Location, head: ObjectHead) -> bytes:
        key = (conn_id, location.bucket, location.key, head.etag)
        return self.thumbnails.thumbnail(key, lambda: self.full(conn_id, location, head)[0])
