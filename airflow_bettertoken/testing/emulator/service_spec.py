"""The emulator's own table of what ``POST /v1/images/edits`` accepts, written from the service's page.

Transcribed from BetterToken's documentation ("POST /v1/images/edits", docs.bettertoken.ai), not
imported from the client's ``protocol`` module: an emulator that takes the client's constants can
never disagree with the client, so it could never catch a client that sends what the service refuses.
``tests/unit/test_emulator_spec.py`` holds the client to this table.
"""

from __future__ import annotations

__all__ = [
    "FIELDS",
    "FILE_FIELDS",
    "IMAGE_TYPES",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_PROMPT_CHARS",
    "MODEL",
    "SIZES",
    "sniff_image_type",
]

# "固定使用 gpt-image-2": the model is always gpt-image-2.
MODEL = "gpt-image-2"

# The page's size table: auto, the three 1K tiers, 2K square and landscape, 4K landscape and portrait.
SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536", "2048x2048", "2048x1152", "3840x2160", "2160x3840")

# "Use image for a single reference image. Use repeated image[] fields for multiple reference images."
FILE_FIELDS = ("image", "image[]")

#: Every text field the page lists, with the values it allows (None: any non-empty text) and the
#: value a request that leaves it out gets.
FIELDS: dict[str, tuple[tuple[str, ...] | None, str | None]] = {
    "model": ((MODEL,), None),
    "prompt": (None, None),
    # "推荐固定为 1。多张图片建议发起多次独立请求": fix n at 1; for several images, send several requests.
    "n": (("1",), "1"),
    "size": (SIZES, "auto"),
    # "推荐固定为 b64_json": the image comes back in data[0].b64_json.
    "response_format": (("b64_json",), "b64_json"),
    # "推荐固定为 png。不要依赖 jpeg 或 webp 直接返回对应格式": png; do not rely on jpeg or webp.
    "output_format": (("png",), "png"),
}

# Not on BetterToken's page: OpenAI's documented limits for gpt-image edits, which the OpenAI-compatible
# service is taken to keep (16 references of at most 50 MB each, PNG, JPEG or WEBP; 32,000 characters).
MAX_IMAGES = 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_PROMPT_CHARS = 32_000
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


def sniff_image_type(data: bytes) -> str | None:
    """The content type a server reads from the magic bytes: PNG, JPEG or WEBP, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
