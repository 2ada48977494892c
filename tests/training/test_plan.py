"""The recommended setting that `vitrina train DATA` fills in, by kind of data."""
from __future__ import annotations

from pathlib import Path

import pytest

from vitrina.config import resolve
from vitrina.data.sources import load_dataset
from vitrina.training.plan import RECOMMENDED_AUGMENT, SMALL_GRAYSCALE_REFIT_TAIL, make_plan, planned_refit, with_recommended_settings

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"


def test_small_grayscale_data_gets_the_fashion_cnn_with_a_flip_only(pixel_csv: Path) -> None:
    dataset = load_dataset(pixel_csv, resolve().data, carve_val=True)
    config = with_recommended_settings(dataset, resolve())
    assert (config.augment.rotation, config.augment.shift, config.augment.shear, config.augment.zoom, config.augment.color_jitter) == (0, 0, 0, 0, 0)
    assert config.augment.hflip == 0.5 and config.train.label_smoothing == 0.1
    plan = make_plan(dataset, config)
    assert (plan.mode, plan.model, plan.preprocess.channels, plan.preprocess.input_size) == ("scratch", "fmnist_cnn", 1, 28)
    assert (plan.epochs, plan.weight_decay, plan.lr) == (20, 0.05, 3e-3)
    photos = load_dataset(DEMO, resolve().data, carve_val=True)
    scratch = make_plan(photos, with_recommended_settings(photos, resolve(overrides={"train.mode": "scratch"})))
    assert scratch.weight_decay == 5e-4, "the small-grayscale decay stays with such data"
    sgd = make_plan(dataset, with_recommended_settings(dataset, resolve(overrides={"train.optimizer": "sgd"})))
    assert sgd.weight_decay == 5e-4, "0.05 is a decoupled (AdamW) decay: added to the gradient it would be far too strong"


def test_photos_get_the_photo_augmentation_and_explicit_settings_win() -> None:
    dataset = load_dataset(DEMO, resolve().data, carve_val=True)
    config = with_recommended_settings(dataset, resolve())
    for name, value in RECOMMENDED_AUGMENT["photo"].items():
        assert getattr(config.augment, name) == value
    assert config.train.label_smoothing == 0.1
    mine = with_recommended_settings(dataset, resolve(overrides={"augment.rotation": 0, "train.label_smoothing": 0.05}))
    assert mine.augment.rotation == 0 and mine.augment.shift == RECOMMENDED_AUGMENT["photo"]["shift"]
    assert mine.train.label_smoothing == 0.05
    assert resolve().augment.rotation is None, "the defaults themselves stay unresolved"


def test_transfer_learning_uses_a_larger_input_unless_set() -> None:
    from vitrina.training.plan import transfer_input_size

    assert transfer_input_size(224) == 288 and transfer_input_size(260) == 320 and transfer_input_size(28) == 32
    dataset = load_dataset(DEMO, resolve().data, carve_val=True)
    plan = make_plan(dataset, resolve(overrides={"train.mode": "bottleneck"}))
    assert (plan.model, plan.preprocess.input_size, plan.head, plan.feature_copies) == ("efficientnet_lite0", 288, "mlp_ensemble", 0)
    assert make_plan(dataset, resolve(overrides={"train.mode": "finetune"})).preprocess.input_size == 288
    assert make_plan(dataset, resolve(overrides={"train.mode": "scratch", "model.name": "cnn3"})).preprocess.input_size == 128
    assert make_plan(dataset, resolve(overrides={"train.mode": "bottleneck", "model.input_size": 224})).preprocess.input_size == 224


def test_mostly_non_square_photos_are_letterboxed_unless_set(tmp_path: Path, make_image) -> None:
    from vitrina.training.plan import median_aspect

    demo = load_dataset(DEMO, resolve().data, carve_val=True)  # mostly 3:4 product photos
    assert median_aspect(demo) > 1.15
    assert make_plan(demo, resolve()).preprocess.resize == "letterbox"
    assert make_plan(demo, resolve(overrides={"model.resize": "center_crop"})).preprocess.resize == "center_crop"

    for label, color in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        for i in range(6):
            make_image(tmp_path / "square" / label / f"{i}.png", color, size=(40, 40) if i else (60, 40))
    (tmp_path / "square" / "red" / "broken.jpg").write_bytes(b"not an image")  # skipped, not fatal
    square = load_dataset(tmp_path / "square", resolve().data, carve_val=True)
    assert median_aspect(square) == 1.0
    assert make_plan(square, resolve()).preprocess.resize == "center_crop"


@pytest.mark.parametrize("overrides, small_gray_scratch, refit", [
    ({}, True, SMALL_GRAYSCALE_REFIT_TAIL),  # recommended: the chosen network learns on for its last half
    ({}, False, None),  # photos: no refit unless asked
    ({"train.refit": True}, False, 0.0),  # asked on photos: a whole new network
    ({"train.refit": True, "train.refit_tail": 0.25}, False, 0.25),
    ({"train.refit": False}, True, None),
    ({"train.refit_tail": 1.0}, True, 1.0),
    ({"train.refit_tail": 0.25}, False, None),  # a tail alone on photos: no refit (the trainer refuses it)
    ({"train.refit": True}, True, 0.0),  # asked for: a whole new network, as without the recommendation
    ({"train.refit": False, "train.refit_tail": 0.0}, True, None),  # a config saved before refit and its tail were left open
])
def test_the_refit_is_recommended_for_small_grayscale_images_from_scratch_only(overrides: dict, small_gray_scratch: bool,
                                                                               refit: float | None) -> None:
    assert planned_refit(resolve(overrides=overrides), small_gray_scratch) == refit


def test_the_plan_carries_the_recommended_refit(pixel_csv: Path) -> None:
    dataset = load_dataset(pixel_csv, resolve().data, carve_val=True)
    assert make_plan(dataset, with_recommended_settings(dataset, resolve())).refit == SMALL_GRAYSCALE_REFIT_TAIL
    photos = load_dataset(DEMO, resolve().data, carve_val=True)
    assert make_plan(photos, with_recommended_settings(photos, resolve())).refit is None
