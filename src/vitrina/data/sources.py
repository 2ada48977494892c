"""Read a dataset from any supported layout into a :class:`~vitrina.data.samples.Dataset`.

``load_dataset(data)`` detects the layout of ``data``:

a. a folder with one subfolder per class (images found recursively);
b. a folder with ``train/``, ``val/`` or ``validation/``, and ``test/``, each holding class folders;
c. a CSV with an image-path column and a label column (optional coarse-label column);
d. a CSV (``.csv`` or ``.csv.gz``) of ``label,pixel1..pixelN`` rows, N a perfect square;
e. a list file (``.txt``, ``.lst``, ``.list`` or a CSV without header) of ``path label [coarse]``;
f. a folder of images named ``LABEL_anything.ext``;
g. a ``dataset.yaml`` naming ``root``, ``train``, ``val``, ``test`` and ``classes``.

A single source (a, c, d, e, f) is the "train" split. Images are listed here, never decoded.
Every problem with the input is a :class:`~vitrina.errors.DataError` naming the file and, for
line-based files, the line.

This module detects the form and dispatches; the readers live in :mod:`.folders` (a, b, f),
:mod:`.path_lists` (c, e), :mod:`.pixel_csv` (d) and :mod:`.dataset_yaml` (g), with classes files
and coarse maps in :mod:`.classes` and the exclusion list in :mod:`.exclusion`.
"""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

from vitrina.config import DataConfig
from vitrina.data.classes import (
    SampleReader,
    read_classes_file,
    read_coarse_map,
    sorted_labels,
)
from vitrina.data.columns import LABEL_COLUMNS, PATH_COLUMNS
from vitrina.data.dataset_yaml import YAML_SUFFIXES, read_dataset_yaml
from vitrina.data.exclusion import exclude_samples
from vitrina.data.folders import read_folder, split_folders
from vitrina.data.path_lists import LIST_SUFFIXES, find_image, read_list, read_table
from vitrina.data.pixel_csv import is_pixel_header, read_pixel_csv
from vitrina.data.samples import Dataset, Sample
from vitrina.data.splits import assign_roles, complete_splits
from vitrina.data.textfiles import open_text
from vitrina.errors import DataError


def load_dataset(
    data: str | os.PathLike,
    config: DataConfig | None = None,
    *,
    need_test: bool = False,
    carve_val: bool = True,
) -> Dataset:
    """Load ``data`` (any layout listed in the module docstring) into named splits.

    ``config.holdout`` sets a split aside for reporting; a missing "test" split is carved from
    train when ``need_test``, then a missing "val" split when ``carve_val``. Relative image
    paths in CSV and list files resolve against the yaml ``root``, else ``config.root``, else
    the file's folder.
    """
    config = config or DataConfig()
    path = Path(data)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    root = Path(config.root) if config.root else None
    classes = read_classes_file(Path(config.classes_file)) if config.classes_file else None
    if path.is_file() and path.name.lower().endswith(YAML_SUFFIXES):
        sources, yaml_root, yaml_classes = read_dataset_yaml(path)
        root = yaml_root or root
        classes = yaml_classes or classes
    else:
        sources = (split_folders(path) if path.is_dir() else {}) or {"train": path}

    coarse_map = read_coarse_map(Path(config.coarse_map)) if config.coarse_map else {}
    reader = SampleReader(classes, coarse_map)
    splits = {name: [sample for one in (source if isinstance(source, list) else [source]) for sample in _read_source(one, reader, root)]
              for name, source in sources.items()}
    splits = {name: reader.with_known_coarse(samples) for name, samples in splits.items()}

    carved: dict[str, dict] = {}
    if config.exclude:
        splits, excluded = exclude_samples(splits, Path(config.exclude))
        carved["excluded"] = {"count": excluded, "file": str(config.exclude)}

    splits = assign_roles(splits, config.holdout)
    splits, carved_splits = complete_splits(
        splits,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.split_seed,
        need_test=need_test,
        carve_val=carve_val,
    )
    carved.update(carved_splits)
    labels = {s.label for samples in splits.values() for s in samples}
    class_names = classes.names if classes else sorted_labels(labels)
    return Dataset(
        classes=class_names,
        splits=splits,
        source=str(path),
        coarse_of={
            fine: reader.coarse_of[fine][0] for fine in class_names if fine in reader.coarse_of
        },
        carved=carved,
    )


def _read_source(source: Path, reader: SampleReader, root: Path | None) -> list[Sample]:
    """Read one split source: a folder (a, f), a CSV (c, d, headerless e) or a list file (e)."""
    name = source.name.lower()
    if source.is_dir():
        samples = read_folder(source, reader)
    elif name.endswith((".csv", ".csv.gz")):
        samples = _read_csv(source, reader, root or source.parent)
    elif name.endswith(LIST_SUFFIXES):
        samples = read_list(source, reader, root or source.parent)
    elif name.endswith(YAML_SUFFIXES):
        raise DataError(f"{source}: a dataset.yaml cannot be a split of another dataset")
    else:
        raise DataError(
            f"{source}: not a dataset: expected a folder, a .csv / .csv.gz, a list file "
            f"({', '.join(LIST_SUFFIXES)}) or a dataset.yaml"
        )
    if not samples:
        raise DataError(f"{source}: no samples found")
    return samples


def _read_csv(path: Path, reader: SampleReader, base: Path) -> list[Sample]:
    """Layouts c (path and label columns), d (label and pixel columns) or a headerless list (e)."""
    try:
        with open_text(path) as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    columns = [c.strip().lower() for c in header]
    if is_pixel_header(columns):
        return read_pixel_csv(path, len(columns) - 1, reader)
    if any(c in PATH_COLUMNS or c in LABEL_COLUMNS for c in columns):
        return read_table(path, columns, reader, base)
    if len(columns) in (2, 3) and find_image(base, header[0].strip()):
        return read_list(path, reader, base)
    raise DataError(
        f"{path}: no recognisable image-path and label columns; "
        f"columns found: {', '.join(header)} (path column: one of {', '.join(PATH_COLUMNS)}; "
        f"label column: one of {', '.join(LABEL_COLUMNS)})"
    )
