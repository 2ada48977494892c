from __future__ import annotations

import gzip
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vitrina.config import DataConfig
from vitrina.data.images import is_image_file
from vitrina.data.samples import Dataset
from vitrina.data.sources import load_dataset
from vitrina.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def load(data: Path, **config) -> Dataset:
    return load_dataset(data, DataConfig(**config), carve_val=False)


def counts(dataset) -> dict[str, dict[str, int]]:
    return {name: {c: n for c, n in per.items() if n} for name, per in dataset.counts().items()}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_message(data, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        load_dataset(data, DataConfig(**kwargs.pop("config", {})), carve_val=False, **kwargs)
    return str(caught.value)


@pytest.fixture
def class_folders(tmp_path, make_image) -> Path:
    """cat: 3 images (one nested), dog: 2 images, plus files that are not samples."""
    root = tmp_path / "pets"
    make_image(root / "cat" / "c1.jpg")
    make_image(root / "cat" / "c2.png")
    make_image(root / "cat" / "more" / "c3.jpg")
    make_image(root / "dog" / "d1.jpg", color=(10, 10, 200))
    make_image(root / "dog" / "d2.JPG", color=(10, 10, 200))
    make_image(root / "dog" / ".hidden.jpg")
    make_image(root / ".thumbs" / "t.jpg")
    write(root / "dog" / "notes.txt", "not an image")
    return root


@pytest.fixture
def images(tmp_path, make_image) -> Path:
    """A flat folder of images a.jpg .. f.jpg for CSV and list sources to point at."""
    folder = tmp_path / "img"
    for name in "abcdef":
        make_image(folder / f"{name}.jpg")
    return folder


# a. class folders


def test_class_folders(class_folders):
    dataset = load(class_folders)
    assert dataset.classes == ["cat", "dog"]
    assert counts(dataset) == {"train": {"cat": 3, "dog": 2}}
    assert dataset.source == str(class_folders)
    cat_paths = [s.path for s in dataset.splits["train"] if s.label == "cat"]
    assert cat_paths == sorted(cat_paths)
    assert os.path.join(str(class_folders), "cat", "more", "c3.jpg") in cat_paths
    assert all(os.path.isabs(s.path) and s.pixels is None for s in dataset.splits["train"])


def test_unreadable_image_with_image_extension_is_listed(class_folders):
    write(class_folders / "dog" / "broken.jpg", "")
    assert counts(load(class_folders))["train"]["dog"] == 3


def test_a_single_class_is_not_an_error(tmp_path, make_image):
    make_image(tmp_path / "only" / "x.jpg")
    assert load(tmp_path).classes == ["only"]


# b. split folders


@pytest.mark.parametrize("val_folder", ["val", "validation"])
def test_split_folders(tmp_path, make_image, val_folder):
    for split, n in (("train", 3), (val_folder, 2), ("test", 1)):
        for label in ("a", "b"):
            for i in range(n):
                make_image(tmp_path / split / label / f"{i}.jpg")
    write(tmp_path / "LICENSE", "CC0")
    dataset = load(tmp_path)
    assert list(dataset.splits) == ["train", "val", "test"]
    assert counts(dataset) == {
        "train": {"a": 3, "b": 3},
        "val": {"a": 2, "b": 2},
        "test": {"a": 1, "b": 1},
    }


def test_split_folders_with_val_and_validation_is_an_error(tmp_path, make_image):
    for split in ("train", "val", "validation"):
        make_image(tmp_path / split / "a" / "x.jpg")
    assert "both val/ and validation/" in error_message(tmp_path)


def test_split_folders_without_train_is_an_error(tmp_path, make_image):
    make_image(tmp_path / "test" / "a" / "x.jpg")
    assert "no train/" in error_message(tmp_path)


def test_unexpected_folder_beside_split_folders_is_an_error(tmp_path, make_image):
    make_image(tmp_path / "train" / "a" / "x.jpg")
    make_image(tmp_path / "extra" / "a" / "x.jpg")
    assert "unexpected folder extra/" in error_message(tmp_path)


# c. CSV of paths and labels


def test_csv_of_paths_and_labels(tmp_path, images):
    csv_file = write(
        tmp_path / "labels.csv",
        "Filename,Category\nimg/a.jpg,shoe\nimg/b.jpg,bag\n\nimg/c.jpg,shoe\n",
    )
    dataset = load(csv_file)
    assert dataset.classes == ["bag", "shoe"]
    assert [(Path(s.path).name, s.label) for s in dataset.splits["train"]] == [
        ("a.jpg", "shoe"), ("b.jpg", "bag"), ("c.jpg", "shoe"),
    ]  # fmt: skip


def test_csv_paths_relative_to_root_and_ids_without_extension(tmp_path, images):
    csv_file = write(tmp_path / "meta" / "labels.csv", "id,target,notes\na,x,first\nb,y,\n")
    dataset = load(csv_file, root=str(images))
    assert [s.path for s in dataset.splits["train"]] == [
        str(images / "a.jpg"),
        str(images / "b.jpg"),
    ]


def test_csv_coarse_column(tmp_path, images):
    csv_file = write(
        tmp_path / "labels.csv",
        "image,label,parent\nimg/a.jpg,sneaker,shoes\nimg/b.jpg,boot,shoes\nimg/c.jpg,tote,bags\n",
    )
    dataset = load(csv_file)
    assert [s.coarse for s in dataset.splits["train"]] == ["shoes", "shoes", "bags"]
    assert dataset.coarse_of == {"boot": "shoes", "sneaker": "shoes", "tote": "bags"}
    assert dataset.coarse_classes == ["bags", "shoes"]


def test_csv_gz_of_paths(tmp_path, images):
    csv_file = tmp_path / "labels.csv.gz"
    with gzip.open(csv_file, "wt") as f:
        f.write("path,label\nimg/a.jpg,x\nimg/b.jpg,y\n")
    assert counts(load(csv_file)) == {"train": {"x": 1, "y": 1}}


def test_csv_without_recognisable_columns_lists_the_columns(tmp_path):
    csv_file = write(tmp_path / "weird.csv", "alpha,beta\n1,2\n")
    message = error_message(csv_file)
    assert str(csv_file) in message and "columns found: alpha, beta" in message


def test_csv_without_label_column(tmp_path):
    csv_file = write(tmp_path / "paths.csv", "path,size\na.jpg,3\n")
    message = error_message(csv_file)
    assert "no label column; columns found: path, size" in message


def test_csv_missing_image_names_file_and_line(tmp_path, images):
    csv_file = write(tmp_path / "labels.csv", "path,label\nimg/a.jpg,x\nimg/missing.jpg,y\n")
    assert f"{csv_file}:3: image not found: 'img/missing.jpg'" in error_message(csv_file)


def test_csv_row_with_wrong_field_count(tmp_path, images):
    csv_file = write(tmp_path / "labels.csv", "path,label\nimg/a.jpg,x,extra\n")
    assert f"{csv_file}:2: expected 2 fields, got 3" in error_message(csv_file)


def test_csv_empty_label(tmp_path, images):
    csv_file = write(tmp_path / "labels.csv", "path,label\nimg/a.jpg,\n")
    assert f"{csv_file}:2: empty label" in error_message(csv_file)


# d. pixel CSV


def pixel_csv(
    path: Path, rows: list[str], header: str = "label,pixel1,pixel2,pixel3,pixel4"
) -> Path:
    text = "\n".join([header, *rows]) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
        return path
    return write(path, text)


@pytest.mark.parametrize("name", ["pixels.csv", "pixels.csv.gz"])
def test_pixel_csv(tmp_path, name):
    csv_file = pixel_csv(tmp_path / name, ["3,0,255,10,20", "", "1,1,2,3,4", "3,9,9,9,9"])
    dataset = load(csv_file)
    train = dataset.splits["train"]
    assert dataset.classes == ["1", "3"]
    assert [s.label for s in train] == ["3", "1", "3"]
    assert [s.path for s in train] == [f"{csv_file}#row={n}" for n in (1, 2, 3)]
    assert train[0].pixels.dtype == np.uint8
    np.testing.assert_array_equal(train[0].pixels, [[0, 255], [10, 20]])


def test_pixel_csv_integer_labels_sort_numerically(tmp_path):
    dataset = load(pixel_csv(tmp_path / "p.csv", ["10,0,0,0,0", "2,0,0,0,0", "1,0,0,0,0"]))
    assert dataset.classes == ["1", "2", "10"]


def test_pixel_csv_with_classes_file(tmp_path):
    classes = write(tmp_path / "classes.txt", "shirt 0\nankle boot 1\n")
    dataset = load(
        pixel_csv(tmp_path / "p.csv", ["1,0,0,0,0", "0,0,0,0,0"]), classes_file=str(classes)
    )
    assert dataset.classes == ["shirt", "ankle boot"]
    assert [s.label for s in dataset.splits["train"]] == ["ankle boot", "shirt"]


def test_pixel_csv_many_rows_parse_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, size=(3000, 16))
    rows = [f"{i % 3}," + ",".join(map(str, row)) for i, row in enumerate(values)]
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 17))
    dataset = load(pixel_csv(tmp_path / "p.csv", rows, header))
    stacked = np.stack([s.pixels.reshape(-1) for s in dataset.splits["train"]])
    np.testing.assert_array_equal(stacked, values)


