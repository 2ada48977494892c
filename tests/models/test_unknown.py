"""Unknown-photo detection: the scores, the threshold chosen on validation, and where predict and serve report it."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.imagegen import photo
from tests.helpers import Planted, quiet
from vitrina import api
from vitrina.config import resolve
from vitrina.description import UnknownDetector
from vitrina.errors import ModelError
from vitrina.inference.batch import predict_catalogue
from vitrina.export.loading import load_predictor
from vitrina.models.unknown import (
    SCORE_OUTPUT, ScoredNet, UnknownScore, build_score, default_k, fit_unknown, load_unknown, save_unknown, score_features, threshold_for,
)
from vitrina.inference.decide import DecisionRule
from vitrina.serving.answers import photo_result


def clusters(seed: int = 0, noise: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes around centres drawn with ``seed``; ``noise`` seeds the scatter."""
    centres = np.random.default_rng(seed).normal(size=(3, 16)) * 3
    labels = np.repeat(np.arange(3), 30)
    return (centres[labels] + np.random.default_rng([seed, noise]).normal(size=(90, 16))).astype(np.float32), labels


@pytest.mark.parametrize("method", ["knn", "knn_energy", "mahalanobis", "energy", "msp"])
def test_every_score_ranks_far_inputs_above_near_ones(method: str) -> None:
    x, y = clusters()
    near, _ = clusters(noise=1)  # new photos of the known classes
    far, _ = clusters(seed=5)  # photos of other things
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():  # a head whose confidence grows towards the class centres
        centres = torch.from_numpy(np.stack([x[y == c].mean(0) for c in range(3)]))
        head.weight.copy_(centres / 3)
        head.bias.copy_(-(centres**2).sum(1) / 6)
    logits = lambda f: head(torch.from_numpy(f)).detach().numpy()  # noqa: E731
    scorer = build_score(method, x, y, 3)
    a, b = score_features(scorer, near, logits(near)), score_features(scorer, far, logits(far))
    if method in ("knn", "mahalanobis"):  # the feature scores separate them completely
        assert a.max() < b.min()
    else:
        assert np.median(a) < np.median(b)


def test_threshold_accepts_the_asked_share_and_the_scorer_survives_a_round_trip(tmp_path: Path) -> None:
    x, y = clusters()
    val, _ = clusters(noise=3)
    scorer, description = fit_unknown(x, y, val, np.zeros((len(val), 3), np.float32), 3, accept_rate=0.9)
    accepted = score_features(scorer, val, np.zeros((len(val), 3))) <= description.threshold
    assert 0.88 <= accepted.mean() <= 0.95
    assert description.score == "knn" and description.k == 10 and description.bank_size == 90
    assert threshold_for(np.arange(100.0), 0.95) == 95.0
    save_unknown(tmp_path, scorer)
    again = load_unknown(tmp_path, description)
    assert again is not None
    probe = np.random.default_rng(4).normal(size=(20, 16)).astype(np.float32) * 3
    np.testing.assert_allclose(score_features(again, probe, np.zeros((20, 3))), score_features(scorer, probe, np.zeros((20, 3))), atol=2e-3)
    (tmp_path / description.file).write_bytes(b"damaged")
    with pytest.raises(ModelError, match="cannot read"):
        load_unknown(tmp_path, description)
    assert load_unknown(tmp_path, None) is None
    with pytest.raises(ModelError, match="unknown score"):
        UnknownScore("entropy")


