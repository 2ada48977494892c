"""ONNX export of real trained runs: parity with PyTorch, self-describing metadata, int8, model card."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vitrina import api
from vitrina.config import resolve
from vitrina.errors import ConfigError, ModelError
from vitrina.export import checks as export_checks
from vitrina.export import graph as export_graph
from vitrina.export import run as export_run
from vitrina.export.run import ExportResult

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"


def quiet(_: str) -> None:
    pass


def train_run(out: Path, cache: Path, **overrides: object) -> Path:
    from vitrina import api

    settings = {"train.workers": 1, "train.cache_dir": str(cache), **overrides}
    return api.train(DEMO, resolve(overrides=settings), out=out, progress=False, log=quiet).run_dir


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportResult, list[str]]:
    """A scratch cnn1 run at 32 px, exported with int8; returns (run, result, log lines)."""
    run = train_run(
        tmp_path_factory.mktemp("cnn") / "run", tmp_path_factory.getbasetemp() / "vitrina-cache",
        **{"train.mode": "scratch", "model.name": "cnn1", "model.input_size": 32, "train.epochs": 3, "train.patience": 0},
    )
    lines: list[str] = []
    result = api.export(run, log=lines.append)
    return run, result, lines


def test_export_writes_onnx_card_and_checks_parity(cnn_export) -> None:
    run, result, lines = cnn_export
    assert result.onnx_path == run / "model.onnx" and result.onnx_path.is_file()
    assert result.card_path == run / "model.md" and result.card_path.is_file()
    assert result.parity["n_images"] > 0
    assert result.parity["max_abs_diff"] <= 1e-4
    assert result.parity["top1_identical"]
    assert any("parity" in line and "max |p_onnx - p_torch|" in line for line in lines)


def test_graph_has_a_dynamic_batch_probabilities_and_the_unknown_score(cnn_export) -> None:
    _, result, _ = cnn_export
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (inp,), outputs = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and [o.name for o in outputs] == ["probabilities", "unknown_score"]
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    for batch in (1, 5):
        probs, scores = session.run(None, {"input": np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)})
        assert probs.shape == (batch, 10) and scores.shape == (batch,)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert export_graph.read_description(result.onnx_path).export.outputs == ("probabilities", "unknown_score")


def test_onnx_files_mark_the_same_photos_unknown_as_pytorch(cnn_export) -> None:
    """The score travels in the graph: fp32 matches PyTorch, int8 stays close (only the bank product is quantised)."""
    from vitrina.export.loading import load_predictor

    run, result, lines = cnn_export
    assert result.parity["score_max_abs_diff"] <= export_checks.SCORE_TOLERANCE
    assert any("max |score_onnx - score_torch|" in line for line in lines)
    photos = sorted((DEMO / "test").rglob("*.jpg"))[:24]
    torch_predictor = load_predictor(run, "torch")
    size = torch_predictor.preprocess.input_size
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]  # unlike any product photo
    images = [torch_predictor.load(p) for p in photos] + noise
    expected_probs, expected = torch_predictor.predict_scored(np.stack(images))
    for path, tolerance in ((result.fp32_path, 1e-3), (result.int8_path, 0.05)):
        predictor = load_predictor(path)
        assert predictor.detects_unknown, path
        _, scores = predictor.predict_scored(np.stack(images))
        np.testing.assert_allclose(scores, expected, atol=tolerance)
        if path == result.fp32_path:
            assert (predictor.rule().unknown(scores) == torch_predictor.rule().unknown(expected)).all()
    quantized = onnx.load(str(result.int8_path)).graph
    score_nodes = [node for node in quantized.node if node.name in set(export_graph._score_only_nodes(quantized))]
    assert {"TopK", "MatMul"} <= {node.op_type for node in score_nodes}, "the score stays a kNN in the int8 file"


def test_metadata_round_trips_labels_preprocessing_and_metrics(cnn_export) -> None:
    run, result, _ = cnn_export
    meta = json.loads((run / "model.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    description = export_graph.read_description(result.onnx_path)
    assert list(description.classes) == meta["classes"]
    assert description.preprocess.to_dict() == meta["preprocess"]
    assert description.model == "cnn1"
    assert description.metrics["accuracy"] == metrics["accuracy"]
    assert description.metrics["per_class"].keys() == metrics["per_class"].keys()
    assert description.export is not None and description.export.vitrina_version
    assert description.export.precision == result.precision and description.export.checks["choice"]["chosen"] == result.precision
    assert description.export.checks["parity"]["max_abs_diff"] <= 1e-4
    assert description.weights_digest == meta["weights_digest"]


def test_int8_export_reports_accuracy_change_and_speed(cnn_export) -> None:
    run, result, lines = cnn_export
    other = run / ("model.fp32.onnx" if result.precision == "int8" else "model.int8.onnx")
    assert {result.int8_path, result.fp32_path} == {run / "model.onnx", other} and other.is_file()
    report = result.int8
    for key in ("fp32_accuracy", "int8_accuracy", "accuracy_change_points", "within_tolerance", "top1_agreement", "fp32_images_per_second", "int8_images_per_second", "calibration_images"):
        assert key in report, key
    assert report["accuracy_change_points"] == pytest.approx((report["int8_accuracy"] - report["fp32_accuracy"]) * 100)
    assert any("int8 on" in line and "points" in line for line in lines)
    quantized = onnx.load(str(result.int8_path))
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    softmaxes = [node for node in quantized.graph.node if node.op_type == "Softmax"]
    assert softmaxes
    for softmax in softmaxes:  # the head's, and the neighbour vote's where the run has one
        consumers = [node.op_type for node in quantized.graph.node if set(node.input) & set(softmax.output)]
        assert "QuantizeLinear" not in consumers, "the probabilities must not be rounded to 8 bits"
    description = export_graph.read_description(result.int8_path)
    assert description.export is not None and description.export.precision == "int8"
    assert description.export.int8["n_images"] == report["n_images"]


def test_model_card_names_use_data_metrics_per_class_and_limits(cnn_export) -> None:
    run, result, _ = cnn_export
    card = result.card_path.read_text()
    for heading in ("## Intended use", "## Data", "## Metrics", "## Export checks", "## Limits"):
        assert heading in card
    for name in json.loads((run / "model.json").read_text())["classes"]:
        assert f"| {name} |" in card
    assert "int8" in card and "points" in card


def test_thresholds_travel_in_the_metadata(cnn_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, result, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "tensorboard"))
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "thresholds": {"confidence": 0.6}}))
    graph = onnx.load(str(result.fp32_path))
    monkeypatch.setattr(export_run, "to_onnx", lambda model, preprocess, scorer=None: graph)  # the graph is unchanged; skip re-exporting
    exported = api.export(copy, out=tmp_path / "out" / "shop.onnx", log=quiet)
    assert exported.onnx_path == tmp_path / "out" / "shop.onnx"
    assert exported.card_path == tmp_path / "out" / "shop.md"
    assert export_graph.read_description(exported.onnx_path).thresholds.confidence == 0.6


def test_a_parity_failure_refuses_the_export(cnn_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, result, _ = cnn_export
    graph = onnx.load(str(result.fp32_path))
    monkeypatch.setattr(export_run, "to_onnx", lambda model, preprocess, scorer=None: graph)
    monkeypatch.setattr(export_run, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ModelError, match="disagrees with PyTorch"):
        api.export(run, out=tmp_path / "bad.onnx", log=quiet)
    assert not (tmp_path / "bad.onnx").exists()


def test_export_of_something_else_than_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a run folder"):
        api.export(tmp_path / "missing", log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a vitrina model"):
        api.export(tmp_path / "empty", log=quiet)


@pytest.mark.slow
def test_efficientnet_bottleneck_run_exports_with_parity(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = train_run(
        tmp_path_factory.mktemp("effnet") / "run", tmp_path_factory.getbasetemp() / "vitrina-cache",
        **{"train.mode": "bottleneck", "model.input_size": 96, "train.epochs": 10},
    )
    lines: list[str] = []
    result = api.export(run, log=lines.append)
    assert result.parity["max_abs_diff"] <= 1e-4 and result.parity["top1_identical"]
    description = export_graph.read_description(result.onnx_path)
    assert description.model == "efficientnet_lite0"
    assert description.preprocess.input_size == 96
    ops = {node.op_type for node in onnx.load(str(result.onnx_path)).graph.node}
    assert "Softmax" in ops and "Conv" in ops


def test_checks_use_the_listed_images_when_the_data_moved(cnn_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, result, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.onnx", "tensorboard"))
    splits = json.loads((copy / "splits.json").read_text())
    (copy / "splits.json").write_text(json.dumps({**splits, "source": str(tmp_path / "moved")}))
    graph = onnx.load(str(result.fp32_path))
    monkeypatch.setattr(export_run, "to_onnx", lambda model, preprocess, scorer=None: graph)
    exported = api.export(copy, log=quiet)
    assert exported.parity["n_images"] == len(splits["splits"]["val"])
    assert "unlabelled" in export_graph.read_description(exported.onnx_path).export.checks["check_images"]
    with pytest.raises(ModelError, match="labelled validation images"):
        api.export(copy, precision="int8", log=quiet)
    with_data = api.export(copy, precision="int8", calibration=DEMO, log=quiet)
    assert with_data.int8["n_images"] > 0


def test_the_export_writes_the_precision_its_tolerance_allows_and_the_other_beside_it(cnn_export, tmp_path: Path) -> None:
    from vitrina.export.loading import load_predictor

    run, result, lines = cnn_export
    change = result.int8["accuracy_change_points"]
    assert result.precision == ("int8" if change >= -0.5 else "fp32") and any(line.startswith("chose ") for line in lines)
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx", "*.md"))
    lenient = api.export(copy, config=resolve(overrides={"export.int8_tolerance": 100}), log=quiet)
    assert lenient.precision == "int8" and lenient.fp32_path == copy / "model.fp32.onnx" and "within" in lenient.choice["reason"]
    assert load_predictor(copy).precision == "int8"  # a run folder predicts with the chosen file
    assert "Precision of this model: int8" in lenient.card_path.read_text()
    strict = api.export(copy, out=copy / "strict.onnx", config=resolve(overrides={"export.int8_tolerance": 0}), log=quiet)
    assert strict.precision == ("int8" if change >= 0 else "fp32")
    forced = api.export(copy, out=copy / "forced.onnx", precision="fp32", log=quiet)
    assert forced.precision == "fp32" and forced.int8_path is None and not (copy / "forced.int8.onnx").exists()
    with pytest.raises(ConfigError, match="int8_tolerance"):
        api.export(copy, config=resolve(overrides={"export.int8_tolerance": -1}), log=quiet)


def test_a_change_of_exactly_the_tolerance_is_within_it() -> None:
    labels = np.zeros(600, dtype=np.int64)
    fp32_top1, int8_top1 = labels.copy(), labels.copy()
    fp32_top1[:56], int8_top1[:59] = 1, 1  # 544 and 541 of 600 right: 3 photos, 0.5 points
    change = export_run.accuracy_change_points(fp32_top1, int8_top1, labels)
    assert change == -0.5 and change >= -export_run.INT8_TOLERANCE_POINTS
    assert export_run.accuracy_change_points(labels, labels, labels) == 0.0


def test_a_run_folder_exported_by_0_1_0_predicts_with_its_int8_file_only_when_it_kept_the_accuracy(cnn_export, tmp_path: Path) -> None:
    from vitrina.export.loading import load_predictor

    run, result, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx"))
    fp32_file, int8_file = copy / "model.onnx", copy / "model.int8.onnx"

    def write(source: Path, target: Path, within: bool | None = None) -> None:  # the metadata 0.1.0 wrote: no choice
        description = export_graph.read_description(source)
        checks = {k: v for k, v in description.export.checks.items() if k != "choice"}
        if within is not None:
            checks["int8"] = {**checks["int8"], "within_tolerance": within}
        precision = "int8" if within is not None else "fp32"
        export_graph.save_onnx(onnx.load(str(source)), target, description.with_changes(export=replace(description.export, precision=precision, checks=checks)))

    write(result.fp32_path, fp32_file)
    for within in (True, False):
        write(result.int8_path, int8_file, within)
        assert load_predictor(copy).precision == ("int8" if within else "fp32")
    write(result.int8_path, int8_file, True)
    weights_time = (copy / "model.safetensors").stat().st_mtime
    os.utime(int8_file, (weights_time - 60, weights_time - 60))  # made from older weights
    assert load_predictor(copy).precision == "fp32"


def test_a_model_with_a_neighbour_vote_exports_and_predicts_the_same_everywhere(cnn_export, tmp_path: Path) -> None:
    """The vote is part of the network: saved with the weights, in the ONNX graph, float in the int8 file."""
    import torch

    from vitrina.export.loading import load_predictor
    from vitrina.models.checkpoint import load_model, save_model
    from vitrina.models.neighbours import NeighbourVote

    run, _, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx"))
    model, meta = load_model(copy)
    model.vote = None  # the reference is the network alone (training may have chosen a vote of its own)
    save_model(copy, model, meta.with_changes(neighbours=None))
    photos = sorted((DEMO / "train").rglob("*.jpg"))[:40]
    plain = load_predictor(copy, "torch")
    images = np.stack([plain.load(p) for p in photos])
    with torch.inference_mode():
        bank = model.forward_features(torch.from_numpy(plain.preprocess.normalize(images)))
    labels = torch.tensor([meta.classes.index(p.parent.name) for p in photos])
    model.vote = NeighbourVote(bank, labels, meta.num_classes, k=5, temperature=0.1, weight=0.5)
    save_model(copy, model, meta.with_changes(neighbours=model.vote.describe()))

    voted = load_predictor(copy, "torch")
    probs, _ = voted.predict_scored(images)
    assert not np.allclose(probs, plain.predict_scored(images)[0], atol=1e-3), "the vote changes the probabilities"
    # the photos are in the bank: their nearest photo is themselves, so the vote pulls toward their labels
    rows, true = np.arange(len(labels)), labels.numpy()
    assert probs[rows, true].mean() > plain.predict_scored(images)[0][rows, true].mean()
    result = api.export(copy, precision="int8", calibration=DEMO, log=quiet)
    assert result.parity["max_abs_diff"] <= 1e-4 and result.parity["top1_identical"]
    assert "a vote of the 5 most similar of 40 training photos" in result.card_path.read_text()
    onnx_probs, _ = load_predictor(result.fp32_path).predict_scored(images)
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-4)
    vote_nodes = export_graph._vote_nodes(onnx.load(str(result.fp32_path)).graph)
    assert vote_nodes, "the fp32 graph names the vote's nodes"
    int8_graph = onnx.load(str(result.int8_path)).graph
    quantized = {name for node in int8_graph.node if node.op_type == "QuantizeLinear" for name in node.input}
    in_int8 = [node for node in int8_graph.node if node.name in vote_nodes]
    assert len(in_int8) >= 0.75 * len(vote_nodes), "the int8 file still has the vote (a node or two may be folded)"
    assert not any(set(node.output) & quantized for node in in_int8), "nothing the vote computes is quantised"
    np.testing.assert_allclose(load_predictor(result.int8_path).predict_scored(images)[0].sum(1), 1.0, atol=1e-5)


def test_a_model_with_a_mirror_average_exports_and_predicts_the_same_everywhere(
    cnn_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Averaging with the mirror image is part of the network: saved, evaluated, exported and served alike."""
    import torch

    from vitrina.export.loading import load_predictor
    from vitrina.models import runtime
    from vitrina.models.checkpoint import load_model, save_model

    run, _, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx"))
    model, meta = load_model(copy)
    model.flip_average = True
    save_model(copy, model, meta.with_changes(flip_average=True))
    assert load_model(copy)[0].flip_average

    plain = load_predictor(run, "torch")
    photos = sorted((DEMO / "test").rglob("*.jpg"))[:24]
    images = np.stack([plain.load(p) for p in photos])
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    expected = (plain.predict_scored(images)[0] + plain.predict_scored(mirrored)[0]) / 2
    averaged = load_predictor(copy, "torch")
    probs, scores = averaged.predict_scored(images)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert not np.allclose(probs, plain.predict_scored(images)[0], atol=1e-3), "the mirror images change the probabilities"
    np.testing.assert_allclose(scores, plain.predict_scored(images)[1], atol=1e-5)  # the photo as given decides "unknown"

    # evaluation's path: the body through ONNX Runtime, mirror images included
    monkeypatch.setattr(runtime, "EXPORT_PAYS_FROM_PIXELS", 1)
    preprocess = averaged.preprocess
    logits = runtime.predict_logits(model, images, preprocess, torch.device("cpu"), "fp32", tmp_path / "cache")
    np.testing.assert_allclose(np.exp(logits), expected, atol=1e-4)

    result = api.export(copy, precision="fp32", calibration=DEMO, log=quiet)
    assert result.parity["max_abs_diff"] <= 1e-4 and result.parity["top1_identical"]
    assert "averaged with its mirror image" in result.card_path.read_text()
    onnx_probs, onnx_scores = load_predictor(result.onnx_path).predict_scored(images)
    np.testing.assert_allclose(onnx_probs, expected, atol=1e-4)
    np.testing.assert_allclose(onnx_scores, scores, atol=1e-4)