def test_pixel_csv_not_square(tmp_path):
    csv_file = pixel_csv(tmp_path / "p.csv", ["1,0,0,0"], header="label,pixel1,pixel2,pixel3")
    assert f"{csv_file}:1: 3 pixel columns do not make a square image" in error_message(csv_file)


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        ("1,0,0,256,0", "pixel3 = 256 is outside 0-255"),
        ("1,0,-1,0,0", "pixel2 = -1 is outside 0-255"),
        ("1,0,x,0,0", "pixel2 = 'x' is not a whole number 0-255"),
        ("1,0,0.5,0,0", "pixel2 = '0.5' is not a whole number 0-255"),
        ("1,0,0,0", "expected 4 pixel values after the label, got 3"),
        ("1,0,0,0,0,0", "expected 4 pixel values after the label, got 5"),
    ],
)
def test_pixel_csv_bad_row_names_file_and_line(tmp_path, bad_row, expected):
    csv_file = pixel_csv(tmp_path / "p.csv", ["1,0,0,0,0", "2,1,1,1,1", bad_row, "1,0,0,0,0"])
    assert f"{csv_file}:4: {expected}" in error_message(csv_file)


# e. list files


@pytest.mark.parametrize(
    "name, text",
    [
        ("list.txt", "img/a.jpg shoe\nimg/b.jpg   bag\n# a comment\n\nimg/c.jpg\tshoe\n"),
        ("list.lst", "img/a.jpg,shoe\nimg/b.jpg, bag\nimg/c.jpg,shoe\n"),
        ("list.csv", "img/a.jpg,shoe\nimg/b.jpg,bag\nimg/c.jpg,shoe\n"),
    ],
)
def test_list_file(tmp_path, images, name, text):
    dataset = load(write(tmp_path / name, text))
    assert [(Path(s.path).name, s.label) for s in dataset.splits["train"]] == [
        ("a.jpg", "shoe"), ("b.jpg", "bag"), ("c.jpg", "shoe"),
    ]  # fmt: skip


