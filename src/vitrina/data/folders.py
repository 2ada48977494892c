"""Layouts a, b and f: class folders, split folders (train/, val/ or validation/, test/), and a folder
of images named ``LABEL_anything.ext``."""
from __future__ import annotations

import os
from pathlib import Path

from vitrina.data.classes import SampleReader
from vitrina.data.images import is_image_file
from vitrina.data.samples import Sample
from vitrina.data.splits import ROLE_OF_SOURCE
from vitrina.errors import DataError


def split_folders(folder: Path) -> dict[str, Path]:
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


def image_files(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found.extend(
            os.path.join(parent, f) for f in files if not f.startswith(".") and is_image_file(f)
        )
    return sorted(found)


def read_folder(folder: Path, reader: SampleReader) -> list[Sample]:
    """Layout a (class subfolders) or f (loose ``LABEL_name.ext`` images)."""
    entries = sorted(
        (e for e in os.scandir(os.path.abspath(folder)) if not e.name.startswith(".")),
        key=lambda e: e.name,
    )
    loose = [e.path for e in entries if e.is_file() and is_image_file(e.name)]
    class_images = {e.path: image_files(e.path) for e in entries if e.is_dir()}
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
