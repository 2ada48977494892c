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
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from collections.abc import Iterator
from typing import IO

import numpy as np
import yaml

from vitrina.config import DataConfig
from vitrina.data.images import IMAGE_EXTENSIONS, is_image_file
from vitrina.data.samples import Dataset, Sample
from vitrina.data.splits import ROLE_OF_SOURCE, assign_roles, complete_splits
from vitrina.errors import DataError

# Recognised CSV column names, most specific first.
PATH_COLUMNS = (
    "path", "image_path", "img_path", "filepath", "file_path", "filename", "file_name",
    "file", "image", "img", "fname", "image_id", "id",
)  # fmt: skip
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y")
COARSE_COLUMNS = ("coarse", "coarse_label", "parent", "super_class", "superclass", "group")
CLASS_NAME_COLUMNS = ("name", "class", "class_name", "label", "category")
CLASS_ID_COLUMNS = ("id", "class_id", "label_id", "index")
LIST_SUFFIXES = (".txt", ".lst", ".list")
YAML_SUFFIXES = (".yaml", ".yml")
YAML_KEYS = ("root", "train", "val", "test", "classes")

_PIXEL_COLUMN = re.compile(r"pixel\d+")
_PIXEL_CHUNK_BYTES = 4_000_000
# Extensions tried, in this order, for an image named without one (an id such as "123").
_GUESSED_EXTENSIONS = [
    variant
    for ext in sorted(IMAGE_EXTENSIONS, key=lambda e: (e not in (".jpg", ".png", ".jpeg"), e))
    for variant in (ext, ext.upper())
]


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
    classes = _read_classes_file(Path(config.classes_file)) if config.classes_file else None
    if path.is_file() and path.name.lower().endswith(YAML_SUFFIXES):
        sources, yaml_root, yaml_classes = _read_spec(path)
        root = yaml_root or root
        classes = yaml_classes or classes
    else:
        sources = (_split_folders(path) if path.is_dir() else {}) or {"train": path}

    coarse_map = _read_coarse_map(Path(config.coarse_map)) if config.coarse_map else {}
    reader = _SampleReader(classes, coarse_map)
    splits = {name: _read_source(source, reader, root) for name, source in sources.items()}
    splits = {name: reader.with_known_coarse(samples) for name, samples in splits.items()}

    carved: dict[str, dict] = {}
    if config.exclude:
        splits, excluded = _exclude(splits, Path(config.exclude))
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
    class_names = classes.names if classes else _sorted_labels(labels)
    return Dataset(
        classes=class_names,
        splits=splits,
        source=str(path),
        coarse_of={
            fine: reader.coarse_of[fine][0] for fine in class_names if fine in reader.coarse_of
        },
        carved=carved,
    )


@dataclass
class _ClassList:
    """Class names in model-output order, and integer id -> name, from a classes file or list."""

    names: list[str]
    by_id: dict[int, str]
    origin: str
    by_name: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = set(self.names)

    def resolve(self, raw: str, where: str) -> str:
        if raw in self.by_name:
            return raw
        name = self.by_id.get(int(raw)) if _is_int(raw) else None
        if name is None:
            raise DataError(f"{where}: label {raw!r} is not in the classes file {self.origin}")
        return name


class _SampleReader:
    """Builds samples: resolves labels through the class list, keeps fine -> coarse consistent."""

    def __init__(self, classes: _ClassList | None, coarse_map: dict[str, tuple[str, str]]):
        self.classes = classes
        self.coarse_of = dict(coarse_map)  # fine -> (coarse, where it was first seen)

    def sample(
        self,
        path: str,
        raw_label: str,
        where: str,
        raw_coarse: str | None = None,
        pixels: np.ndarray | None = None,
    ) -> Sample:
        if not raw_label:
            raise DataError(f"{where}: empty label")
        label = self.classes.resolve(raw_label, where) if self.classes else raw_label
        coarse = raw_coarse or None
        known = self.coarse_of.get(label)
        if coarse is None:
            coarse = known[0] if known else None
        elif known is None:
            self.coarse_of[label] = (coarse, where)
        elif known[0] != coarse:
            raise DataError(
                f"{where}: class {label!r} has coarse class {coarse!r} here "
                f"but {known[0]!r} at {known[1]}"
            )
        return Sample(path=path, label=label, coarse=coarse, pixels=pixels)

    def with_known_coarse(self, samples: list[Sample]) -> list[Sample]:
        """Give samples read before their class's coarse label was seen that coarse label."""
        return [
            replace(s, coarse=self.coarse_of[s.label][0])
            if s.coarse is None and s.label in self.coarse_of
            else s
            for s in samples
        ]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer id."""
    if labels and all(_is_int(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _where(path: Path | str, line: int) -> str:
    return f"{path}:{line}"


def _open_text(path: Path) -> IO[str]:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every line that is neither blank nor a # comment."""
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    yield number, line
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable text file: {exc}") from None


