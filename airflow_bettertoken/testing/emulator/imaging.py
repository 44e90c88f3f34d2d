"""The emulator's stand-in for generation: the first reference, fitted to the size and visibly changed."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageOps


def parse_size(size: str) -> tuple[int, int]:
    """``"1536x1024"`` as ``(1536, 1024)``."""
    width, height = size.split("x")
    return int(width), int(height)


def auto_size(width: int, height: int) -> str:
    """The tier ``auto`` picks for a reference of this aspect ratio."""
    ratio = width / height
    if ratio > 1.2:
        return "1536x1024"
    if ratio < 1 / 1.2:
        return "1024x1536"
    return "1024x1024"


def render_edit(reference: bytes, size: str, size_map: dict[str, str]) -> bytes:
    """A PNG made from ``reference`` at ``size`` (or what ``size_map`` maps it to)."""
    with Image.open(io.BytesIO(reference)) as source:
        image = source.convert("RGB")
    tier = size if size != "auto" else auto_size(*image.size)
    width, height = parse_size(size_map.get(tier, tier))
    image = ImageOps.fit(image, (width, height))
    image = ImageOps.posterize(ImageOps.invert(image), 3)
    border = max(4, width // 40)
    ImageDraw.Draw(image).rectangle((0, 0, width - 1, height - 1), outline=(255, 140, 0), width=border)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
