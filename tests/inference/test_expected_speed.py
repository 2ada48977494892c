"""The exported model's prediction speed, measured before training."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers import make_shapes_dataset
from vitrina.data.samples import Sample
from vitrina.inference.expected_speed import PredictionSpeed, measure_prediction_speed
from vitrina.models.registry import create_model
from vitrina.preprocess import Preprocess


def test_a_small_network_and_real_photos_are_timed(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=4, size=48)
    photos = sorted(data.rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    samples = [Sample(str(tmp_path / "broken.jpg"), "x")] + [Sample(str(p), "x") for p in photos]
    preprocess = Preprocess(input_size=32)
    images = np.stack([np.full((32, 32, 3), i * 20, dtype=np.uint8) for i in range(6)])
    speed = measure_prediction_speed(create_model("cnn1", num_classes=3, input_size=32), preprocess, images, samples, cores=2)
    assert speed.network_ms > 0 and speed.preprocess_ms > 0  # the broken file is passed over
    assert speed.images_per_second == 2000.0 / (speed.network_ms + speed.preprocess_ms)
    assert "images/s" in speed.describe()


def test_the_rate_scales_with_the_cores() -> None:
    assert PredictionSpeed(6.0, 2.0, 2).images_per_second == 250.0
    assert PredictionSpeed(6.0, 2.0, 4).images_per_second == 500.0