def _fields(line: str) -> list[str]:
    """Split a list-file line on commas if it has any, else on whitespace."""
    if "," in line:
        return [field.strip() for field in line.split(",")]
    return line.split()


def _read_classes_file(path: Path) -> _ClassList:
    """Read ``name id`` lines, ``name`` lines (id = position), or a CSV with name and id columns."""
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    name_column = id_column = None
    by_id: dict[int, str] = {}
    first_seen: dict[str, int] = {}
    for number, line in _text_lines(path):
        if not by_id and name_column is None:
            lowered = [f.lower() for f in _fields(line)]
            names = [i for i, f in enumerate(lowered) if f in CLASS_NAME_COLUMNS]
            ids = [i for i, f in enumerate(lowered) if f in CLASS_ID_COLUMNS]
            if names and ids:
                name_column, id_column = names[0], ids[0]
                continue
        if "," in line:
            fields = _fields(line)
        else:
            fields = line.rsplit(None, 1)  # a name may contain spaces; the id is the last field
            if len(fields) == 2 and not _is_int(fields[1]):
                fields = [line]
        if name_column is not None:
            if len(fields) <= max(name_column, id_column):
                raise DataError(f"{_where(path, number)}: expected a name and an id, got {line!r}")
            name, class_id = fields[name_column], fields[id_column]
        elif len(fields) == 1:
            name, class_id = fields[0], str(len(by_id))
        elif len(fields) == 2:
            name, class_id = fields
        else:
            raise DataError(f"{_where(path, number)}: expected 'name id', got {line!r}")
        if not _is_int(class_id):
            raise DataError(f"{_where(path, number)}: class id {class_id!r} is not an integer")
        if name in first_seen:
            raise DataError(
                f"{_where(path, number)}: class {name!r} is listed twice "
                f"(also line {first_seen[name]})"
            )
        if int(class_id) in by_id:
            raise DataError(f"{_where(path, number)}: class id {class_id} is used twice")
        first_seen[name] = number
        by_id[int(class_id)] = name
    if not by_id:
        raise DataError(f"{path}: the classes file lists no classes")
    return _ClassList(names=[by_id[i] for i in sorted(by_id)], by_id=by_id, origin=str(path))


def _read_coarse_map(path: Path) -> dict[str, tuple[str, str]]:
    """Read ``fine coarse`` lines or a two-column CSV (header optional): fine -> (coarse, where)."""
    if not path.is_file():
        raise DataError(f"coarse map not found: {path}")
    mapping: dict[str, tuple[str, str]] = {}
    for number, line in _text_lines(path):
        fields = _fields(line)
        if len(fields) != 2:
            raise DataError(
                f"{_where(path, number)}: expected 'fine_class coarse_class', got {line!r}"
            )
        fine, coarse = fields
        is_header = not mapping and (
            coarse.lower() in COARSE_COLUMNS
            or fine.lower() in LABEL_COLUMNS + ("fine", "fine_label")
        )
        if is_header:
            continue
        if fine in mapping and mapping[fine][0] != coarse:
            raise DataError(
                f"{_where(path, number)}: class {fine!r} is mapped to {coarse!r} here "
                f"but to {mapping[fine][0]!r} at {mapping[fine][1]}"
            )
        mapping[fine] = (coarse, _where(path, number))
    return mapping