def test_an_adaptive_mirror_average_is_the_same_in_every_runtime(cnn_export, tmp_path: Path) -> None:
    """The mirror pass for the unsure photos only: ONNX file, PyTorch and evaluation apply one policy."""
    import torch

    from vitrina.description import MirrorAverage, top_margin
    from vitrina.evaluation.evaluate import predict_probabilities
    from vitrina.export.loading import load_predictor
    from vitrina.models.checkpoint import load_model, save_model
    from vitrina.preprocess import mirror_images

    run, _, _ = cnn_export
    plain = load_predictor(run, "torch")
    photos = sorted((DEMO / "test").rglob("*.jpg"))[:40]
    images = np.stack([plain.load(p) for p in photos])
    first, scores = plain.predict_scored(images)
    margin = float(np.median(top_margin(first)))
    unsure = top_margin(first) < margin
    expected = first.copy()
    expected[unsure] = (first[unsure] + plain.predict_scored(mirror_images(images[unsure]))[0]) / 2

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx"))
    model, meta = load_model(copy)
    save_model(copy, model, meta.with_changes(mirror=MirrorAverage(margin, passes=1.5)))
    for predictor in (load_predictor(copy, "torch"), load_predictor(api.export(copy, precision="fp32", log=quiet).onnx_path)):
        probs, got_scores = predictor.predict_scored(images)
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        np.testing.assert_allclose(got_scores, scores, atol=1e-4)  # the score reads the photos as given
        assert predictor.passes_per_photo == pytest.approx(1.0 + unsure.mean())
    assert "mirror" in export_graph.read_description(copy / "model.onnx").to_dict()
    evaluated = predict_probabilities(model, images, plain.preprocess, torch.device("cpu"), mirror=load_model(copy)[1].mirror)
    np.testing.assert_allclose(evaluated, expected, atol=1e-4)


