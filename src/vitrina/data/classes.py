"""Class names and ids (a classes file or a list), fine-to-coarse maps, and the builder that makes
samples with labels resolved through them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vitrina.data.columns import (
    CLASS_ID_COLUMNS,
    CLASS_NAME_COLUMNS,
    COARSE_COLUMNS,
    LABEL_COLUMNS,
)
from vitrina.data.samples import Sample
from vitrina.data.textfiles import at_line, is_int, split_fields, text_lines
from vitrina.errors import DataError


@dataclass
class ClassList:
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
        name = self.by_id.get(int(raw)) if is_int(raw) else None
        if name is None:
            raise DataError(f"{where}: label {raw!r} is not in the classes file {self.origin}")
        return name


class SampleReader:
    """Builds samples: resolves labels through the class list, keeps fine -> coarse consistent."""

    def __init__(self, classes: ClassList | None, coarse_map: dict[str, tuple[str, str]]):
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


def sorted_labels(labels: set[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer id."""
    if labels and all(is_int(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def read_classes_file(path: Path) -> ClassList:
    """Read ``name id`` lines, ``name`` lines (id = position), or a CSV with name and id columns."""
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    name_column = id_column = None
    by_id: dict[int, str] = {}
    first_seen: dict[str, int] = {}
    for number, line in text_lines(path):
        if not by_id and name_column is None:
            lowered = [f.lower() for f in split_fields(line)]
            names = [i for i, f in enumerate(lowered) if f in CLASS_NAME_COLUMNS]
            ids = [i for i, f in enumerate(lowered) if f in CLASS_ID_COLUMNS]
            if names and ids:
                name_column, id_column = names[0], ids[0]
                continue
        if "," in line:
            fields = split_fields(line)
        else:
            fields = line.rsplit(None, 1)  # a name may contain spaces; the id is the last field
            if len(fields) == 2 and not is_int(fields[1]):
                fields = [line]
        if name_column is not None:
            if len(fields) <= max(name_column, id_column):
                raise DataError(f"{at_line(path, number)}: expected a name and an id, got {line!r}")
            name, class_id = fields[name_column], fields[id_column]
        elif len(fields) == 1:
            name, class_id = fields[0], str(len(by_id))
        elif len(fields) == 2:
            name, class_id = fields
        else:
            raise DataError(f"{at_line(path, number)}: expected 'name id', got {line!r}")
        if not is_int(class_id):
            raise DataError(f"{at_line(path, number)}: class id {class_id!r} is not an integer")
        if name in first_seen:
            raise DataError(
                f"{at_line(path, number)}: class {name!r} is listed twice "
                f"(also line {first_seen[name]})"
            )
        if int(class_id) in by_id:
            raise DataError(f"{at_line(path, number)}: class id {class_id} is used twice")
        first_seen[name] = number
        by_id[int(class_id)] = name
    if not by_id:
        raise DataError(f"{path}: the classes file lists no classes")
    return ClassList(names=[by_id[i] for i in sorted(by_id)], by_id=by_id, origin=str(path))


def read_coarse_map(path: Path) -> dict[str, tuple[str, str]]:
    """Read ``fine coarse`` lines or a two-column CSV (header optional): fine -> (coarse, where)."""
    if not path.is_file():
        raise DataError(f"coarse map not found: {path}")
    mapping: dict[str, tuple[str, str]] = {}
    for number, line in text_lines(path):
        fields = split_fields(line)
        if len(fields) != 2:
            raise DataError(
                f"{at_line(path, number)}: expected 'fine_class coarse_class', got {line!r}"
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
                f"{at_line(path, number)}: class {fine!r} is mapped to {coarse!r} here "
                f"but to {mapping[fine][0]!r} at {mapping[fine][1]}"
            )
        mapping[fine] = (coarse, at_line(path, number))
    return mapping
