"""Uploaded files: recognising their format by their leading bytes and decoding them for the model."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from vitrina.data.images import decode
from vitrina.errors import ImageError
from vitrina.inference.predictor import Predictor
from vitrina.preprocess import Preprocess
from vitrina.serving.errors import InvalidImage, UnsupportedMediaType

# Leading bytes of the formats the server decodes (with their media type), and of image formats it refuses (415).
ACCEPTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
)
REFUSED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"8BPS", "Photoshop"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
)
ACCEPTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Declared types that are images PIL cannot (or should not) decode here.
REFUSED_IMAGE_TYPES = frozenset({"image/svg+xml", "image/heic", "image/heif", "image/avif", "image/jp2", "image/vnd.adobe.photoshop"})


@dataclass
class Upload:
    """One uploaded file as received."""

    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Photo:
    """An accepted upload: its hash, its format's media type and its pixels at the model's input size."""

    sha256: str
    media_type: str
    pixels: np.ndarray


def _signature(data: bytes, table: tuple[tuple[int, bytes, str], ...]) -> str | None:
    return next((name for offset, magic, name in table if data[offset : offset + len(magic)] == magic), None)


def check_media_type(upload: Upload) -> None:
    """415 unless the declared type and the leading bytes are those of an accepted image format."""
    declared = (upload.content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream" and (not declared.startswith("image/") or declared in REFUSED_IMAGE_TYPES):
        raise UnsupportedMediaType(f"{upload.filename}: {declared} is not a supported photo type; send a {ACCEPTED_FORMATS} image")
    refused = _signature(upload.data[:16], REFUSED_SIGNATURES)
    if refused is not None:
        raise UnsupportedMediaType(f"{upload.filename}: {refused} files are not supported; send a {ACCEPTED_FORMATS} image")


def _too_many_pixels(upload: Upload, width: int, height: int, max_pixels: int) -> InvalidImage:
    return InvalidImage(
        f"{upload.filename}: too many pixels: {width}x{height} = {width * height:,}; this server accepts at most {max_pixels:,}"
    )


def decode_cost(upload: Upload, preprocess: Preprocess, max_pixels: int) -> int:
    """The pixels decoding ``upload`` will produce, from its header alone (a JPEG at its draft size); 422 over ``max_pixels``.

    0 when the header cannot be read: decoding then stops at once, and says why.
    """
    if _signature(upload.data[:16], ACCEPTED_SIGNATURES) is None:
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(upload.data)) as image:  # reads the header only
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_many_pixels(upload, width, height, max_pixels)
                if isinstance(image, JpegImageFile):  # decoded at 1/2, 1/4 or 1/8 of the size, as read_photo will
                    image.draft("RGB" if preprocess.mode == "RGB" else "L", preprocess.draft_size())
                    width, height = image.size
                return max(0, width * height)
    except InvalidImage:
        raise
    except Exception:  # noqa: BLE001 - an unreadable header: read_photo gives the reason
        return 0


def read_photo(upload: Upload, predictor: Predictor, max_pixels: int) -> Photo:
    """Decode an upload to the model's input size; 422 for corrupt, non-image or oversized data."""
    media_type = _signature(upload.data[:16], ACCEPTED_SIGNATURES)
    if media_type is None:
        reason = "empty file (0 bytes)" if not upload.data else f"not an image (send a {ACCEPTED_FORMATS} photo)"
        raise InvalidImage(f"{upload.filename}: {reason}")
    preprocess = predictor.preprocess
    try:
        image = decode(upload.data, preprocess.mode, max_pixels, draft_size=preprocess.draft_size(), name=upload.filename)
    except ImageError as exc:
        reason = exc.reason
        if reason.startswith("too many pixels"):
            reason = reason.split(" (limit", 1)[0] + f"; this server accepts at most {max_pixels:,}"
        raise InvalidImage(f"{upload.filename}: {reason}") from None
    return Photo(hashlib.sha256(upload.data).hexdigest(), media_type, predictor.prepare(image))
