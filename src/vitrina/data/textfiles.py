"""Line-based input files (list files, classes files, coarse maps, exclusion lists): opening them
(gzip too), their numbered lines, their fields, and ``file:line`` locations for error messages."""
from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vitrina.errors import DataError


def is_int(text: str) -> bool:
    """Whether ``text`` reads as an integer (a class id)."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def at_line(path: Path | str, line: int) -> str:
    """``path:line``, where an error message points."""
    return f"{path}:{line}"


def open_text(path: Path) -> IO[str]:
    """``path`` opened as UTF-8 text (a byte-order mark skipped; ``.gz`` decompressed)."""
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every line that is neither blank nor a # comment."""
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    yield number, line
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable text file: {exc}") from None


def split_fields(line: str) -> list[str]:
    """Split a list-file line on commas if it has any, else on whitespace."""
    if "," in line:
        return [field.strip() for field in line.split(",")]
    return line.split()