def test_knn_energy_standardises_its_parts_on_validation_and_keeps_them(tmp_path: Path) -> None:
    x, y = clusters()
    val, _ = clusters(noise=3)
    rng = np.random.default_rng(7)
    val_logits = (rng.normal(size=(len(val), 3)) * 4).astype(np.float32)
    scorer, description = fit_unknown(x, y, val, val_logits, 3, method="knn_energy")
    assert description.score == "knn_energy" and description.k == 1  # its own default
    knn, energy = scorer.parts(torch.from_numpy(val), torch.from_numpy(val_logits))
    mean_knn, sd_knn, mean_energy, sd_energy = scorer.stats.tolist()
    assert mean_knn == pytest.approx(knn.mean().item(), rel=1e-4) and sd_knn == pytest.approx(knn.std().item(), rel=1e-4)
    assert mean_energy == pytest.approx(energy.mean().item(), rel=1e-4) and sd_energy == pytest.approx(energy.std().item(), rel=1e-4)
    scores = score_features(scorer, val, val_logits)
    assert abs(scores.mean()) < 1e-4 and scores.std() == pytest.approx(np.sqrt(2 + 2 * np.corrcoef(knn, energy)[0, 1]), rel=0.05)
    assert np.mean(scores <= description.threshold) >= 0.95
    save_unknown(tmp_path, scorer)
    again = load_unknown(tmp_path, description)
    probe = (rng.normal(size=(20, 16)) * 3).astype(np.float32)
    probe_logits = (rng.normal(size=(20, 3)) * 4).astype(np.float32)
    # the stored bank is fp16: a distance moves by about 1e-3, a standardised one by that over its spread
    np.testing.assert_allclose(score_features(again, probe, probe_logits), score_features(scorer, probe, probe_logits), rtol=1e-3)
    with pytest.raises(ModelError, match="standardisation"):
        UnknownScore("knn_energy", bank=again.bank, centre=again.centre, prepared=True)


def test_photo_results_turn_unknown_into_uncertain() -> None:
    probs = np.array([[0.95, 0.05]])

    class Photo:
        sha256 = "x"

    rule = DecisionRule(0.5, unknown_threshold=0.3)
    known = photo_result("p.jpg", Photo(), probs[0], ["a", "b"], 2, rule, score=0.1)
    strange = photo_result("p.jpg", Photo(), probs[0], ["a", "b"], 2, rule, score=0.4)
    assert (known["unknown"], known["uncertain"]) == (False, False)
    assert (strange["unknown"], strange["uncertain"], strange["unknown_score"]) == (True, True, 0.4)
    assert "unknown" not in photo_result("p.jpg", Photo(), probs[0], ["a", "b"], 2, DecisionRule(0.5))


