"""One predictor, two backends: run folders and .onnx files alone, identical preprocessing, clear errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from vitrina import api
from vitrina.config import resolve
from vitrina.data.images import decode
from vitrina.description import Thresholds
from vitrina.errors import ImageError, ModelError
from vitrina.export.loading import load_predictor
from vitrina.inference.predictor import Predictor

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"
TEST_IMAGES = sorted((DEMO / "test").glob("*/*.jpg"))[::4]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch cnn1 run at 32 px on the demo photos."""
    from vitrina import api

    settings = {
        "train.mode": "scratch", "model.name": "cnn1", "model.input_size": 32, "train.epochs": 2,
        "train.patience": 0, "train.workers": 1, "train.cache_dir": str(tmp_path_factory.getbasetemp() / "vitrina-cache"),
    }
    out = tmp_path_factory.mktemp("predictor") / "run"
    return api.train(DEMO, resolve(overrides=settings), out=out, progress=False, log=lambda _: None).run_dir


@pytest.fixture(scope="module")
def onnx_alone(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's auto-exported model.onnx, copied alone into another folder."""
    load_predictor(run_dir)
    copy = tmp_path_factory.mktemp("elsewhere") / "shop-classifier.onnx"
    shutil.copy(run_dir / "model.onnx", copy)
    return copy


def test_auto_backend_exports_once_and_reuses_the_file(run_dir: Path, onnx_alone: Path) -> None:
    first = run_dir / "model.onnx"
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    predictor = load_predictor(run_dir)
    assert predictor.backend_name == "onnx"
    assert first.stat().st_mtime_ns == stamp, "a second load must reuse the exported file"


def test_onnx_file_alone_describes_itself(run_dir: Path, onnx_alone: Path) -> None:
    meta = json.loads((run_dir / "model.json").read_text())
    predictor = load_predictor(onnx_alone)
    assert predictor.backend_name == "onnx"
    assert predictor.classes == meta["classes"]
    assert predictor.description.weights_digest == meta["weights_digest"]
    assert predictor.preprocess.to_dict() == meta["preprocess"]


def test_onnx_and_torch_backends_agree(run_dir: Path, onnx_alone: Path) -> None:
    fp32 = next(path for path in (run_dir / "model.fp32.onnx", run_dir / "model.onnx") if path.is_file())  # the export chose one
    assert load_predictor(fp32).precision == "fp32"
    onnx_probs, onnx_errors = load_predictor(fp32).predict_paths(TEST_IMAGES)
    torch_probs, torch_errors = load_predictor(run_dir, backend="torch").predict_paths(TEST_IMAGES)
    assert onnx_errors == torch_errors == [None] * len(TEST_IMAGES)
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert (onnx_probs.argmax(1) == torch_probs.argmax(1)).all()
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, rtol=1e-5)


def test_images_and_arrays_get_the_same_preprocessing_as_files(onnx_alone: Path) -> None:
    predictor = load_predictor(onnx_alone)
    paths = TEST_IMAGES[:5]
    from_files, _ = predictor.predict_paths(paths)
    decoded = [decode(p, draft_size=predictor.preprocess.draft_size()) for p in paths]  # as predict_paths decodes
    np.testing.assert_allclose(predictor.predict_images(decoded), from_files, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_images([np.asarray(img) for img in decoded]), from_files, atol=1e-6)
    resized = np.stack([predictor.prepare(img) for img in decoded])
    assert resized.shape == (5, 32, 32, 3) and resized.dtype == np.uint8
    np.testing.assert_allclose(predictor.predict_arrays(resized), from_files, atol=1e-6)


