from __future__ import annotations

from collections import Counter

import pytest

from vitrina.data.samples import Sample
from vitrina.data.splits import assign_roles, carve, carve_by_group, complete_splits, held_split_name, restore_carve
from vitrina.errors import ConfigError, DataError


def samples_per_class(counts: dict[str, int]) -> list[Sample]:
    return [
        Sample(path=f"/d/{label}/{i:03d}.jpg", label=label)
        for label, n in counts.items()
        for i in range(n)
    ]


def paths(samples: list[Sample]) -> set[str]:
    return {s.path for s in samples}


def test_carve_is_stratified_per_class():
    samples = samples_per_class({"a": 20, "b": 10, "c": 4})
    kept, carved = carve(samples, 0.25, seed=0)
    assert Counter(s.label for s in carved) == {"a": 5, "b": 3, "c": 1}
    assert paths(kept) | paths(carved) == paths(samples)
    assert not paths(kept) & paths(carved)


def test_carve_keeps_input_order():
    samples = samples_per_class({"a": 10, "b": 10})
    kept, carved = carve(samples, 0.3, seed=1)
    assert kept == [s for s in samples if s in kept]
    assert carved == [s for s in samples if s in carved]


def test_carve_is_deterministic_and_ignores_input_order():
    samples = samples_per_class({"a": 30, "b": 12})
    _, first = carve(samples, 0.2, seed=7)
    _, again = carve(list(reversed(samples)), 0.2, seed=7)
    _, other_seed = carve(samples, 0.2, seed=8)
    assert paths(first) == paths(again)
    assert paths(first) != paths(other_seed)


def test_carve_does_not_depend_on_other_classes():
    _, alone = carve(samples_per_class({"a": 30}), 0.2, seed=3)
    _, together = carve(samples_per_class({"a": 30, "b": 9}), 0.2, seed=3)
    assert paths(alone) == {s.path for s in together if s.label == "a"}


def test_carve_leaves_every_class_at_least_one_sample():
    kept, carved = carve(samples_per_class({"one": 1, "two": 2}), 0.9, seed=0)
    assert Counter(s.label for s in kept) == {"one": 1, "two": 1}
    assert [s.label for s in carved] == ["two"]


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_carve_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        carve(samples_per_class({"a": 4}), fraction, seed=0)


def test_assign_roles_maps_source_names():
    splits = {"train": [], "validation": [], "test": []}
    assert list(assign_roles(splits)) == ["train", "val", "test"]


@pytest.mark.parametrize("holdout", ["validation", "val"])
def test_holdout_keeps_the_source_name(holdout):
    splits = {"train": [], "validation": [], "test": []}
    assert list(assign_roles(splits, holdout)) == ["train", "validation", "test"]


def test_holdout_of_a_split_named_val_is_reported_as_validation():
    assert list(assign_roles({"train": [], "val": []}, "val")) == ["train", "validation"]


@pytest.mark.parametrize("holdout, sources", [
    ("val", ("train", "val")),
    ("validation", ("train", "val")),
    ("val", ("train", "validation", "test")),
    ("validation", ("train", "validation", "test")),
])
def test_the_held_split_goes_by_the_name_it_is_set_aside_under(holdout, sources):
    splits = assign_roles({name: [] for name in sources}, holdout)
    assert held_split_name(holdout) == "validation" and "validation" in splits
    assert held_split_name("test") == "test" and held_split_name(None) is None


def test_holdout_of_a_missing_split_lists_the_splits():
    with pytest.raises(
        DataError, match="'test' does not exist; the dataset has: train, validation"
    ):
        assign_roles({"train": [], "validation": []}, "test")


def test_holdout_cannot_be_train():
    with pytest.raises(DataError, match="training split"):
        assign_roles({"train": []}, "train")


