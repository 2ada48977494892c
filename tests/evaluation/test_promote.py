"""`vitrina promote`: a paired comparison on the same photos, McNemar's exact test, an atomic swap
that keeps the previous model, a log of every decision, and exit status 0/1."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import quiet, scratch_settings, shuffle_labels
from vitrina import api
from vitrina.config import resolve
from vitrina.errors import DataError
from vitrina.evaluation.promote import mcnemar_worse
from vitrina.serving.model import files_version, model_files


def test_mcnemar_exact_one_sided() -> None:
    assert mcnemar_worse(0, 0) == 1.0
    assert mcnemar_worse(10, 0) == pytest.approx(1 / 1024)
    assert mcnemar_worse(5, 5) == pytest.approx(638 / 1024)
    assert mcnemar_worse(0, 10) == 1.0
    assert mcnemar_worse(9, 3) == pytest.approx(299 / 4096)  # P(X >= 9), X ~ Binomial(12, 1/2): not significant at 0.05


@pytest.fixture(scope="module")
def shuffled_run(tmp_path_factory: pytest.TempPathFactory, shapes: Path, cache_dir: Path) -> Path:
    """The shapes model's recipe trained on the same photos with their labels shuffled."""
    root = tmp_path_factory.mktemp("shuffled")
    shutil.copytree(shapes / "test", root / "test")
    shuffle_labels(shapes / "train", root / "train")
    out = tmp_path_factory.mktemp("runs") / "shuffled"
    return api.train(root, resolve(overrides=scratch_settings(cache_dir)), out=out, progress=False, log=quiet).run_dir


@pytest.fixture
def served(tmp_path: Path, shapes_run: Path) -> Path:
    """A copy of the shapes run where a server would serve it."""
    target = tmp_path / "deploy" / "model"
    shutil.copytree(shapes_run, target)
    return target


def promote(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitrina", "promote", *args], capture_output=True, text=True, timeout=600)


def test_a_model_trained_on_shuffled_labels_is_refused_and_nothing_changes(served: Path, shuffled_run: Path, shapes: Path) -> None:
    before = files_version(model_files(served))
    done = promote(str(shuffled_run), "--over", str(served), "--data", str(shapes))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused: it is significantly worse: McNemar one-sided p =" in done.stdout and "not promoted" in done.stdout
    assert files_version(model_files(served)) == before and not served.with_name("model.prev").exists()
    record = json.loads((served.parent / "promotions.jsonl").read_text().splitlines()[-1])
    assert record["promoted"] is False and record["photos"] == 18 and record["p_worse"] < 0.05
    assert record["accuracy_old"] > record["accuracy_new"]


def test_a_better_model_replaces_the_served_folder_and_keeps_the_old_one(tmp_path: Path, shapes_run: Path, shuffled_run: Path, shapes: Path) -> None:
    served = tmp_path / "model"
    shutil.copytree(shuffled_run, served)
    old, new = files_version(model_files(served)), files_version(model_files(shapes_run))
    outcome = api.promote(shapes_run, served, shapes, log=quiet)
    assert outcome.promoted and not outcome.reasons and not outcome.forced
    assert outcome.comparison.accuracy_new > outcome.comparison.accuracy_old
    assert files_version(model_files(served)) == new and files_version(model_files(tmp_path / "model.prev")) == old
    assert json.loads((tmp_path / "promotions.jsonl").read_text())["promoted"] is True


def test_an_onnx_file_is_replaced_in_one_rename(tmp_path: Path, shapes_run: Path, shuffled_run: Path, shapes: Path) -> None:
    served = tmp_path / "serving.onnx"
    shutil.copyfile(api.export(shuffled_run, out=tmp_path / "shuffled.onnx", log=quiet).onnx_path, served)
    old = served.read_bytes()
    outcome = api.promote(shapes_run, served, shapes, log=quiet)
    assert outcome.promoted and served.read_bytes() == (shapes_run / "model.onnx").read_bytes()
    assert (tmp_path / "serving.onnx.prev").read_bytes() == old
    back = api.promote(shuffled_run, served, shapes, log=quiet)  # and the shuffled one cannot come back
    assert not back.promoted and served.read_bytes() == (shapes_run / "model.onnx").read_bytes()


def test_force_max_drop_and_class_changes(served: Path, shapes_run: Path, shuffled_run: Path, shapes: Path, tmp_path: Path) -> None:
    forced = api.promote(shuffled_run, served, shapes, force=True, log=quiet)
    assert forced.promoted and forced.forced and forced.reasons
    same = api.promote(shapes_run, shapes_run, shapes, max_drop=0.0, log=quiet)  # the same model: no drop, p = 1
    assert same.promoted and same.comparison.p_worse == 1.0 and same.comparison.only_old_right == 0

    two_classes = tmp_path / "two"
    for split in ("train", "test"):
        for name in ("disc", "bar"):
            shutil.copytree(shapes / split / name, two_classes / split / name)
    narrow = api.train(two_classes, resolve(overrides=scratch_settings(tmp_path / "cache")), out=tmp_path / "narrow",
                       progress=False, log=quiet).run_dir
    refused = api.promote(narrow, served, two_classes, log=quiet)
    assert not refused.promoted and "its classes differ (added: none; removed: square)" in refused.reasons[0]
    assert api.promote(narrow, served, two_classes, allow_class_change=True, log=quiet).promoted


def test_bad_arguments_are_clear_errors(served: Path, shapes: Path, tmp_path: Path) -> None:
    missing = promote(str(tmp_path / "nothing"), "--over", str(served), "--data", str(shapes))
    assert missing.returncode == 2 and "new model not found" in missing.stderr and "Traceback" not in missing.stderr
    with pytest.raises(DataError, match="holdout"):
        api.promote(served, served, shapes, split="holdout", log=quiet)


def test_a_vote_that_holds_the_validation_photos_is_not_compared_on_them(served: Path, shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    import torch

    from vitrina.errors import ConfigError
    from vitrina.models.checkpoint import load_model, save_model
    from vitrina.models.neighbours import NeighbourVote

    new = Path(shutil.copytree(shapes_run, tmp_path / "new", ignore=shutil.ignore_patterns("*.onnx")))
    model, meta = load_model(new)
    bank = torch.randn(20, model.num_features)
    model.vote = NeighbourVote(bank, torch.arange(20) % meta.num_classes, meta.num_classes, k=3, temperature=0.1, weight=0.5)
    save_model(new, model, meta.with_changes(neighbours=model.vote.describe(validation_photos=5)))
    with pytest.raises(ConfigError, match="holds its 5 validation photos"):
        api.promote(new, served, shapes, split="val", log=quiet)
    assert api.promote(new, served, shapes, split="test", log=quiet).comparison.split == "test"
