"""Layouts c and e: a CSV naming each image's path and label in columns, and a list file (or a CSV
without header) of ``path label [coarse]`` lines; relative paths resolve against a base folder."""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

from vitrina.data.classes import SampleReader
from vitrina.data.columns import COARSE_COLUMNS, LABEL_COLUMNS, PATH_COLUMNS
from vitrina.data.images import IMAGE_EXTENSIONS, is_image_file
from vitrina.data.samples import Sample
from vitrina.data.textfiles import at_line, open_text, split_fields, text_lines
from vitrina.errors import DataError

LIST_SUFFIXES = (".txt", ".lst", ".list")
# Extensions tried, in this order, for an image named without one (an id such as "123").
GUESSED_EXTENSIONS = [
    variant
    for ext in sorted(IMAGE_EXTENSIONS, key=lambda e: (e not in (".jpg", ".png", ".jpeg"), e))
    for variant in (ext, ext.upper())
]


def find_image(base: Path, name: str) -> str | None:
    """The absolute path of image ``name`` under ``base``, trying image extensions for bare ids."""
    candidate = os.path.join(base, name)
    if os.path.isfile(candidate):
        return os.path.abspath(candidate)
    if not is_image_file(candidate):
        for ext in GUESSED_EXTENSIONS:
            if os.path.isfile(candidate + ext):
                return os.path.abspath(candidate + ext)
    return None


def image_path(base: Path, name: str, where: str) -> str:
    """:func:`find_image`, or a :class:`DataError` at ``where`` naming the missing image."""
    found = find_image(base, name)
    if found is None:
        raise DataError(f"{where}: image not found: {name!r} (looked in {base})")
    return found


def read_list(path: Path, reader: SampleReader, base: Path) -> list[Sample]:
    """Layout e: ``path label [coarse_label]`` lines, comma- or whitespace-separated."""
    samples = []
    for number, line in text_lines(path):
        fields = split_fields(line)
        where = at_line(path, number)
        if len(fields) not in (2, 3):
            raise DataError(
                f"{where}: expected 'path label [coarse_label]', got {len(fields)} fields: {line!r}"
            )
        image = image_path(base, fields[0], where)
        samples.append(
            reader.sample(image, fields[1], where, fields[2] if len(fields) == 3 else None)
        )
    return samples


def read_table(path: Path, columns: list[str], reader: SampleReader, base: Path) -> list[Sample]:
    """Layout c: a CSV with a header naming the image-path, label and optional coarse columns."""

    def column(names: tuple[str, ...]) -> int | None:
        return next((columns.index(n) for n in names if n in columns), None)

    path_index, label_index, coarse_index = (
        column(PATH_COLUMNS),
        column(LABEL_COLUMNS),
        column(COARSE_COLUMNS),
    )
    if path_index is None or label_index is None:
        missing = "image-path" if path_index is None else "label"
        expected = PATH_COLUMNS if path_index is None else LABEL_COLUMNS
        raise DataError(
            f"{path}: no {missing} column; columns found: {', '.join(columns)} "
            f"(expected one of {', '.join(expected)})"
        )
    samples = []
    try:
        with open_text(path) as f:
            rows = csv.reader(f)
            next(rows)
            for row in rows:
                where = at_line(path, rows.line_num)
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise DataError(f"{where}: expected {len(columns)} fields, got {len(row)}")
                name = row[path_index].strip()
                if not name:
                    raise DataError(f"{where}: empty image path")
                coarse = row[coarse_index].strip() if coarse_index is not None else None
                samples.append(
                    reader.sample(
                        image_path(base, name, where), row[label_index].strip(), where, coarse
                    )
                )
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    return samples
