"""The gallery's images: S3 reads through the provider's store, and thumbnails cached by ETag.

Every read goes through :class:`~airflow_bettertoken.storage.s3_io.S3IO`, as the operators' do: a 403
reads as ``HIDDEN`` (the gallery's connection may not read it), never as missing, and throttling or a
5xx (after botocore's retries) raises the store's explained error instead of hiding the image.

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
from collections.abc import Callable
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from PIL import Image, UnidentifiedImageError

from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES, sniff_image_type
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_extra_args import ReadArgs
from airflow_bettertoken.storage.s3_io import S3IO, ObjectRead, Presence

THUMBNAIL_SIDE = 512
THUMBNAIL_CACHE_BYTES = 64 * 1024 * 1024
# A store is rebuilt after this long, so that a connection changed by an admin is picked up.
CLIENT_TTL_S = 300.0


class ImageTooLarge(Exception):
    """An image over the byte or pixel limit: it is not downloaded, or not decoded."""


class NotAnImage(Exception):
    """An object that is not a PNG, JPEG or WEBP (a failed edit's source may be a text file named .png)."""


class ImageGone(Exception):
    """The object is not the one its HEAD saw any more: replaced (412 to the ``IfMatch`` GET) or gone."""


def unavailable(presence: Presence) -> str:
    """Why an object that a HEAD did not find cannot be shown, for the page."""
    if presence is Presence.HIDDEN:
        return (
            "S3 answered 403: the gallery's AWS connection may not read this image (it needs "
            "s3:GetObject on it, and s3:ListBucket to tell a missing one)"
        )
    return "the image is no longer in S3"


class S3Objects:
    """HEAD and GET through one :class:`S3IO` per AWS connection and read arguments, kept for
    ``client_ttl`` seconds. The read arguments (``RequestPayer``, ``ExpectedBucketOwner``) are those of
    the task whose objects are read, from its trusted records (``_trust.choose_connection``).

    ``S3Hook`` looks the connection up and builds a session each time; boto3 clients are thread-safe.
    """

    def __init__(self, client_ttl: float = CLIENT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.client_ttl = client_ttl
        self._clock = clock
        self._stores: dict[tuple[str | None, ReadArgs], tuple[float, S3IO]] = {}
        self._lock = threading.Lock()

    def store(self, conn_id: str | None, read_args: ReadArgs = ()) -> S3IO:
        """The store of ``conn_id`` that sends ``read_args``, made again once ``client_ttl`` seconds old."""
        now, key = self._clock(), (conn_id, read_args)
        with self._lock:
            built = self._stores.get(key)
            if built is not None and now - built[0] < self.client_ttl:
                return built[1]
        store = S3IO(S3Hook(aws_conn_id=conn_id), dict(read_args))
        with self._lock:
            self._stores[key] = (now, store)
        return store

    def head(self, conn_id: str | None, location: S3Location, read_args: ReadArgs = ()) -> ObjectRead:
        """The object's size, ETag and user metadata (``FOUND``), or ``MISSING`` or ``HIDDEN`` (a 403).

        :raises BetterTokenStorageError: throttling, a 5xx or any other failure: never "missing".
        """
        return self.store(conn_id, read_args).head(location)

    def get(
        self, conn_id: str | None, location: S3Location, head: ObjectRead, read_args: ReadArgs = ()
    ) -> bytes:
        """The bytes of the object that ``head`` describes, if it is within the byte limit.

        :raises ImageTooLarge: before any GET, from the HEAD's size.
        :raises ImageGone: when the object is gone, hidden or changed since the HEAD.
        :raises BetterTokenStorageError: when S3 failed otherwise.
        """
        size = head.content_length or 0
        if size > MAX_IMAGE_BYTES:
            raise ImageTooLarge(f"{location.uri} is {size} bytes, over the limit of {MAX_IMAGE_BYTES}")
        read = self.store(conn_id, read_args).get(location, if_match=head.etag, max_bytes=MAX_IMAGE_BYTES)
        if not read.found or read.body is None:
            raise ImageGone(f"{location.uri} is {read.presence.value} since its HEAD")
        return read.body


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

    def full(
        self, conn_id: str | None, location: S3Location, head: ObjectRead, read_args: ReadArgs = ()
    ) -> tuple[bytes, str]:
        """The image's bytes and its content type."""
        data = self.objects.get(conn_id, location, head, read_args)
        if len(data) > MAX_IMAGE_BYTES:  # more than the HEAD said: refused all the same
            raise ImageTooLarge(f"{location.uri} is over the limit of {MAX_IMAGE_BYTES} bytes")
        return data, image_type(data)

    def thumbnail(
        self, conn_id: str | None, location: S3Location, head: ObjectRead, read_args: ReadArgs = ()
    ) -> bytes:
        key = (conn_id, location.bucket, location.key, head.etag)
        return self.thumbnails.thumbnail(key, lambda: self.full(conn_id, location, head, read_args)[0])
