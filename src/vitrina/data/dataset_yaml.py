"""Layout g: a ``dataset.yaml`` naming ``root``, ``train``, ``val``, ``test`` and ``classes``.

A split may list several sources (``train: [photos/, reviewed/labels.csv]``): their samples are read
in turn and joined, so reviewed photos exported from the moderation log add to the original ones.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from vitrina.data.classes import ClassList, read_classes_file
from vitrina.errors import DataError

YAML_SUFFIXES = (".yaml", ".yml")
YAML_KEYS = ("root", "train", "val", "test", "classes")


def read_dataset_yaml(path: Path) -> tuple[dict[str, Path | list[Path]], Path | None, ClassList | None]:
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

    def sources_of(key: str) -> Path | list[Path]:
        value = spec[key]
        if not isinstance(value, list):
            return located(key)
        found = []
        for item in value:
            if not isinstance(item, str):
                raise DataError(f"{path}: {key}: expected paths, got {item!r}")
            target = path.parent / item
            if not target.exists():
                raise DataError(f"{path}: {key}: not found: {target}")
            found.append(target)
        return found

    sources = {key: sources_of(key) for key in ("train", "val", "test") if spec.get(key)}
    root = located("root") if spec.get("root") else None
    classes = None
    if isinstance(spec.get("classes"), list):
        names = [str(name) for name in spec["classes"]]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: classes: a class is listed twice")
        classes = ClassList(names=names, by_id=dict(enumerate(names)), origin=f"{path} (classes)")
    elif spec.get("classes"):
        classes = read_classes_file(located("classes"))
    return sources, root, classes
