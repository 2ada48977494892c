"""Strict JPEG decoding: libjpeg's corrupt-data warnings are errors, not noise.

Pillow decodes JPEGs with libjpeg(-turbo) but drops its warnings, so a photo whose compressed scan
data was overwritten decodes to noise without a word. :func:`decode_strict` decodes with the
libjpeg-turbo that simplejpeg bundles, with every warning raised, to the very pixels Pillow gives
(same library, same accurate integer IDCT and fancy upsampling, same 1/2, 1/4 or 1/8 draft scale
and the Y channel for grayscale drafts).

It covers 8-bit RGB (YCbCr) and grayscale JPEGs, baseline or progressive; anything else, and any
file libjpeg refuses for another reason than damaged data (an unknown JFIF revision, odd SOS
parameters, ...), is left to Pillow as before. libjpeg notices damage only where its entropy decoder
trips over it (a bad Huffman code, data running out, bytes left over at the end of a scan): junk
that happens to decode as valid codes and re-synchronise goes unnoticed.
"""
from __future__ import annotations

import simplejpeg
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

TRUNCATED = "truncated or incomplete image data"
_PREMATURE_END = "Premature end of JPEG file"  # libjpeg's warning when the data runs out
_CORRUPT = "Corrupt JPEG data: "  # libjpeg's prefix for damaged entropy-coded data
_NOT_DAMAGED_PIXELS = ("bad ICC marker",)  # "Corrupt JPEG data" warnings about metadata only
_EXTRANEOUS = "extraneous bytes before marker"


class CorruptJpeg(Exception):
    """libjpeg warned that the data is damaged; ``reason`` says how, for an ImageError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def draft_scale(size: tuple[int, int], draft_size: tuple[int, int] | None) -> int:
    """The DCT scale-down (1, 2, 4 or 8) Pillow's ``JpegImageFile.draft`` picks for ``draft_size``."""
    if draft_size is None:
        return 1
    fits = min(size[0] // draft_size[0], size[1] // draft_size[1])
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def decode_strict(
    data: bytes | bytearray | memoryview,
    header: JpegImageFile,
    mode: str,
    draft_size: tuple[int, int] | None,
) -> Image.Image | None:
    """Decode ``data`` (a JPEG whose Pillow header is ``header``) as ``header.draft(mode, draft_size)``
    then ``header.load()`` would, without EXIF orientation.

    Returns None where Pillow must decode instead (a kind of JPEG simplejpeg does not decode the
    same way, or a refusal that is not about damaged data). Raises :class:`CorruptJpeg`.
    """
    if header.mode not in ("RGB", "L") or getattr(header, "bits", 8) != 8 or len(header.tile) != 1:
        return None  # CMYK / YCCK (Adobe inversion), 12-bit: Pillow's business
    scale = draft_scale(header.size, draft_size)
    width, height = (-(-side // scale) for side in header.size)  # ceil, as Pillow's draft size
    # Pillow drafts a colour JPEG wanted in "L" as libjpeg's grayscale output (the Y channel).
    gray = header.mode == "L" or (mode == "L" and draft_size is not None)
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if gray else "RGB",
            min_width=width if scale > 1 else 0,
            min_height=height if scale > 1 else 0,
            strict=True,
        )
    except ValueError as exc:
        _raise_if_damaged(str(exc), data)
        return None
    if pixels.shape[:2] != (height, width):
        return None  # simplejpeg picked another scale (tiny images): the data is sound, let Pillow scale
    return Image.fromarray(pixels[:, :, 0] if gray else pixels)


def _raise_if_damaged(message: str, data: bytes | bytearray | memoryview) -> None:
    """Raise :class:`CorruptJpeg` if libjpeg's ``message`` says the image data is damaged."""
    if message.startswith(_PREMATURE_END):
        raise CorruptJpeg(TRUNCATED)
    if not message.startswith(_CORRUPT) or message.endswith(_NOT_DAMAGED_PIXELS):
        return
    if _EXTRANEOUS in message and _junk_in_header(data):
        return  # padding some cameras and editors leave between header segments: the pixels are fine
    raise CorruptJpeg("corrupt JPEG data: " + message[len(_CORRUPT):])


def _junk_in_header(data: bytes | bytearray | memoryview) -> bool:
    """Whether bytes that belong to no marker segment sit between SOI and the first SOS."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return True
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker, allowed
            at += 1
        elif marker == 0xDA:  # SOS: the header ends here
            return False
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False