def test_list_file_paths_relative_to_root(tmp_path, images):
    list_file = write(tmp_path / "lists" / "train.list", "a.jpg x\nb.jpg y\n")
    assert counts(load(list_file, root=str(images))) == {"train": {"x": 1, "y": 1}}


def test_list_file_coarse_third_column(tmp_path, images):
    list_file = write(
        tmp_path / "l.txt", "img/a.jpg sneaker shoes\nimg/b.jpg tote bags\nimg/c.jpg sneaker\n"
    )
    dataset = load(list_file)
    assert [s.coarse for s in dataset.splits["train"]] == ["shoes", "bags", "shoes"]
    assert dataset.coarse_of == {"sneaker": "shoes", "tote": "bags"}


def test_list_file_conflicting_coarse_labels(tmp_path, images):
    list_file = write(tmp_path / "l.txt", "img/a.jpg sneaker shoes\nimg/b.jpg sneaker bags\n")
    assert (
        f"{list_file}:2: class 'sneaker' has coarse class 'bags' here but 'shoes' at {list_file}:1"
        in (error_message(list_file))
    )


@pytest.mark.parametrize(
    "classes_text",
    [
        "CANDY 0\nJUICE 1\nVINEGAR 2\n",
        "name,id\nJUICE,1\nVINEGAR,2\nCANDY,0\n",
        "id,class_name\n2,VINEGAR\n0,CANDY\n1,JUICE\n",
    ],
)
def test_integer_ids_with_classes_file(tmp_path, images, classes_text):
    classes = write(tmp_path / "classid.txt", classes_text)
    list_file = write(tmp_path / "train.txt", "img/a.jpg 2\nimg/b.jpg 0\nimg/c.jpg JUICE\n")
    dataset = load(list_file, classes_file=str(classes))
    assert dataset.classes == ["CANDY", "JUICE", "VINEGAR"]
    assert [s.label for s in dataset.splits["train"]] == ["VINEGAR", "CANDY", "JUICE"]


