"""`vitrina evaluate`: the evaluation folder, agreement with training, coarse labels, TTA, clear errors."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from vitrina import api
from vitrina.cli import main
from vitrina.errors import DataError, ModelError

STABLE_KEYS = ("split", "accuracy", "macro_f1", "weighted_f1", "ece", "per_class", "n_images", "n_skipped")


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_evaluate_writes_a_new_folder_inside_the_run_and_touches_nothing_else(shapes_run: Path, shapes: Path) -> None:
    before = file_digests(shapes_run)
    first = api.evaluate(shapes_run, shapes, tta=True, progress=False)
    second = api.evaluate(shapes_run, shapes, progress=False)
    try:
        assert first.out_dir == shapes_run / "eval-test"
        assert second.out_dir == shapes_run / "eval-test-2"
        after = file_digests(shapes_run)
        assert {k: v for k, v in after.items() if not k.startswith("eval-test")} == before
        for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "confusion_matrix_normalized.png",
                     "reliability.png", "mistakes.html", "report.html"):
            assert (first.out_dir / name).is_file(), name
        metrics = json.loads((first.out_dir / "metrics.json").read_text())
        for key in STABLE_KEYS:
            assert key in metrics, key
        assert "top3_accuracy" not in metrics  # three classes: top-3 says nothing
        assert metrics["split"] == "test" and metrics["n_skipped"] == 0
        assert set(metrics["per_class"]) == {"bar", "disc", "square"}
        assert metrics["tta"]["accuracy"] >= 0.0 and "tta" not in json.loads((second.out_dir / "metrics.json").read_text())
        trained = json.loads((shapes_run / "metrics_test.json").read_text())
        assert metrics["accuracy"] == pytest.approx(trained["accuracy"])  # same images, same model, same code
        assert metrics["macro_f1"] == pytest.approx(trained["macro_f1"])
    finally:
        shutil.rmtree(first.out_dir)
        shutil.rmtree(second.out_dir)


def test_validation_split_is_carved_as_in_training(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    result = api.evaluate(shapes_run, shapes, split="val", out=tmp_path / "val", progress=False)
    trained = json.loads((shapes_run / "metrics_val.json").read_text())
    assert result.metrics["n_images"] == trained["n_images"]
    assert result.metrics["accuracy"] == pytest.approx(trained["accuracy"])


def test_coarse_accuracy_from_a_coarse_map(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    coarse_map = tmp_path / "coarse.txt"
    coarse_map.write_text("disc round\nbar angular\nsquare angular\n")
    result = api.evaluate(shapes_run, shapes, out=tmp_path / "eval", overrides={"data.coarse_map": str(coarse_map)}, progress=False)
    assert result.metrics["coarse_accuracy"] >= result.metrics["accuracy"]
    plain = api.evaluate(shapes_run, shapes, out=tmp_path / "plain", progress=False)
    assert "coarse_accuracy" not in plain.metrics


def test_classes_the_model_does_not_know_are_a_clear_error(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "test" / "star").mkdir()
    shutil.copy(next((data / "test" / "disc").iterdir()), data / "test" / "star" / "star1.jpg")
    with pytest.raises(DataError, match="does not know: star"):
        api.evaluate(shapes_run, data, out=tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval").exists()


def test_model_classes_missing_from_the_data_are_fine(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    shutil.rmtree(data / "test" / "bar")
    result = api.evaluate(shapes_run, data, out=tmp_path / "eval", progress=False)
    assert result.metrics["n_images"] == 12
    assert result.metrics["per_class"]["bar"]["support"] == 0


def test_a_model_of_another_kind_is_a_clear_error(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07onnx")
    with pytest.raises(ModelError, match="not a model vitrina evaluates"):
        api.evaluate(onnx, shapes, progress=False)
    with pytest.raises(ModelError, match="not a run folder"):
        api.evaluate(shapes, shapes, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.json").write_text(json.dumps({"format": "keras-h5", "classes": ["a"]}))
    (foreign / "model.safetensors").write_bytes((shapes_run / "model.safetensors").read_bytes())
    with pytest.raises(ModelError, match="not a vitrina model"):
        api.evaluate(foreign / "model.safetensors", shapes, progress=False)
    with pytest.raises(ModelError, match="model not found"):
        api.evaluate(tmp_path / "nowhere", shapes, progress=False)


def test_cli_evaluate_prints_the_figures_and_errors_cleanly(shapes_run: Path, shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(shapes_run / "model.safetensors"), str(shapes), "--out", str(tmp_path / "eval"), "--tta", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "test-time augmentation" in out and str(tmp_path / "eval") in out
    assert main(["evaluate", str(shapes_run), str(shapes), "--split", "holdout", "--quiet"]) == 2
    assert "has no split 'holdout'" in capsys.readouterr().err


def test_other_data_without_splits_is_evaluated_whole(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    result = api.evaluate(shapes_run, shapes / "test", out=tmp_path / "eval", progress=False)
    assert (result.metrics["split"], result.metrics["n_images"]) == ("train", 18)  # a single source is read as one split


def test_evaluate_and_predict_flag_the_same_photos_uncertain_and_unknown(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    """One decision rule: the flags in an evaluation's predictions.csv are those `vitrina predict` writes."""
    import csv

    result = api.evaluate(shapes_run, shapes, out=tmp_path / "eval", progress=False)
    decisions = result.metrics["decisions"]
    assert 0.0 <= decisions["uncertain_share"] <= 1.0 and "unknown_share" in decisions
    with open(result.out_dir / "predictions.csv", newline="") as fh:
        evaluated = {row["path"]: row for row in csv.DictReader(fh)}
    api.predict(shapes_run, [shapes / "test"], out=tmp_path / "p.csv", backend="torch", progress=False, workers=0)
    with open(tmp_path / "p.csv", newline="") as fh:
        predicted = {row["path"]: row for row in csv.DictReader(fh)}
    assert predicted.keys() == evaluated.keys()
    for path, row in predicted.items():
        assert (row["uncertain"], row["unknown"]) == (evaluated[path]["uncertain"], evaluated[path]["unknown"]), path
    share = sum(row["uncertain"] == "true" for row in predicted.values()) / len(predicted)
    assert decisions["uncertain_share"] == pytest.approx(share)
