"""Layout d: a CSV (``.csv`` or ``.csv.gz``) of ``label,pixel1..pixelN`` rows, N a perfect square,
read into in-memory grayscale images."""
from __future__ import annotations

import gzip
import math
import os
import re
from pathlib import Path

import numpy as np

from vitrina.data.classes import SampleReader
from vitrina.data.columns import LABEL_COLUMNS
from vitrina.data.samples import Sample
from vitrina.data.textfiles import at_line
from vitrina.errors import DataError

PIXEL_COLUMN = re.compile(r"pixel\d+")
_PIXEL_CHUNK_BYTES = 4_000_000


def is_pixel_header(columns: list[str]) -> bool:
    """Whether lower-cased CSV ``columns`` are a label column and then only ``pixelN`` columns."""
    return (
        len(columns) > 1
        and columns[0] in LABEL_COLUMNS
        and all(PIXEL_COLUMN.fullmatch(c) for c in columns[1:])
    )


def read_pixel_csv(path: Path, pixel_count: int, reader: SampleReader) -> list[Sample]:
    """Layout d: ``label,pixel1..pixelN`` rows become in-memory ``side x side`` uint8 images.

    Rows are parsed a few megabytes at a time with one numpy call per chunk; a chunk that does
    not parse cleanly is re-read row by row to name the bad line.
    """
    side = math.isqrt(pixel_count)
    if side * side != pixel_count:
        raise DataError(
            f"{at_line(path, 1)}: {pixel_count} pixel columns do not make a square image"
        )
    source = os.path.abspath(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    samples: list[Sample] = []
    line_number = 1
    try:
        with opener(path, "rb") as f:
            f.readline()
            while lines := f.readlines(_PIXEL_CHUNK_BYTES):
                labels, rows, line_numbers = [], [], []
                for line in lines:
                    line_number += 1
                    if not line.strip():
                        continue
                    label, _, pixels = line.partition(b",")
                    labels.append(label.strip().decode("utf-8", errors="replace"))
                    rows.append(pixels)
                    line_numbers.append(line_number)
                if not rows:
                    continue
                images = _parse_pixel_rows(rows, pixel_count, path, line_numbers).reshape(
                    -1, side, side
                )
                for label, image, number in zip(labels, images, line_numbers, strict=True):
                    row = len(samples) + 1
                    samples.append(
                        reader.sample(
                            f"{source}#row={row}", label, at_line(path, number), pixels=image
                        )
                    )
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file: {exc}") from None
    return samples


def _parse_pixel_rows(
    rows: list[bytes], pixel_count: int, path: Path, line_numbers: list[int]
) -> np.ndarray:
    """Parse comma-separated pixel rows (each ending in a newline but maybe the last) to uint8."""
    text = b"".join(rows).replace(b"\r", b"").replace(b"\n", b",").decode("ascii", errors="replace")
    try:
        values = np.fromstring(text, dtype=np.int64, sep=",")
    except ValueError:
        values = None
    if values is None or values.size != len(rows) * pixel_count:
        _raise_bad_pixel_row(rows, pixel_count, path, line_numbers)
    values = values.reshape(len(rows), pixel_count)
    bad = np.argwhere((values < 0) | (values > 255))
    if bad.size:
        row, column = bad[0]
        raise DataError(
            f"{at_line(path, line_numbers[row])}: "
            f"pixel{column + 1} = {values[row, column]} is outside 0-255"
        )
    return values.astype(np.uint8)


def _raise_bad_pixel_row(
    rows: list[bytes], pixel_count: int, path: Path, line_numbers: list[int]
) -> None:
    for row, number in zip(rows, line_numbers, strict=True):
        where = at_line(path, number)
        values = row.strip().split(b",")
        if len(values) != pixel_count:
            raise DataError(
                f"{where}: expected {pixel_count} pixel values after the label, got {len(values)}"
            )
        for column, value in enumerate(values, start=1):
            text = value.strip().decode("utf-8", errors="replace")
            if not text.isdigit():
                raise DataError(f"{where}: pixel{column} = {text!r} is not a whole number 0-255")
    raise DataError(f"{path}: pixel rows could not be parsed")