def test_classes_file_lists_classes_without_samples(tmp_path, images):
    classes = write(tmp_path / "classes.txt", "a 0\nb 1\nc 2\n")
    dataset = load(write(tmp_path / "l.txt", "img/a.jpg 0\n"), classes_file=str(classes))
    assert dataset.classes == ["a", "b", "c"]


def test_label_missing_from_classes_file_names_file_and_line(tmp_path, images):
    classes = write(tmp_path / "classes.txt", "a 0\nb 1\n")
    list_file = write(tmp_path / "l.txt", "img/a.jpg 0\nimg/b.jpg 7\n")
    message = error_message(list_file, config={"classes_file": str(classes)})
    assert f"{list_file}:2: label '7' is not in the classes file {classes}" in message


@pytest.mark.parametrize(
    "classes_text, expected",
    [("a,0\nb,x\n", ":2: class id 'x' is not an integer"),
     ("a 0\na 1\n", ":2: class 'a' is listed twice"),
     ("a 0\nb 0\n", ":2: class id 0 is used twice"), ("", "lists no classes")],
)  # fmt: skip
def test_bad_classes_file(tmp_path, images, classes_text, expected):
    classes = write(tmp_path / "classes.txt", classes_text)
    list_file = write(tmp_path / "l.txt", "img/a.jpg 0\n")
    assert expected in error_message(list_file, config={"classes_file": str(classes)})


def test_list_file_malformed_line(tmp_path, images):
    list_file = write(tmp_path / "l.txt", "img/a.jpg x\nimg/b.jpg\n")
    assert f"{list_file}:2: expected 'path label [coarse_label]', got 1 fields" in error_message(
        list_file
    )


def test_list_file_missing_image(tmp_path, images):
    list_file = write(tmp_path / "l.txt", "img/a.jpg x\n\nimg/nope.jpg y\n")
    assert f"{list_file}:3: image not found: 'img/nope.jpg'" in error_message(list_file)


def test_empty_list_file(tmp_path):
    list_file = write(tmp_path / "l.txt", "# nothing\n")
    assert f"{list_file}: no samples found" in error_message(list_file)


# f. labels from file-name prefixes


def test_file_name_prefix_labels(tmp_path, make_image):
    for name in ("3_0001.jpg", "3_0002.png", "10_a_b.jpg", "2_x.jpg"):
        make_image(tmp_path / name)
    write(tmp_path / "readme.md", "ignored")
    (tmp_path / "empty").mkdir()
    dataset = load(tmp_path)
    assert dataset.classes == ["2", "3", "10"]
    assert counts(dataset) == {"train": {"2": 1, "3": 2, "10": 1}}


def test_file_name_without_prefix_is_an_error(tmp_path, make_image):
    make_image(tmp_path / "3_0001.jpg")
    make_image(tmp_path / "photo.jpg")
    assert f"{tmp_path / 'photo.jpg'}: cannot tell the class from the file name" in error_message(
        tmp_path
    )


# g. dataset.yaml


def test_dataset_yaml_uses_official_splits(tmp_path, images):
    write(tmp_path / "splits" / "train0.txt", "a.jpg 1\nb.jpg 0\nc.jpg 1\n")
    write(tmp_path / "splits" / "test0.txt", "d.jpg 0\ne.jpg 1\n")
    write(tmp_path / "splits" / "classid.txt", "CANDY 0\nJUICE 1\n")
    spec = write(
        tmp_path / "dataset.yaml",
        "root: img\ntrain: splits/train0.txt\ntest: splits/test0.txt\n"
        "classes: splits/classid.txt\n",
    )
    dataset = load_dataset(spec, DataConfig(val_fraction=0.34))
    assert dataset.classes == ["CANDY", "JUICE"]
    assert list(dataset.splits) == ["train", "val", "test"]
    assert counts(dataset)["test"] == {"CANDY": 1, "JUICE": 1}
    assert dataset.carved["val"]["from"] == "train"
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 3


def test_dataset_yaml_with_class_list_and_mixed_sources(tmp_path, make_image):
    make_image(tmp_path / "data" / "train" / "bag" / "1.jpg")
    make_image(tmp_path / "data" / "train" / "shoe" / "1.jpg")
    pixel_csv(tmp_path / "data" / "val.csv", ["0,1,2,3,4"])
    spec = write(
        tmp_path / "conf" / "d.yml",
        "train: ../data/train\nval: ../data/val.csv\nclasses: [shoe, bag]\n",
    )
    dataset = load(spec)
    assert dataset.classes == ["shoe", "bag"]
    assert [s.label for s in dataset.splits["val"]] == ["shoe"]