@pytest.fixture(scope="module")
def run_and_photos(dirty: Planted, quality_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A bottleneck model on the hats/pants/shoes photos; folders of its own test photos and of synthetic pictures."""
    out = tmp_path_factory.mktemp("unknown") / "run"
    exclude = out.parent / "exclude.txt"  # the planted synthetic picture would teach the model what synthetic ones look like
    exclude.write_text(f"{dirty.off_topic}\n")
    settings = {"train.mode": "bottleneck", "model.input_size": 96, "train.epochs": 20, "train.workers": 1,
                "train.feature_runtime": "torch", "train.cache_dir": str(quality_cache), "data.exclude": str(exclude)}
    run = api.train(dirty.root, resolve(overrides=settings), out=out, progress=False, log=quiet).run_dir
    strange = tmp_path_factory.mktemp("strange")
    for seed in range(12):
        photo(160, 120, seed=seed).save(strange / f"synthetic{seed}.jpg", quality=90)
    return run, dirty.root / "test", strange


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_stores_the_detector_and_predict_reports_it(run_and_photos: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import json

    run, known, strange = run_and_photos

    description = json.loads((run / "model.json").read_text())["unknown"]
    assert description["score"] == "knn" and description["accept_rate"] == 0.95 and (run / "unknown.safetensors").is_file()
    predictor = load_predictor(run, "torch")
    assert predictor.detects_unknown
    out = tmp_path / "predictions.csv"
    predict_catalogue(predictor, [known, strange], out, top_k=1, progress=False, workers=0)
    rows = read(out)
    assert list(rows[0])[-3:] == ["unknown", "unknown_score", "error"]
    own = [r for r in rows if Path(r["path"]).is_relative_to(known)]
    other = [r for r in rows if Path(r["path"]).is_relative_to(strange)]
    # The threshold accepts most of the model's own test photos (95% of validation by design). A
    # 96-pixel model of 63 photos is too weak a judge of strangeness to test separation here: the
    # scores' separating power is tested above on features and measured by bench/bench_unknown.py.
    assert sum(r["unknown"] == "true" for r in own) <= len(own) // 4
    assert all(0.0 <= float(r["unknown_score"]) <= 2.0 for r in own + other)
    assert {r["unknown"] for r in own + other} <= {"true", "false"}


def test_the_nearest_photo_decides_on_a_trained_backbone_the_tenth_on_a_frozen_one() -> None:
    assert default_k("knn", trained_backbone=True) == 1 and default_k("knn", trained_backbone=False) == 10
    assert default_k("knn_energy", trained_backbone=False) == 1 and default_k("msp", trained_backbone=True) == 10


def test_the_score_is_a_setting(dirty: Planted, quality_cache: Path, tmp_path: Path) -> None:
    import json

    settings = {"train.mode": "bottleneck", "model.input_size": 96, "train.epochs": 5, "train.workers": 1,
                "train.feature_runtime": "torch", "train.cache_dir": str(quality_cache),
                "train.unknown_score": "knn_energy"}
    run = api.train(dirty.root, resolve(overrides=settings), out=tmp_path / "run", progress=False, log=quiet).run_dir
    description = json.loads((run / "model.json").read_text())["unknown"]
    assert description["score"] == "knn_energy" and description["k"] == 1
    predictor = load_predictor(run, "torch")
    _, scores = predictor.predict_scored(np.stack([predictor.load(p) for p in sorted((dirty.root / "test" / "hat").iterdir())[:3]]))
    assert scores.shape == (3,) and np.isfinite(scores).all()


def with_knn_energy(run: Path, folder: Path) -> Path:
    """A copy of ``run`` whose stored detector is ``knn_energy`` (same bank, made-up standardisation)."""
    import json
    import shutil

    copy = Path(shutil.copytree(run, folder))
    meta = json.loads((copy / "model.json").read_text())
    stored = load_unknown(copy, UnknownDetector.parse(meta["unknown"]))
    scorer = UnknownScore("knn_energy", 1, bank=stored.bank, centre=stored.centre, prepared=True,
                          stats=torch.tensor([0.3, 0.1, -2.0, 0.5]))
    save_unknown(copy, scorer)
    meta["unknown"].update(score="knn_energy", k=1)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("score", ["knn", "knn_energy"])
def test_an_export_with_the_score_output_gives_the_same_scores(run_and_photos: tuple[Path, Path, Path], tmp_path: Path, score: str) -> None:
    """What `vitrina export` needs to do for ONNX Runtime to report unknown photos: a second output."""

    from vitrina.description import INPUT_NAME, OUTPUT_NAME
    from vitrina.export.graph import save_onnx
    from vitrina.models.checkpoint import load_model, read_meta

    run, known, strange = run_and_photos
    if score == "knn_energy":
        run = with_knn_energy(run, tmp_path / "run")
    model, meta = load_model(run)
    net = ScoredNet(model.float().eval(), load_unknown(run, meta.unknown))
    size = meta.preprocess.input_size
    path = tmp_path / "model.onnx"
    import onnx

    buffer = tmp_path / "raw.onnx"
    torch.onnx.export(net, (torch.zeros(2, 3, size, size),), str(buffer), dynamo=False, opset_version=18,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, SCORE_OUTPUT],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, SCORE_OUTPUT: {0: "batch"}})
    save_onnx(onnx.load(str(buffer)), path, read_meta(run))
    via_onnx, via_torch = load_predictor(path), load_predictor(run, "torch")
    assert via_onnx.detects_unknown
    images = np.stack([via_torch.load(p) for p in sorted(strange.iterdir())[:4] + sorted((known / "hat").iterdir())[:4]])
    (p1, s1), (p2, s2) = via_onnx.predict_scored(images), via_torch.predict_scored(images)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-4 if score == "knn" else 1e-3)
