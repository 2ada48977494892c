"""What ``vitrina predict`` reads: files, folders, globs, ``http(s)`` URLs, list files, and CSV or
Parquet tables with a column of paths or URLs, expanded to one ordered list of names, each once."""
from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from vitrina.data.columns import PATH_COLUMNS
from vitrina.data.fetch import is_url
from vitrina.data.images import is_image_file
from vitrina.data.path_lists import LIST_SUFFIXES
from vitrina.errors import ConfigError, DataError

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
URL_COLUMNS = ("url", "image_url", "photo_url", "img_url", "link")
GLOB_CHARACTERS = frozenset("*?[")


def expand_inputs(inputs: Sequence[str | os.PathLike], column: str | None = None) -> list[str]:
    """Every photo the inputs name, in order, each once: file paths and ``http(s)`` URLs.

    A folder gives its image files (recursively, sorted); a ``.csv`` or ``.parquet`` table gives
    its ``column`` (default: a recognised path or URL column; a CSV without one, its first);
    a ``.txt``/``.lst`` file gives its lines; a glob gives its matches; a URL is kept as it is;
    any other file is taken as an image (an unreadable one becomes an error row later). Relative
    paths in a table or list resolve against its folder.
    """
    paths: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        suffix = path.suffix.lower()
        if is_url(text):
            paths.append(text)
        elif path.is_dir():
            paths.extend(_paths_in_folder(path))
        elif path.is_file() and suffix in TABLE_SUFFIXES:
            paths.extend(_resolved(path, _parquet_column(path, column) if suffix != ".csv" else _csv_column(path, column)))
        elif path.is_file() and suffix in LIST_SUFFIXES:
            paths.extend(_resolved(path, _list_lines(path)))
        elif path.is_file():
            paths.append(text)
        elif GLOB_CHARACTERS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"{text}: no files match this pattern")
            for match in matches:
                paths.extend(_paths_in_folder(Path(match)) if os.path.isdir(match) else [match])
        else:
            raise DataError(f"{text}: no such file or folder")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DataError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return unique


def _paths_in_folder(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if is_image_file(name) and not name.startswith("."))
    return found


def _resolved(table: Path, names: list[str]) -> list[str]:
    base = table.parent
    return [name if is_url(name) or os.path.isabs(name) else str(base / name) for name in names]


def _list_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as fh:
        return [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]


def _looks_like_photo(cell: str) -> bool:
    return is_url(cell) or is_image_file(cell)


def _csv_column(path: Path, column: str | None) -> list[str]:
    """A CSV's photo column. The first row is a header when ``column`` is given, when it names a
    path or URL column, or when its first cell is not a photo's name; without one, the first column."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0]]
    index = _column_index(path, header, column)
    if index is not None or column is not None or not _looks_like_photo(rows[0][0].strip() if rows[0] else ""):
        rows = rows[1:]
    index = index or 0
    return [row[index].strip() for row in rows if len(row) > index and row[index].strip()]


def _column_index(path: Path, header: list[str], column: str | None) -> int | None:
    """The index of ``column`` (an error when absent), else of a recognised path or URL column, else None."""
    if column is not None:
        if column not in header:
            raise DataError(f"{path}: no column {column!r} (its columns: {', '.join(header) or 'none'})")
        return header.index(column)
    lowered = [name.lower() for name in header]
    return next((lowered.index(name) for name in (*PATH_COLUMNS, *URL_COLUMNS) if name in lowered), None)


def _parquet_column(path: Path, column: str | None) -> list[str]:
    try:
        import pyarrow.parquet as pq  # lazy: Parquet support is optional (pip install 'vitrina[parquet]')
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'vitrina[parquet]'") from None
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    index = _column_index(path, names, column)
    if index is None:
        raise DataError(f"{path}: no path or URL column among {', '.join(names)}; name one with --column")
    values = pq.read_table(path, columns=[names[index]]).column(0).to_pylist()
    return [str(value).strip() for value in values if value is not None and str(value).strip()]