def test_int8s_accuracy_check_leaves_the_votes_validation_photos_out(cnn_export, tmp_path: Path) -> None:
    """Validation photos in the vote's bank would find themselves: int8 is checked against a vote without them."""
    import torch

    from vitrina.export.loading import load_predictor
    from vitrina.models.checkpoint import load_model, save_model
    from vitrina.models.neighbours import NeighbourVote

    run, _, _ = cnn_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "*.onnx"))
    model, meta = load_model(copy)
    reference = export_checks.reference_images(copy, meta, int8=True)
    loader = load_predictor(copy, "torch")
    photos = sorted((DEMO / "train").rglob("*.jpg"))[:40]
    with torch.inference_mode():
        def features(images: np.ndarray) -> torch.Tensor:
            return model.forward_features(torch.from_numpy(meta.preprocess.normalize(images)))
        train = features(np.stack([loader.load(p) for p in photos]))
        val = features(reference.validation)
    # the validation photos join under the wrong labels: a check that kept them would see them misvote
    wrong = (torch.from_numpy(reference.validation_labels) + 1) % meta.num_classes
    chosen = NeighbourVote(train, torch.tensor([meta.classes.index(p.parent.name) for p in photos]), meta.num_classes,
                           k=5, temperature=0.1, weight=0.5)
    grown, added = chosen.with_added(val.numpy(), wrong.numpy(), limit=10_000, seed=0)
    model.vote = grown
    save_model(copy, model, meta.with_changes(neighbours=grown.describe(validation_photos=added)))

    def accuracy(vote: NeighbourVote) -> float:
        model.vote = vote
        with torch.inference_mode():
            probs = model.classify(val)[0].numpy()
        return float((probs.argmax(1) == reference.validation_labels).mean())

    left_out = accuracy(chosen)
    assert accuracy(grown) < left_out, "the test's wrong labels must matter"
    lines: list[str] = []
    result = api.export(copy, log=lines.append)
    assert result.int8 is not None and result.int8["vote_photos_left_out"] == len(val)
    assert result.int8["fp32_accuracy"] == pytest.approx(left_out, abs=1.5 / len(val))
    assert any(f"leaves the {len(val)} validation photos out" in line for line in lines)
    assert f"{len(val)} of them the validation photos" in result.card_path.read_text()