@pytest.mark.parametrize(
    "text, expected",
    [("train: a\nvalid: b\n", "unknown key 'valid'; allowed keys: root, train, val, test, classes"),
     ("test: a\n", "no 'train' source given"), ("train: nope.txt\n", "train: not found"),
     ("- a\n", "expected a mapping")],
)  # fmt: skip
def test_bad_dataset_yaml(tmp_path, text, expected):
    spec = write(tmp_path / "dataset.yaml", text)
    message = error_message(spec)
    assert str(spec) in message and expected in message


# coarse map, exclude


@pytest.mark.parametrize(
    "map_text",
    [
        "cat animal\ndog animal\n",
        "fine,coarse\ncat,animal\ndog,animal\n",
        "cat,animal\ndog,animal\n",
    ],
)
def test_coarse_map_file(class_folders, tmp_path, map_text):
    coarse_map = write(tmp_path / "coarse.txt", map_text)
    dataset = load(class_folders, coarse_map=str(coarse_map))
    assert dataset.coarse_of == {"cat": "animal", "dog": "animal"}
    assert {s.coarse for s in dataset.splits["train"]} == {"animal"}


def test_coarse_map_conflicts(class_folders, tmp_path, images):
    coarse_map = write(tmp_path / "coarse.txt", "cat animal\ncat pet\n")
    message = error_message(class_folders, config={"coarse_map": str(coarse_map)})
    assert f"{coarse_map}:2: class 'cat' is mapped to 'pet' here but to 'animal'" in message

    coarse_map = write(tmp_path / "coarse2.txt", "sneaker shoes\n")
    list_file = write(tmp_path / "l.txt", "img/a.jpg sneaker boots\n")
    message = error_message(list_file, config={"coarse_map": str(coarse_map)})
    expected = f"class 'sneaker' has coarse class 'boots' here but 'shoes' at {coarse_map}:1"
    assert f"{list_file}:1: {expected}" in message


@pytest.mark.parametrize(
    "exclude_text",
    ["cat/c1.jpg\ndog/d1.jpg\nnot/there.jpg\n", "path,reason\ncat/c1.jpg,dup\ndog/d1.jpg,noise\n"],
)
def test_exclude(class_folders, tmp_path, exclude_text):
    exclude = write(tmp_path / "exclude.csv", exclude_text)
    dataset = load(class_folders, exclude=str(exclude))
    assert counts(dataset) == {"train": {"cat": 2, "dog": 1}}
    assert dataset.carved["excluded"] == {"count": 2, "file": str(exclude)}


def test_exclude_absolute_paths_and_pixel_rows(tmp_path):
    csv_file = pixel_csv(tmp_path / "p.csv", ["1,0,0,0,0", "2,0,0,0,0", "1,0,0,0,0"])
    exclude = write(tmp_path / "ex.txt", f"{csv_file}#row=2\np.csv#row=3\n")
    dataset = load(csv_file, exclude=str(exclude))
    assert [s.path for s in dataset.splits["train"]] == [f"{csv_file}#row=1"]


# carving, holdout, need_test


@pytest.fixture
def train_and_validation(tmp_path, make_image) -> Path:
    for label in ("laptop", "phone"):
        for i in range(10):
            make_image(tmp_path / "train" / label / f"{i:02d}.jpg")
        for i in range(3):
            make_image(tmp_path / "validation" / label / f"{i}.jpg")
    return tmp_path


def test_val_is_carved_from_train_and_recorded(class_folders):
    dataset = load_dataset(class_folders, DataConfig(val_fraction=0.5, split_seed=3))
    assert counts(dataset) == {"train": {"cat": 1, "dog": 1}, "val": {"cat": 2, "dog": 1}}
    record = dataset.carved["val"]
    assert record == {
        "from": "train",
        "fraction": 0.5,
        "seed": 3,
        "paths": sorted(s.path for s in dataset.splits["val"]),
    }
    again = load_dataset(class_folders, DataConfig(val_fraction=0.5, split_seed=3))
    assert again.carved["val"]["paths"] == record["paths"]


def test_need_test_carves_test_before_val(train_and_validation):
    dataset = load_dataset(train_and_validation, DataConfig(test_fraction=0.2), need_test=True)
    assert list(dataset.splits) == ["train", "val", "test"]
    assert counts(dataset)["test"] == {"laptop": 2, "phone": 2}
    assert counts(dataset)["val"] == {"laptop": 3, "phone": 3}
    assert "val" not in dataset.carved and dataset.carved["test"]["from"] == "train"


