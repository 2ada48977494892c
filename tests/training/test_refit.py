"""The refit on the training and validation photos together (``train.refit``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_shapes_dataset, scratch_config, split_shapes
from vitrina import api
from vitrina.config import resolve
from vitrina.data.cache import DecodedImages
from vitrina.description import ModelDescription, Refit
from vitrina.errors import ConfigError
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.unknown import UnknownScore, fit_unknown, score_features
from vitrina.training.budget import Deadline
from vitrina.training import head, trainer
from vitrina.training.optim import chosen_epoch
from vitrina.training.refit import carry_over, joined_photos, refit_seconds


def _finetune(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "train.mode": "finetune", "model.input_size": 64, "train.epochs": 2, "train.batch_size": 8, "train.workers": 1,
        "train.patience": 0, "train.cache_dir": str(tmp_path / "cache"), "train.refit": True, **extra,
    }


def _split_sizes(run_dir: Path) -> tuple[int, int]:
    splits = json.loads((run_dir / "splits.json").read_text())["splits"]
    return len(splits["train"]), len(splits["val"])


def test_a_refit_learns_from_every_photo_and_keeps_what_validation_chose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = split_shapes(tmp_path / "shapes", per_class=12, test_per_class=3)
    lines: list[str] = []
    heads: list[int | None] = []  # each warm-start head's repeat_epochs: the first network's, then the refit's

    def fit_head_on_features(*args: object, repeat_epochs: int | None = None, **kwargs: object) -> list[dict[str, float]]:
        heads.append(repeat_epochs)
        return head.fit_head_on_features(*args, repeat_epochs=repeat_epochs, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "fit_head_on_features", fit_head_on_features)
    run = api.train(data, resolve(overrides=_finetune(tmp_path)), out=tmp_path / "run", progress=False, log=lines.append)
    n_train, n_val = _split_sizes(run.run_dir)
    assert f"refit: 2 epochs on the {n_train + n_val} training and validation photos" in " ".join(lines)
    saved = ModelDescription.from_dict(json.loads((run.run_dir / "model.json").read_text()))
    assert saved.refit is not None and (saved.refit.epochs, saved.refit.photos, saved.refit.validation_photos) == (2, n_train + n_val, n_val)
    assert saved.refit.unknown_scale is not None and saved.refit.unknown_scale > 0
    assert sum(saved.train_counts.values()) == n_train + n_val  # the class mix it learned, for drift: every photo
    # Its warm-start head repeats the epochs validation chose for the first one's, choosing nothing on photos it learns.
    head_epochs = chosen_epoch(json.loads((run.run_dir / "history_head.json").read_text()))
    assert heads == [None, head_epochs] and head_epochs > 0
    assert f"  head: the {head_epochs} epochs validation chose for the first network's, keeping the last" in lines
    # Both banks are the refit network's features of every photo; the vote kept its chosen settings.
    assert saved.unknown is not None and saved.unknown.bank_size == n_train + n_val
    assert len(load_file(run.run_dir / "unknown.safetensors")["bank"]) == n_train + n_val
    if saved.neighbours is not None:
        assert (saved.neighbours.bank_size, saved.neighbours.validation_photos) == (n_train + n_val, n_val)
    # Its epochs had nothing to validate on; the first network's figures are kept beside its own.
    refit_rows = json.loads((run.run_dir / "history_refit.json").read_text())
    assert len(refit_rows) == 2 and not any("val_loss" in row for row in refit_rows)
    assert run.metrics["split"] == "test" and 0.0 <= run.metrics["before_refit"]["accuracy"] <= 1.0
    assert "before_refit" not in run.split_metrics["val"]
    assert f"2 epochs on {n_train + n_val} photos (training and validation); test accuracy before it" in (run.run_dir / "report.html").read_text()
    assert not list((tmp_path / "cache").glob("refit-*.npy"))  # the joined photos' file is gone
    # Photos it learned are not held out: evaluating or promoting on them is refused, a held-out split works.
    with pytest.raises(ConfigError, match="refit on its validation photos too"):
        api.evaluate(run.run_dir, data, split="val", progress=False)
    with pytest.raises(ConfigError, match="refit on its validation photos too"):
        api.promote(run.run_dir, run.run_dir, data, split="val", log=lambda _: None)
    assert api.evaluate(run.run_dir, data, split="test", progress=False).metrics["n_images"] == 9


def test_no_refit_where_the_budget_has_no_room_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = split_shapes(tmp_path / "shapes", per_class=12, test_per_class=3)
    monkeypatch.setattr(Deadline, "seconds_left", lambda self: -1.0)
    lines: list[str] = []
    cfg = scratch_config(tmp_path, **{"train.refit": True, "train.budget_minutes": 30})  # the same decision, a cheaper network
    run = api.train(data, cfg, out=tmp_path / "run", progress=False, log=lines.append)
    assert any("refit on the validation photos too: not done, it would take about" in line for line in lines)
    assert "refit" not in json.loads((run.run_dir / "model.json").read_text())
    assert "before_refit" not in run.metrics and not (run.run_dir / "history_refit.json").exists()


def test_a_refit_tail_continues_the_chosen_network_through_the_end_of_its_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = split_shapes(tmp_path / "shapes", per_class=12, test_per_class=3)
    starts: list[tuple[int, dict[str, torch.Tensor]]] = []  # each network's first epoch and its weights as it starts
    kept: list[dict[str, torch.Tensor]] = []  # the weights each network's training kept
    train_network = trainer.train_network

    def recording(job: trainer.NetworkTraining, *args: object, **kwargs: object) -> object:
        starts.append((job.first_epoch, {k: v.clone() for k, v in job.model.state_dict().items()}))
        rows, state = train_network(job, *args, **kwargs)  # type: ignore[arg-type]
        kept.append(state)
        return rows, state

    monkeypatch.setattr(trainer, "train_network", recording)
    lines: list[str] = []
    cfg = scratch_config(tmp_path, **{"train.refit": True, "train.refit_tail": 0.5})  # 4 epochs: the last 2 again
    run = api.train(data, cfg, out=tmp_path / "run", progress=False, log=lines.append)
    n_train, n_val = _split_sizes(run.run_dir)
    assert f"refit: the network validation chose goes on for the last 2 of its 4 epochs on the {n_train + n_val} training and validation photos" in " ".join(lines)
    assert [first for first, _ in starts] == [0, 2]
    # It starts from the weights the first network's training kept (the temperature, folded into
    # the head meanwhile, taken back out), not from the first network's start.
    assert starts[1][1].keys() == kept[0].keys()
    for key, value in starts[1][1].items():
        assert torch.allclose(value, kept[0][key], rtol=1e-4, atol=1e-6), key
    assert not torch.equal(starts[0][1]["head.fc.weight"], starts[1][1]["head.fc.weight"])
    refit_rows = json.loads((run.run_dir / "history_refit.json").read_text())
    assert [row["epoch"] for row in refit_rows] == [3, 4]
    # At the learning rates the schedule had at the end of those epochs (more steps to an epoch on
    # every photo, so only about the first network's): well above zero after epoch 3, zero after 4.
    first_rows = json.loads((run.run_dir / "history.json").read_text())
    assert refit_rows[0]["lr"] == pytest.approx(first_rows[2]["lr"], rel=0.2) and refit_rows[0]["lr"] > 0.1 * first_rows[0]["lr"]
    assert refit_rows[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    saved = ModelDescription.from_dict(json.loads((run.run_dir / "model.json").read_text()))
    assert saved.refit is not None and (saved.refit.epochs, saved.refit.continued, saved.refit.photos) == (2, True, n_train + n_val)
    assert "the chosen network went on for the last 2 epochs on" in (run.run_dir / "report.html").read_text()


@pytest.mark.parametrize("with_test, extra, dropped", [
    (True, {}, None),
    (False, {}, "the data holds no split beyond validation"),  # the refit learns validation: nothing left to report it on
    (True, {"train.unknown_score": "mahalanobis"}, "it cannot carry the mahalanobis score's threshold over"),
])
def test_small_grayscale_images_from_scratch_get_the_refit_tail_where_the_run_can_make_it(
    tmp_path: Path, pixel_csv: Path, with_test: bool, extra: dict, dropped: str | None,
) -> None:
    spec = {"train": str(pixel_csv), **({"test": str(pixel_csv)} if with_test else {})}
    (tmp_path / "data.yaml").write_text(json.dumps(spec))  # YAML reads JSON
    cfg = resolve(overrides={"train.epochs": 2, "train.workers": 1, "train.cache_dir": str(tmp_path / "cache"),
                             "train.patience": 0, "train.expected_speed": False, **extra})
    lines: list[str] = []
    run = api.train(tmp_path / "data.yaml", cfg, out=tmp_path / "run", progress=False, log=lines.append)
    refit = json.loads((run.run_dir / "model.json").read_text()).get("refit")
    if dropped is None:
        assert "then a refit on the validation photos too (the chosen network learning on for the last 50% of its epochs" in " ".join(lines)
        assert refit is not None and (refit["epochs"], refit["continued"]) == (1, True)
    else:
        assert f"no refit on the validation photos too (recommended for this data): {dropped}" in " ".join(lines)
        assert refit is None


@pytest.mark.parametrize("overrides, message", [
    ({"train.mode": "bottleneck"}, "use it with --mode finetune or scratch"),
    ({"train.unknown_score": "knn_energy"}, "only for knn, msp, energy"),
    ({"train.refit": False, "train.refit_tail": 0.5}, "use it with --set train.refit=true"),
])
def test_a_refit_that_cannot_be_carried_over_is_refused_before_training(tmp_path: Path, overrides: dict, message: str) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6, size=64)
    with pytest.raises(ConfigError, match=message):
        api.train(data, resolve(overrides=_finetune(tmp_path, **overrides)), out=tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_bank_scores_leave_each_photo_out_of_its_own_neighbours() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    scorer = UnknownScore("knn", k=1, bank=bank, centre=torch.zeros(2), prepared=True)
    assert scorer(bank, torch.zeros(3, 2)).numpy() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # each finds itself
    assert scorer.bank_scores() == pytest.approx([0.2, 0.2, 0.4], abs=1e-6)  # the nearest other photo
    assert UnknownScore("knn", k=2, bank=bank, centre=torch.zeros(2), prepared=True).bank_scores() == pytest.approx([1.0, 0.4, 1.0], abs=1e-6)


def test_joined_photos_are_the_training_then_the_validation_photos_in_a_file_removed_after(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = DecodedImages(rng.integers(0, 255, (300, 4, 4, 3), dtype=np.uint8), np.arange(300), [f"t{i}" for i in range(300)], [])
    val = DecodedImages(rng.integers(0, 255, (7, 4, 4, 3), dtype=np.uint8), np.arange(7), [f"v{i}" for i in range(7)], [])
    with joined_photos(train, val, tmp_path) as joined:
        assert np.array_equal(np.asarray(joined.images), np.concatenate([train.images, val.images]))
        assert joined.hashes == [*train.hashes, *val.hashes] and len(list(tmp_path.glob("refit-*.npy"))) == 1
    assert not list(tmp_path.glob("refit-*.npy"))


def test_the_refit_time_is_the_measured_training_scaled_to_its_photos_and_the_passes_after() -> None:
    # Each epoch: 106 s of training and a validation pass of 4 s over 200 photos, which the refit does not run.
    history = [{"seconds": 110.0, "images_per_second": 10.0, "val_seconds": 4.0}, {"seconds": 110.0, "val_seconds": 4.0}]
    assert refit_seconds(history, n_train=1000, n_val=200, after_photos=0) == pytest.approx(2 * 106.0 * 1.2)
    assert refit_seconds(history, n_train=1000, n_val=200, after_photos=400) == pytest.approx(2 * 106.0 * 1.2 + 8.0)


class _Refitted(torch.nn.Module):
    def __init__(self, dims: int, classes: int):
        super().__init__()
        self.head, self.vote, self.num_classes = torch.nn.Linear(dims, classes), None, classes


def _photos(centres: np.ndarray, n: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + rng.normal(0, spread, (n, centres.shape[1]))).astype(np.float32), labels


@pytest.mark.parametrize("spread", [0.5, 1.5])
def test_the_carried_threshold_accepts_about_the_same_share_of_new_photos(spread: float) -> None:
    """A refit network whose features lie tighter (or looser) than the first one's: the threshold
    chosen for the first must follow, or it would accept every new photo (or half of them)."""
    centres = np.random.default_rng(0).normal(0, 3, (5, 16))
    train, train_labels = _photos(centres, 600, 1.0, 1)
    val, val_labels = _photos(centres, 200, 1.0, 2)
    scorer, unknown = fit_unknown(train, train_labels, val, np.zeros((200, 5), np.float32), 5, method="knn", k=1)
    first_vote = NeighbourVote(torch.from_numpy(train), torch.from_numpy(train_labels), 5, k=3, temperature=0.1, weight=0.4)
    bank, bank_labels = _photos(centres, 800, spread, 3)  # the refit network's features of train and validation photos
    model = _Refitted(16, 5)
    carried = carry_over(model, bank, bank_labels, 200, Refit(2, 800, 200), scorer, unknown, first_vote, lambda _: None)
    new, _ = _photos(centres, 2000, spread, 4)
    accepted = score_features(carried.scorer, new, np.zeros((2000, 5), np.float32)) <= carried.fields["unknown"].threshold
    assert 0.92 <= accepted.mean() <= 0.97
    unscaled = score_features(carried.scorer, new, np.zeros((2000, 5), np.float32)) <= unknown.threshold
    assert abs(unscaled.mean() - 0.95) > 0.04  # what carrying it over unscaled would have done
    refit = carried.fields["refit"]
    assert refit.unknown_scale == pytest.approx(carried.fields["unknown"].threshold / unknown.threshold, rel=1e-3)
    # The vote keeps its settings, on the refit features, the validation photos last (as without_last expects).
    assert (model.vote.k, model.vote.temperature, model.vote.weight) == (3, 0.1, 0.4)
    assert torch.equal(model.vote.labels, torch.from_numpy(bank_labels)) and carried.fields["neighbours"].validation_photos == 200
    assert len(model.vote.without_last(200).bank) == 600