def test_unreadable_paths_give_reasons_and_nan_rows(onnx_alone: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    probs, errors = load_predictor(onnx_alone).predict_paths([TEST_IMAGES[0], bad, tmp_path / "gone.jpg"])
    assert errors[0] is None and "not an image" in errors[1] and "not found" in errors[2]
    assert np.isfinite(probs[0]).all() and np.isnan(probs[1:]).all()
    with pytest.raises(ImageError):
        load_predictor(onnx_alone).prepare(np.zeros((4, 4), dtype=np.float32))


def test_the_uncertain_flag_follows_the_models_thresholds(onnx_alone: Path) -> None:
    predictor = load_predictor(onnx_alone)
    probs = np.asarray([[0.1, 0.7, 0.2] + [0.0] * 7, [0.3, 0.25, 0.45] + [0.0] * 7], dtype=np.float32)
    without = predictor.description.with_changes(thresholds=None, unknown=None)
    assert Predictor(predictor.backend, without, "x").rule().uncertain(probs) is None
    sure = Predictor(predictor.backend, without.with_changes(thresholds=Thresholds(confidence=0.6)), "x")
    assert sure.rule().uncertain(probs).tolist() == [False, True]


def test_damaged_or_foreign_onnx_files_are_clear_errors(onnx_alone: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_alone.read_bytes()[:5000])
    with pytest.raises(ModelError, match="corrupt.onnx"):
        load_predictor(corrupt)
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    with pytest.raises(ModelError, match="text.onnx: not a readable ONNX model"):
        load_predictor(text)
    foreign = tmp_path / "foreign.onnx"
    graph = onnx.load(str(onnx_alone))
    del graph.metadata_props[:]
    onnx.save(graph, str(foreign))
    with pytest.raises(ModelError, match="foreign.onnx: an ONNX model without vitrina metadata"):
        load_predictor(foreign)
    with pytest.raises(ModelError, match="model not found"):
        load_predictor(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="needs a run folder"):
        load_predictor(onnx_alone, backend="torch")


def test_run_without_its_images_falls_back_to_torch(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.onnx", "tensorboard"))
    (copy / "splits.json").write_text(json.dumps({"source": str(tmp_path / "moved"), "splits": {"val": [str(tmp_path / "moved" / "a.jpg")]}}))
    messages: list[str] = []
    predictor = load_predictor(copy, log=messages.append)
    assert predictor.backend_name == "torch"
    assert any("PyTorch instead of ONNX Runtime" in m for m in messages)
    with pytest.raises(ModelError, match="no longer readable"):
        load_predictor(copy, backend="onnx")


def test_predict_api_accepts_a_loaded_predictor(onnx_alone: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    Image.open(TEST_IMAGES[0]).save(image)
    predictor = load_predictor(onnx_alone)
    summary = api.predict(predictor, [image], out=tmp_path / "out.csv", top_k=2, progress=False)
    assert (summary.n_predicted, summary.n_errors, summary.backend, summary.precision) == (1, 0, "onnx", predictor.precision)


def test_a_damaged_onnx_file_is_refused_with_a_clear_error(onnx_alone: Path, tmp_path: Path) -> None:
    """Bytes of the weights overwritten: the file still loads in ONNX Runtime, but its digest says no."""
    import onnx

    weights = max(onnx.load(str(onnx_alone)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(onnx_alone.read_bytes())
    start = data.find(weights) + len(weights) // 4
    data[start : start + len(weights) // 2] = bytes(b ^ 0x5A for b in data[start : start + len(weights) // 2])
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        load_predictor(damaged)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_alone.read_bytes()[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_predictor(truncated)


def test_metadata_that_contradicts_the_graph_is_a_clear_error(onnx_alone: Path, tmp_path: Path) -> None:
    import onnx

    from vitrina.export.graph import read_description, save_onnx

    description = read_description(onnx_alone)
    wrong_size = tmp_path / "size.onnx"
    save_onnx(onnx.load(str(onnx_alone)), wrong_size, description.with_changes(preprocess=description.preprocess.with_overrides(input_size=64)))
    with pytest.raises(ModelError, match="takes input"):
        load_predictor(wrong_size)
    wrong_classes = tmp_path / "classes.onnx"
    save_onnx(onnx.load(str(onnx_alone)), wrong_classes, description.with_changes(classes=description.classes + ("extra",)))
    with pytest.raises(ModelError, match="class probabilities"):
        load_predictor(wrong_classes)


def test_a_damaged_weights_file_in_a_run_folder_is_refused(run_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("*.onnx")))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5000:-4000] = bytes(1000)
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        load_predictor(copy, backend="torch")
