"""Writes the bad-input zoo: the kinds of image files real uploads contain.

``write_zoo(folder)`` creates every case in ``folder`` and returns name -> :class:`ZooImage`
(path plus the outcome the dataset layer must produce). Everything is small and fast to make;
the 20000x20000 image is a valid 1-bit PNG of about 50 KB written straight from zlib.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HUGE_SIDE = 20_000
CMYK_RED = (0, 255, 255, 0)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ZooImage:
    """One generated file and what decoding it must give.

    ``reason`` is a substring of the :class:`~vitrina.errors.ImageError` reason for files that
    must be refused (with the default pixel limit); ``stored_mode`` is the PIL mode of the file
    as stored; ``size`` is the decoded (width, height) after EXIF orientation.
    """

    path: Path
    readable: bool
    reason: str | None = None
    stored_mode: str | None = None
    size: tuple[int, int] | None = None


def photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, a few shapes and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [x / width * 255, y / height * 255, (1 - x / width) * 128 + rng.uniform(0, 127)], axis=-1
    )
    for _ in range(3):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 40)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        base[inside] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 6, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def huge_png_bytes(side: int = HUGE_SIDE) -> bytes:
    """A valid all-black 1-bit PNG of ``side`` x ``side`` pixels, compressed row by row."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def gray16_array() -> np.ndarray:
    """20x30 uint16: left half 65535, right half 32768."""
    values = np.full((20, 30), 65535, dtype=np.uint16)
    values[:, 15:] = 32768
    return values


def palette_with_transparency() -> Image.Image:
    """40x30 palette image: left half transparent (index 0), right half opaque red (index 1)."""
    img = Image.new("P", (40, 30), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (20, 0, 40, 30))
    img.info["transparency"] = 0
    return img


def rgba_half_transparent() -> Image.Image:
    """40x30 RGBA: left half fully transparent black, right half opaque blue."""
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (20, 0, 40, 30))
    return img


def la_half_transparent() -> Image.Image:
    """40x30 LA: left half fully transparent black, right half opaque gray 100."""
    img = Image.new("LA", (40, 30), (0, 0))
    img.paste((100, 255), (20, 0, 40, 30))
    return img


def write_zoo(folder: str | Path) -> dict[str, ZooImage]:
    """Write every bad-input case plus three normal photos into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, ZooImage] = {}

    def add(name: str, data: bytes, **expected) -> None:
        path = folder / name
        path.write_bytes(data)
        cases[path.stem] = ZooImage(path=path, **expected)

    def png(img: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", **options)
        return buffer.getvalue()

    whole = jpeg_bytes(photo(200, 150, seed=10))
    add("truncated.jpg", whole[: len(whole) // 2], readable=False, reason="truncated")
    add("empty.jpg", b"", readable=False, reason="empty")
    add("text.jpg", b"name,price\nshoe,19.99\n" * 20, readable=False, reason="not an image")
    add(
        "cmyk.jpg",
        jpeg_bytes(Image.new("CMYK", (64, 48), CMYK_RED)),
        readable=True, stored_mode="CMYK", size=(64, 48),
    )
    add(
        "gray16.png",
        png(Image.fromarray(gray16_array())),
        readable=True, stored_mode="I;16", size=(30, 20),
    )
    palette = palette_with_transparency()
    add(
        "palette.png",
        png(palette),
        readable=True, stored_mode="P", size=palette.size,
    )
    add("rgba.png", png(rgba_half_transparent()), readable=True, stored_mode="RGBA", size=(40, 30))
    add("la.png", png(la_half_transparent()), readable=True, stored_mode="LA", size=(40, 30))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    add(
        "exif_rotated.jpg",
        jpeg_bytes(photo(96, 48, seed=11), exif=exif),
        readable=True, stored_mode="RGB", size=(48, 96),
    )
    add(
        "huge.png",
        huge_png_bytes(),
        readable=False, reason="too many pixels", stored_mode="1", size=(HUGE_SIDE, HUGE_SIDE),
    )
    add(
        "gray.jpg",
        jpeg_bytes(photo(80, 60, seed=12).convert("L")),
        readable=True, stored_mode="L", size=(80, 60),
    )
    for i, (width, height) in enumerate([(160, 120), (120, 160), (200, 200)]):
        add(
            f"photo{i}.jpg",
            jpeg_bytes(photo(width, height, seed=i)),
            readable=True, stored_mode="RGB", size=(width, height),
        )
    return cases