@pytest.mark.parametrize("holdout", ["validation", "val"])
def test_holdout_is_reported_and_val_carved_from_train(train_and_validation, holdout):
    dataset = load_dataset(train_and_validation, DataConfig(holdout=holdout, val_fraction=0.2))
    assert list(dataset.splits) == ["train", "val", "validation"]
    assert counts(dataset) == {
        "train": {"laptop": 8, "phone": 8},
        "val": {"laptop": 2, "phone": 2},
        "validation": {"laptop": 3, "phone": 3},
    }  # fmt: skip


def test_holdout_of_a_missing_split(train_and_validation):
    message = error_message(train_and_validation, config={"holdout": "test"})
    assert "holdout split 'test' does not exist; the dataset has: train, validation" in message


# missing and empty inputs


def test_missing_data_path(tmp_path):
    assert f"dataset not found: {tmp_path / 'nope'}" in error_message(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "notes.txt", "no images")
    assert f"no images found in {tmp_path}" in error_message(tmp_path)


def test_empty_class_folder_is_named(class_folders):
    (class_folders / "fish").mkdir()
    assert f"class folder {class_folders / 'fish'} has no images" in error_message(class_folders)


def test_loose_images_beside_class_folders(class_folders, make_image):
    make_image(class_folders / "stray.jpg")
    assert "stray.jpg" in error_message(class_folders)


def test_unknown_file_type(tmp_path):
    assert "not a dataset" in error_message(write(tmp_path / "data.json", "{}"))


# the real datasets in ../shared/datasets


def files_per_class(folder: Path) -> dict[str, int]:
    return {
        d.name: sum(
            1
            for f in d.rglob("*")
            if f.is_file() and is_image_file(f) and not f.name.startswith(".")
        )
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }


@pytest.mark.shared
def test_shared_avito(shared_datasets):
    root = shared_datasets / "avito"
    dataset = load(root)
    assert {name: len(s) for name, s in dataset.splits.items()} == {"train": 3421, "val": 855}
    assert counts(dataset) == {
        "train": files_per_class(root / "train"),
        "val": files_per_class(root / "validation"),
    }
    held = load_dataset(root, DataConfig(holdout="validation"))
    assert list(held.splits) == ["train", "val", "validation"]
    assert len(held.splits["train"]) + len(held.splits["val"]) == 3421


@pytest.mark.shared
def test_shared_clothing_small(shared_datasets):
    root = shared_datasets / "clothing-small"
    dataset = load(root)
    assert {name: len(s) for name, s in dataset.splits.items()} == {
        "train": 3068,
        "val": 341,
        "test": 372,
    }
    assert len(dataset.classes) == 10
    assert counts(dataset) == {
        "train": files_per_class(root / "train"),
        "val": files_per_class(root / "validation"),
        "test": files_per_class(root / "test"),
    }


@pytest.mark.shared
def test_shared_fashion_mnist_test(shared_datasets):
    csv_file = shared_datasets / "fashion-mnist" / "fashion-mnist_test.csv.gz"
    dataset = load(csv_file)
    with gzip.open(csv_file, "rt") as f:
        next(f)
        expected = Counter(line.split(",", 1)[0] for line in f if line.strip())
    assert len(dataset.splits["train"]) == 10_000
    assert dataset.classes == [str(i) for i in range(10)]
    assert counts(dataset)["train"] == dict(expected)
    assert dataset.splits["train"][0].pixels.shape == (28, 28)


@pytest.mark.shared
def test_shared_freiburg_split0(shared_datasets):
    splits_folder = shared_datasets / "freiburg-groceries" / "splits"

    def lines_per_class(name: str) -> dict[str, int]:
        text = (splits_folder / name).read_text()
        return dict(
            Counter(re.split(r"[/\s]", line)[0] for line in text.splitlines() if line.strip())
        )

    dataset = load(REPO_ROOT / "examples" / "freiburg-split0.yaml")
    assert len(dataset.classes) == 25
    assert dataset.classes[:3] == ["CANDY", "JUICE", "VINEGAR"]
    assert counts(dataset) == {
        "train": lines_per_class("train0.txt"),
        "test": lines_per_class("test0.txt"),
    }
    assert sum(len(s) for s in dataset.splits.values()) == 4947
