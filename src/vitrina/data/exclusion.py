"""Leaving files out of a dataset: an exclusion list (one path a line, or a CSV with a path column,
such as the exclude.csv `vitrina clean` writes), matched on trailing path components."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePath

from vitrina.data.columns import PATH_COLUMNS
from vitrina.data.samples import Sample
from vitrina.data.textfiles import text_lines
from vitrina.errors import DataError


def read_exclude(path: Path) -> set[tuple[str, ...]]:
    """Paths to leave out, as path-component tuples: one a line, or a CSV with a path column."""
    if not path.is_file():
        raise DataError(f"exclude file not found: {path}")
    lines = list(text_lines(path))
    if not lines:
        return set()
    header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))]
    if any(c in PATH_COLUMNS for c in header):
        path_index = next(header.index(n) for n in PATH_COLUMNS if n in header)
        rows = csv.reader(io.StringIO("\n".join(line for _, line in lines[1:])))
        names = [row[path_index] for row in rows if len(row) > path_index]
    elif path.suffix.lower() == ".csv" and len(header) > 1:
        raise DataError(
            f"{path}:{lines[0][0]}: an exclusion CSV needs a header row naming its path column "
            f"({', '.join(PATH_COLUMNS[:4])}, ...); found {', '.join(header)}"
        )
    else:
        names = [line for _, line in lines]
    return {PurePath(os.path.normpath(name.strip())).parts for name in names if name.strip()}


def exclude_samples(
    splits: dict[str, list[Sample]], exclude_file: Path
) -> tuple[dict[str, list[Sample]], int]:
    """Drop samples whose path ends with an excluded path (compared component by component)."""
    excluded = read_exclude(exclude_file)
    longest = max((len(parts) for parts in excluded), default=0)

    def is_excluded(sample: Sample) -> bool:
        parts = PurePath(sample.path).parts
        return any(parts[-n:] in excluded for n in range(1, min(longest, len(parts)) + 1))

    kept = {name: [s for s in samples if not is_excluded(s)] for name, samples in splits.items()}
    count = sum(len(samples) for samples in splits.values()) - sum(len(s) for s in kept.values())
    return kept, count