def _read_spec(path: Path) -> tuple[dict[str, Path], Path | None, _ClassList | None]:
    """Read a dataset.yaml: split sources, image root and class list, paths relative to the yaml."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: expected a mapping with keys {', '.join(YAML_KEYS)}")
    unknown = [str(key) for key in spec if key not in YAML_KEYS]
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(YAML_KEYS)}")
    if not spec.get("train"):
        raise DataError(f"{path}: no 'train' source given")

    def located(key: str) -> Path:
        value = spec[key]
        if not isinstance(value, str):
            raise DataError(f"{path}: {key}: expected a path, got {value!r}")
        target = path.parent / value
        if not target.exists():
            raise DataError(f"{path}: {key}: not found: {target}")
        return target

    sources = {key: located(key) for key in ("train", "val", "test") if spec.get(key)}
    root = located("root") if spec.get("root") else None
    classes = None
    if isinstance(spec.get("classes"), list):
        names = [str(name) for name in spec["classes"]]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: classes: a class is listed twice")
        classes = _ClassList(names=names, by_id=dict(enumerate(names)), origin=f"{path} (classes)")
    elif spec.get("classes"):
        classes = _read_classes_file(located("classes"))
    return sources, root, classes


def _split_folders(folder: Path) -> dict[str, Path]:
    """The split folders of layout b (empty when ``folder`` is not laid out that way)."""
    subfolders = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    present = [name for name in subfolders if name in ROLE_OF_SOURCE]
    if not present:
        return {}
    if "train" not in present:
        raise DataError(
            f"{folder} has a {present[0]}/ folder but no train/: a dataset folder holds either "
            "class folders or split folders train/ (+ val/ or validation/, test/)"
        )
    if "val" in present and "validation" in present:
        raise DataError(f"{folder} has both val/ and validation/: keep one")
    others = [name for name in subfolders if name not in ROLE_OF_SOURCE]
    if others:
        raise DataError(
            f"{folder}: unexpected folder {others[0]}/ beside train/ "
            "(expected only train/, val/ or validation/, and test/)"
        )
    return {name: folder / name for name in present}


def _read_source(source: Path, reader: _SampleReader, root: Path | None) -> list[Sample]:
    """Read one split source: a folder (a, f), a CSV (c, d, headerless e) or a list file (e)."""
    name = source.name.lower()
    if source.is_dir():
        samples = _read_folder(source, reader)
    elif name.endswith((".csv", ".csv.gz")):
        samples = _read_csv(source, reader, root or source.parent)
    elif name.endswith(LIST_SUFFIXES):
        samples = _read_list(source, reader, root or source.parent)
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


def _image_files(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found.extend(
            os.path.join(parent, f) for f in files if not f.startswith(".") and is_image_file(f)
        )
    return sorted(found)


def _read_folder(folder: Path, reader: _SampleReader) -> list[Sample]:
    """Layout a (class subfolders) or f (loose ``LABEL_name.ext`` images)."""
    entries = sorted(
        (e for e in os.scandir(os.path.abspath(folder)) if not e.name.startswith(".")),
        key=lambda e: e.name,
    )
    loose = [e.path for e in entries if e.is_file() and is_image_file(e.name)]
    class_images = {e.path: _image_files(e.path) for e in entries if e.is_dir()}
    if any(class_images.values()):
        if loose:
            raise DataError(
                f"{folder}: images directly in the folder (e.g. {os.path.basename(loose[0])}) "
                "beside class folders: move them into their class folder"
            )
        samples = []
        for class_folder, files in class_images.items():
            if not files:
                raise DataError(f"class folder {class_folder} has no images")
            label = os.path.basename(class_folder)
            samples.extend(reader.sample(f, label, where=class_folder) for f in files)
        return samples
    if not loose:
        raise DataError(f"no images found in {folder}")
    samples = []
    for file in loose:
        label, underscore, _ = os.path.basename(file).partition("_")
        if not underscore or not label:
            raise DataError(
                f"{file}: cannot tell the class from the file name: name images "
                "LABEL_anything.ext, or put them in one folder per class"
            )
        samples.append(reader.sample(file, label, where=file))
    return samples


def _find_image(base: Path, name: str) -> str | None:
    """The absolute path of image ``name`` under ``base``, trying image extensions for bare ids."""
    candidate = os.path.join(base, name)
    if os.path.isfile(candidate):
        return os.path.abspath(candidate)
    if not is_image_file(candidate):
        for ext in _GUESSED_EXTENSIONS:
            if os.path.isfile(candidate + ext):
                return os.path.abspath(candidate + ext)
    return None


def _image_path(base: Path, name: str, where: str) -> str:
    found = _find_image(base, name)
    if found is None:
        raise DataError(f"{where}: image not found: {name!r} (looked in {base})")
    return found


def _read_list(path: Path, reader: _SampleReader, base: Path) -> list[Sample]:
    """Layout e: ``path label [coarse_label]`` lines, comma- or whitespace-separated."""
    samples = []
    for number, line in _text_lines(path):
        fields = _fields(line)
        where = _where(path, number)
        if len(fields) not in (2, 3):
            raise DataError(
                f"{where}: expected 'path label [coarse_label]', got {len(fields)} fields: {line!r}"
            )
        image = _image_path(base, fields[0], where)
        samples.append(
            reader.sample(image, fields[1], where, fields[2] if len(fields) == 3 else None)
        )
    return samples


def _read_csv(path: Path, reader: _SampleReader, base: Path) -> list[Sample]:
    """Layouts c (path and label columns), d (label and pixel columns) or a headerless list (e)."""
    try:
        with _open_text(path) as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    columns = [c.strip().lower() for c in header]
    if (
        len(columns) > 1
        and columns[0] in LABEL_COLUMNS
        and all(_PIXEL_COLUMN.fullmatch(c) for c in columns[1:])
    ):
        return _read_pixel_csv(path, len(columns) - 1, reader)
    if any(c in PATH_COLUMNS or c in LABEL_COLUMNS for c in columns):
        return _read_table(path, columns, reader, base)
    if len(columns) in (2, 3) and _find_image(base, header[0].strip()):
        return _read_list(path, reader, base)
    raise DataError(
        f"{path}: no recognisable image-path and label columns; "
        f"columns found: {', '.join(header)} (path column: one of {', '.join(PATH_COLUMNS)}; "
        f"label column: one of {', '.join(LABEL_COLUMNS)})"
    )


def _read_table(path: Path, columns: list[str], reader: _SampleReader, base: Path) -> list[Sample]:
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
        with _open_text(path) as f:
            rows = csv.reader(f)
            next(rows)
            for row in rows:
                where = _where(path, rows.line_num)
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
                        _image_path(base, name, where), row[label_index].strip(), where, coarse
                    )
                )
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    return samples


def _read_pixel_csv(path: Path, pixel_count: int, reader: _SampleReader) -> list[Sample]:
    """Layout d: ``label,pixel1..pixelN`` rows become in-memory ``side x side`` uint8 images.

    Rows are parsed a few megabytes at a time with one numpy call per chunk; a chunk that does
    not parse cleanly is re-read row by row to name the bad line.
    """
    side = math.isqrt(pixel_count)
    if side * side != pixel_count:
        raise DataError(
            f"{_where(path, 1)}: {pixel_count} pixel columns do not make a square image"
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
                            f"{source}#row={row}", label, _where(path, number), pixels=image
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
            f"{_where(path, line_numbers[row])}: "
            f"pixel{column + 1} = {values[row, column]} is outside 0-255"
        )
    return values.astype(np.uint8)


def _raise_bad_pixel_row(
    rows: list[bytes], pixel_count: int, path: Path, line_numbers: list[int]
) -> None:
    for row, number in zip(rows, line_numbers, strict=True):
        where = _where(path, number)
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


def _read_exclude(path: Path) -> set[tuple[str, ...]]:
    """Paths to leave out, as path-component tuples: one a line, or a CSV with a path column."""
    if not path.is_file():
        raise DataError(f"exclude file not found: {path}")
    lines = list(_text_lines(path))
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


def _exclude(
    splits: dict[str, list[Sample]], exclude_file: Path
) -> tuple[dict[str, list[Sample]], int]:
    """Drop samples whose path ends with an excluded path (compared component by component)."""
    excluded = _read_exclude(exclude_file)
    longest = max((len(parts) for parts in excluded), default=0)

    def is_excluded(sample: Sample) -> bool:
        parts = PurePath(sample.path).parts
        return any(parts[-n:] in excluded for n in range(1, min(longest, len(parts)) + 1))

    kept = {name: [s for s in samples if not is_excluded(s)] for name, samples in splits.items()}
    count = sum(len(samples) for samples in splits.values()) - sum(len(s) for s in kept.values())
    return kept, count
