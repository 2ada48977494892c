"""Fuzzing, seeded and bounded: mutated image bytes and malformed dataset files.

Whatever the bytes, decoding gives an image or an :class:`~vitrina.errors.ImageError`, and reading
a dataset gives a dataset or a :class:`~vitrina.errors.VitrinaError` with a message: never another
exception (a traceback for a user's file). The runs are derandomised (the same examples every
time) and small enough for the suite; ``VITRINA_FUZZ_EXAMPLES=5000 pytest tests/data/test_fuzz.py``
runs them longer. A finding becomes a regression test in test_images.py or test_sources.py.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.imagegen import jpeg_bytes, photo
from vitrina.config import DataConfig
from vitrina.data.images import decode
from vitrina.data.sources import load_dataset
from vitrina.errors import ImageError, VitrinaError

EXAMPLES = int(os.environ.get("VITRINA_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def encoded(fmt: str) -> bytes:
    image = photo(48, 40, seed=1)
    if fmt == "JPEG":
        return jpeg_bytes(image)
    buffer = io.BytesIO()
    (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {fmt: encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP")}
edits = st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 255)), max_size=12)


def mutate(data: bytes, changes: list[tuple[float, int]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, value in changes:
        out[min(len(out) - 1, int(where * len(out)))] = value
    return bytes(out[: max(1, int(cut * len(out)))] if cut is not None else out)


@FUZZ
@given(fmt=st.sampled_from(sorted(SEEDS)), changes=edits, cut=st.one_of(st.none(), st.floats(0, 1, allow_nan=False)))
def test_mutated_images_decode_or_are_refused_with_a_reason(fmt: str, changes: list[tuple[float, int]], cut: float | None) -> None:
    data = mutate(SEEDS[fmt], changes, cut)
    try:
        image = decode(data, "RGB", 10_000_000, draft_size=(32, 32), name=f"fuzz.{fmt.lower()}")
    except ImageError as exc:
        assert exc.reason
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.width > 0 and image.height > 0


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_are_never_a_crash(data: bytes) -> None:
    try:
        decode(data, "L", 10_000_000, name="random.bin")
    except ImageError:
        pass


def _load(tmp: Path, name: str, text: str) -> None:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    try:
        load_dataset(path, DataConfig(root=str(tmp)), carve_val=True)
    except VitrinaError as exc:
        assert str(exc)


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding two real photos the generated files may name."""
    tmp = tmp_path_factory.mktemp("fuzz-data")
    for name in ("a.jpg", "b.jpg"):
        (tmp / name).write_bytes(jpeg_bytes(photo(24, 24, seed=len(name))))
    return tmp


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(cells, st.sampled_from(["a.jpg", "b.jpg", "shoe", "hat", "path", "label"])), max_size=4), max_size=8))
def test_csv_files_of_paths_and_labels(folder: Path, rows: list[list[str]]) -> None:
    _load(folder, "data.csv", "\n".join(",".join(row) for row in rows) + "\n")


@FUZZ
@given(header=st.sampled_from(["label,pixel1,pixel2,pixel3,pixel4", "label,pixel1,pixel2", "label", ""]),
       rows=st.lists(st.lists(st.one_of(st.integers(-300, 300).map(str), cells), max_size=6), max_size=6))
def test_pixel_csv_files(folder: Path, header: str, rows: list[list[str]]) -> None:
    _load(folder, "pixels.csv", header + "\n" + "\n".join(",".join(row) for row in rows) + "\n")


@FUZZ
@given(lines=st.lists(st.lists(st.one_of(cells, st.sampled_from(["a.jpg", "b.jpg", "0", "1", "-1", "99"])), max_size=4), max_size=8))
def test_list_files(folder: Path, lines: list[list[str]]) -> None:
    _load(folder, "list.txt", "\n".join(" ".join(line) for line in lines) + "\n")


yaml_values = st.one_of(cells, st.sampled_from(["data.csv", "list.txt", ".", "a.jpg", "[1, 2]", "{x: 1}", "null"]))


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(["root", "train", "val", "test", "classes", "names", "other"]), yaml_values, max_size=5),
       raw=st.one_of(st.none(), cells))
def test_dataset_yaml_files(folder: Path, entries: dict[str, str], raw: str | None) -> None:
    text = raw if raw is not None else "\n".join(f"{key}: {value}" for key, value in entries.items())
    _load(folder, "dataset.yaml", text + "\n")
