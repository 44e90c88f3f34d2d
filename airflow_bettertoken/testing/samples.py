"""Small generated reference images, so that demos and tests ship no binary files."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def sample_image(width: int = 320, height: int = 240, fmt: str = "png", seed: int = 0) -> bytes:
    """A simple product-shot-like picture: a gradient, a shape and a shadow, varied by ``seed``."""
    hue = (seed * 67) % 255
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = 90 + 120 * y // height
        draw.line((0, y, width, y), fill=(shade, (shade + hue) % 255, 255 - shade // 2))
    cx, cy, r = width // 2, height // 2, min(width, height) // 4
    draw.ellipse((cx - r, cy + r - 8, cx + r, cy + r + 8), fill=(40, 40, 40))
    if seed % 2:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=(hue, 80, 200 - hue // 2))
    else:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, hue, 60))
    out = io.BytesIO()
    image.save(out, format=FORMATS[fmt.lower()])
    return out.getvalue()