def test_complete_splits_carves_test_then_val_and_records_them():
    train = samples_per_class({"a": 20, "b": 20})
    splits, carved = complete_splits(
        {"train": train}, val_fraction=0.25, test_fraction=0.1, seed=5, need_test=True
    )
    assert list(splits) == ["train", "val", "test"]
    assert [len(splits[n]) for n in ("train", "val", "test")] == [26, 10, 4]
    assert carved["test"] == {
        "from": "train",
        "fraction": 0.1,
        "seed": 5,
        "paths": sorted(paths(splits["test"])),
    }
    assert carved["val"]["paths"] == sorted(paths(splits["val"]))
    assert not paths(splits["val"]) & paths(splits["test"])


def test_complete_splits_keeps_given_splits_and_orders_them():
    given = {"validation": samples_per_class({"a": 2}), "train": samples_per_class({"a": 10})}
    splits, carved = complete_splits(given, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert list(splits) == ["train", "val", "validation"]
    assert list(carved) == ["val"]


def test_complete_splits_carves_nothing_when_not_asked_or_fraction_zero():
    train = samples_per_class({"a": 10})
    splits, carved = complete_splits(
        {"train": train}, val_fraction=0.2, test_fraction=0.2, seed=0, carve_val=False
    )
    assert list(splits) == ["train"] and carved == {}
    splits, carved = complete_splits({"train": train}, val_fraction=0.0, test_fraction=0.2, seed=0)
    assert list(splits) == ["train"] and carved == {}


def test_carve_by_group_keeps_groups_whole_and_stays_stratified():
    samples = samples_per_class({"a": 40, "b": 20})
    # Bursts of 4 in class a (positions 0-3, 4-7, ...), singletons in b.
    groups = [i // 4 for i in range(40)] + list(range(100, 120))
    kept, carved = carve_by_group(samples, groups, 0.2, seed=3)
    group_of = dict(zip((s.path for s in samples), groups))
    carved_groups = {group_of[s.path] for s in carved}
    assert not carved_groups & {group_of[s.path] for s in kept}
    assert Counter(s.label for s in carved) == {"a": 8, "b": 4}
    assert paths(kept) | paths(carved) == paths(samples)
    assert carve_by_group(samples, groups, 0.2, seed=3) == (kept, carved)


def test_carve_by_group_leaves_every_class_in_train():
    samples = samples_per_class({"a": 3, "b": 6})
    kept, carved = carve_by_group(samples, [0, 0, 0] + list(range(1, 7)), 0.5, seed=0)
    assert {s.label for s in kept} == {"a", "b"}
    assert Counter(s.label for s in carved) == {"a": 2, "b": 3}


def test_restore_carve_moves_the_recorded_files():
    samples = samples_per_class({"a": 4})
    splits = restore_carve({"train": samples, "test": samples[:1]}, [samples[2].path])
    assert [s.path for s in splits["val"]] == [samples[2].path]
    assert len(splits["train"]) == 3 and splits["test"] == samples[:1]


def test_a_class_that_is_one_group_is_carved_photo_by_photo_and_named():
    samples = samples_per_class({"a": 10, "b": 10})
    fallback: list[str] = []
    kept, carved = carve_by_group(samples, [0] * 10 + list(range(1, 11)), 0.2, seed=0, photo_by_photo=fallback)
    assert Counter(s.label for s in carved) == {"a": 2, "b": 2}
    assert fallback == ["a"]


def test_restore_carve_matches_through_a_link_and_refuses_missing_files(tmp_path):
    real = tmp_path / "photos"
    real.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (real / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    linked = [Sample(path=str(tmp_path / "link" / n), label="a") for n in ("a.jpg", "b.jpg", "c.jpg")]
    splits = restore_carve({"train": linked}, [str(real / "b.jpg")])
    assert [s.path for s in splits["val"]] == [str(tmp_path / "link" / "b.jpg")]
    with pytest.raises(DataError, match="1 of the run's 2 validation files"):
        restore_carve({"train": linked}, [str(real / "b.jpg"), str(real / "gone.jpg")])
