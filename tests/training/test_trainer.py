"""The training engine on small real images: run folders, modes, resume, bad input."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import DEMO, make_shapes_dataset, quiet, scratch_config
from vitrina import api
from vitrina.config import Config, from_dict, resolve
from vitrina.errors import ConfigError, DataError, ModelError

def test_scratch_run_writes_a_complete_run_folder(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes")
    run = api.train(data, scratch_config(tmp_path, **{"train.epochs": 8, "train.lr": 0.01}), out=tmp_path / "run", progress=False, log=quiet)
    folder = run.run_dir
    for name in ("config.yaml", "splits.json", "history.csv", "history.json", "curves.png", "model.safetensors", "model.json", "metrics.json", "last.safetensors", "train_state.pt"):
        assert (folder / name).is_file(), name
    assert any((folder / "tensorboard").iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("split", "accuracy", "macro_f1", "n_images", "train_seconds", "peak_rss_mb"):
        assert key in metrics
    assert metrics["split"] == "val"
    assert metrics["accuracy"] >= 0.9  # three easy classes: a working loop learns them
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 9))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["classes"] == ["bar", "disc", "square"]
    assert 0.05 <= meta["temperature"] <= 10
    # 95% of validation photos are answered confidently: the threshold is their 5th percentile.
    predictions = (folder / "predictions_val.csv").read_text().splitlines()[1:]
    confidences = sorted(float(line.split(",")[3]) for line in predictions)
    accepted = sum(c >= meta["thresholds"]["confidence"] - 1e-6 for c in confidences)
    assert accepted >= 0.95 * len(confidences) - 1
    assert meta["preprocess"]["input_size"] == 32
    splits = json.loads((folder / "splits.json").read_text())
    assert splits["carved"]["val"]["from"] == "train"
    assert len(splits["splits"]["val"]) == 12  # 15% of 24, per class


def test_scratch_runs_are_reproducible(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    a = api.train(data, scratch_config(tmp_path, **{"train.epochs": 2}), out=tmp_path / "a", progress=False, log=quiet)
    b = api.train(data, scratch_config(tmp_path, **{"train.epochs": 2}), out=tmp_path / "b", progress=False, log=quiet)
    assert [r["train_loss"] for r in a.history] == pytest.approx([r["train_loss"] for r in b.history], rel=1e-5)


def test_corrupt_image_is_skipped_and_reported(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    (data / "disc" / "broken.jpg").write_bytes((data / "disc" / "disc000.jpg").read_bytes()[:200])
    (data / "bar" / "empty.jpg").write_bytes(b"")
    run = api.train(data, scratch_config(tmp_path, **{"train.epochs": 1}), out=tmp_path / "run", progress=False, log=quiet)
    skipped = (run.run_dir / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and "truncated" in skipped
    assert "empty.jpg" in skipped and "empty" in skipped


def test_bottleneck_uses_the_feature_cache(tmp_path: Path) -> None:
    cfg = {
        "train.mode": "bottleneck",
        "model.input_size": 96,
        "train.epochs": 20,
        "train.workers": 1,
        "train.cache_dir": str(tmp_path / "cache"),
    }
    logs: list[str] = []
    first = api.train(DEMO, resolve(overrides=cfg), out=tmp_path / "one", progress=False, log=logs.append)
    assert any("features" in line for line in logs)
    assert first.metrics["split"] == "test"
    assert first.metrics["accuracy"] > 0.5  # 10 clothing classes at 96 px from 24 photos each; chance is 0.1
    logs.clear()
    second = api.train(DEMO, resolve(overrides={**cfg, "train.lr": 0.005}), out=tmp_path / "two", progress=False, log=logs.append)
    assert not any("features (plain)" in line for line in logs), "features must come from the cache"
    assert second.metrics["accuracy"] > 0.5


def test_finetune_runs_the_frozen_stages_in_onnx_runtime_to_the_same_result(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=64)
    cfg = {
        "train.mode": "finetune",
        "model.input_size": 64,
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.workers": 1,
        "train.patience": 0,
        "train.warm_start_head": False,
        "augment.enabled": False,
        "train.cache_dir": str(tmp_path / "cache"),
        "train.precision": "fp32",  # the same function to float rounding (bf16 rounds the trained blocks)
    }
    logs: list[str] = []
    onnx_run = api.train(data, resolve(overrides=cfg), out=tmp_path / "onnx", progress=False, log=logs.append)
    assert any("run in ONNX Runtime; the last 3 blocks train" in line for line in logs)  # the recommended number
    assert json.loads((onnx_run.run_dir / "plan.json").read_text())["unfreeze_blocks"] == 3
    logs.clear()
    eager = api.train(data, resolve(overrides={**cfg, "train.feature_runtime": "torch"}), out=tmp_path / "eager", progress=False, log=logs.append)
    assert not any("run in ONNX Runtime" in line for line in logs)
    a, b = onnx_run.history, eager.history
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-3)
    assert [r["val_loss"] for r in a] == pytest.approx([r["val_loss"] for r in b], rel=1e-3)
    assert a[-1]["train_loss"] < a[0]["train_loss"]
    assert onnx_run.metrics["accuracy"] > 0.6  # three shapes; chance is 1/3
    logs.clear()
    bf16 = api.train(data, resolve(overrides={**cfg, "train.precision": "bf16", "train.epochs": 1}), out=tmp_path / "bf16",
                     progress=False, log=logs.append)
    assert any("run in ONNX Runtime" in line for line in logs)  # bf16 trained blocks keep the fp32 ONNX prefix
    assert any("training in bf16" in line for line in logs)
    assert json.loads((bf16.run_dir / "model.json").read_text())["precision"] == "bf16"


def test_single_class_and_thin_class_are_refused(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    for name in ("bar", "square"):
        for f in (data / name).iterdir():
            f.unlink()
        (data / name).rmdir()
    with pytest.raises(DataError, match="at least 2 classes"):
        api.train(data, scratch_config(tmp_path), out=tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        api.train(data, scratch_config(tmp_path, **{"model.name": "efficientnet_lite9"}), out=tmp_path / "run", progress=False, log=quiet)


def test_existing_output_folder_is_never_overwritten(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        api.train(data, scratch_config(tmp_path), out=out, progress=False, log=quiet)
    assert (out / "precious.txt").read_text() == "keep"


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitrina", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("extra", [["--set", "train.ema_decay=0"], ["--set", "train.ema_decay=0.9"]], ids=["plain", "weight-average"])
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path, extra: list[str]) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=16)
    common = ["--mode", "scratch", "--model", "cnn1", "--epochs", "4", "--batch-size", "16", "--workers", "1", "--quiet",
              "--set", "model.input_size=32", "--set", "train.patience=0", "--set", f"train.cache_dir={tmp_path / 'cache'}", *extra]
    full = _cli("train", str(data), "--out", str(tmp_path / "full"), *common, cwd=tmp_path)
    assert full.wait(timeout=300) == 0, full.stdout.read()

    killed = _cli("train", str(data), "--out", str(tmp_path / "killed"), *common, cwd=tmp_path)
    state = tmp_path / "killed" / "train_state.pt"
    deadline = time.time() + 240
    while not state.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the kill must land before the fourth epoch saves
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert state.exists(), "the run must checkpoint after its first epoch"
    import torch

    interrupted_at = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= interrupted_at < 4, "the kill must land before the run ends"
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = _cli("train", str(data), "--out", str(tmp_path / "killed"), "--resume", "--quiet", cwd=tmp_path)  # its own settings
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    a = json.loads((tmp_path / "full" / "history.json").read_text())
    b = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-4)
    assert [r["val_accuracy"] for r in b] == pytest.approx([r["val_accuracy"] for r in a])
    from safetensors.torch import load_file

    kept_a, kept_b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.allclose(kept_a[k], kept_b[k], atol=1e-5) for k in kept_a), "the kept weights (averaged, with ema) match"

    changed = _cli("train", str(data), "--out", str(tmp_path / "killed"), "--resume", *common, "--lr", "0.5", cwd=tmp_path)
    output = changed.communicate(timeout=120)[0]
    assert changed.returncode == 2
    assert "other settings" in output and "train.lr: None -> 0.5" in output
    assert "Traceback" not in output


def test_resume_with_a_different_config_is_refused(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    api.train(data, scratch_config(tmp_path, **{"train.epochs": 1}), out=tmp_path / "run", progress=False, log=quiet)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"other settings .*train\.lr: .* -> 0\.3"):
        api.train(data, scratch_config(tmp_path, **{"train.epochs": 1, "train.lr": 0.3}), out=tmp_path / "run", resume=True, progress=False, log=quiet)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_resume_on_other_data_is_refused_and_names_the_difference(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    config = scratch_config(tmp_path, **{"train.epochs": 1})
    api.train(data, config, out=tmp_path / "run", progress=False, log=quiet)
    splits = (tmp_path / "run" / "splits.json").read_bytes()
    other = make_shapes_dataset(tmp_path / "other", per_class=7)
    with pytest.raises(ConfigError, match=r"other data .*new \(first: .*other"):
        api.train(other, config, out=tmp_path / "run", resume=True, progress=False, log=quiet)
    moved = next((data / "disc").iterdir())
    moved.rename(data / "bar" / moved.name)  # one photo relabelled
    with pytest.raises(ConfigError, match=r"other data .*relabelled|other data .*new"):
        api.train(data, config, out=tmp_path / "run", resume=True, progress=False, log=quiet)
    assert (tmp_path / "run" / "splits.json").read_bytes() == splits, "a refused resume writes nothing"


def test_a_kill_between_the_weights_and_the_state_resumes_from_one_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after epoch 2's last.safetensors but before its train_state.pt: the resumed run
    continues from epoch 1's weights and optimizer together, and ends as an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    data = make_shapes_dataset(tmp_path / "shapes", per_class=8)
    config = scratch_config(tmp_path, **{"train.epochs": 3, "train.patience": 0})
    full = api.train(data, config, out=tmp_path / "full", progress=False, log=quiet)
    _interrupted_after_one_epoch(data, config, tmp_path / "killed", monkeypatch)
    assert torch.load(tmp_path / "killed" / "train_state.pt", weights_only=True)["epoch"] == 1
    resumed = api.train(data, config, out=tmp_path / "killed", resume=True, progress=False, log=quiet)
    a = json.loads((full.run_dir / "history.json").read_text())
    b = json.loads((resumed.run_dir / "history.json").read_text())
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-4)
    kept_a, kept_b = load_file(full.run_dir / "model.safetensors"), load_file(resumed.run_dir / "model.safetensors")
    assert all(torch.allclose(kept_a[k], kept_b[k], atol=1e-5) for k in kept_a)


def _interrupted_after_one_epoch(data: Path, config: Config, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train ``config`` into ``out`` until epoch 2's resume point, which is never written."""
    import torch

    from vitrina.training import run_folder

    save = torch.save

    def killed_at_epoch_two(state, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(state, dict) and state.get("epoch") == 2:
            raise KeyboardInterrupt
        return save(state, path, *args, **kwargs)

    monkeypatch.setattr(run_folder.torch, "save", killed_at_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        api.train(data, config, out=out, progress=False, log=quiet)
    monkeypatch.setattr(run_folder.torch, "save", save)


def test_a_run_started_before_a_setting_existed_resumes_with_its_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run interrupted under an older vitrina (its config.yaml lacks a setting added since, and its
    resume point is stamped without it) resumes from its own settings (here with a setting that
    changes only how fast), says which settings it did not have, and keeps its config.yaml;
    settings that change what it computes are refused."""
    import torch
    import yaml

    from vitrina.training.run_folder import NOT_COMPUTED

    data = make_shapes_dataset(tmp_path / "shapes", per_class=8)
    config = scratch_config(tmp_path, **{"train.epochs": 3, "train.patience": 0, "train.refit": False})
    out = tmp_path / "old"
    _interrupted_after_one_epoch(data, config, out, monkeypatch)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["refit_tail"]  # as an older vitrina wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state = torch.load(out / "train_state.pt", weights_only=True)
    older = from_dict(saved).to_dict()  # the stamp as older versions computed it: every setting they had
    del older["train"]["refit_tail"]
    older["train"] = {k: v for k, v in older["train"].items() if f"train.{k}" not in NOT_COMPUTED}
    state["config_digest"] = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:16]
    torch.save(state, out / "train_state.pt")
    old_yaml = (out / "config.yaml").read_bytes()

    changed = copy.deepcopy(config)
    changed.train.refit = None  # as if the default had changed since
    with pytest.raises(ConfigError, match=r"train\.refit: False -> None.*resume without settings that change"):
        api.train(data, changed, out=out, resume=True, progress=False, log=quiet)
    with pytest.raises(ConfigError, match=r"train\.lr: None -> 0\.3"):
        api.train(data, out=out, resume=True, overrides={"train.lr": 0.3}, progress=False, log=quiet)
    messages: list[str] = []
    resumed = api.train(data, out=out, resume=True, overrides={"train.workers": 0}, progress=False, log=messages.append)
    assert [row["epoch"] for row in json.loads((resumed.run_dir / "history.json").read_text())] == [1, 2, 3]
    assert any("settings added since this run started: train.refit_tail=None" in m for m in messages), messages
    assert (out / "config.yaml").read_bytes() == old_yaml, "a resumed run keeps the settings it started with"


def test_a_run_whose_config_yaml_is_gone_resumes_with_the_settings_given_and_writes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=8)
    config = scratch_config(tmp_path, **{"train.epochs": 2, "train.patience": 0})
    out = tmp_path / "run"
    _interrupted_after_one_epoch(data, config, out, monkeypatch)
    (out / "config.yaml").unlink()
    resumed = api.train(data, config, out=out, resume=True, progress=False, log=quiet)
    assert resumed.metrics["n_images"] > 0
    assert resolve(out / "config.yaml").train.epochs == 2


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/vitrina-pickle-ran",))


@pytest.mark.parametrize("damage", ["truncated state", "pickled state", "weights of another network"])
def test_damaged_resume_files_are_clear_errors(tmp_path: Path, damage: str) -> None:
    import pickle

    import torch

    from vitrina.training.run_folder import RESUME_WEIGHTS

    data = make_shapes_dataset(tmp_path / "shapes", per_class=6)
    config = scratch_config(tmp_path, **{"train.epochs": 2})
    api.train(data, config, out=tmp_path / "run", progress=False, log=quiet)
    state = tmp_path / "run" / "train_state.pt"
    if damage == "truncated state":
        state.write_bytes(state.read_bytes()[:200])
    elif damage == "pickled state":  # a payload that would run code if unpickled freely
        state.write_bytes(pickle.dumps(Payload()))
    else:
        saved = torch.load(state, weights_only=True)
        torch.save({**saved, RESUME_WEIGHTS: {"conv.weight": torch.zeros(3)}}, state)
    with pytest.raises(ModelError) as error:
        api.train(data, config, out=tmp_path / "run", resume=True, progress=False, log=quiet)
    assert "start a new run" in str(error.value) and "weights_only" not in str(error.value)
    assert not Path("/tmp/vitrina-pickle-ran").exists()


def test_the_validation_photos_join_the_vote_after_their_figures_are_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch

    from vitrina.models.neighbours import NeighbourVote, VoteChoice
    from vitrina.training import extras, trainer

    def always_vote(bank, bank_labels, val_features, val_logits, val_labels, num_classes):  # type: ignore[no-untyped-def]
        vote = NeighbourVote(torch.from_numpy(bank), torch.from_numpy(bank_labels), num_classes, k=3, temperature=0.1, weight=0.5)
        return VoteChoice(vote, 0.0, 1.0, 1)

    before: list[np.ndarray] = []

    def grow(model, val_features, val_labels, seed, log):  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            before.append(model.classify(torch.from_numpy(val_features))[0].numpy())
        # joining under another class's label, each validation photo now votes against itself:
        # figures taken after this would differ from the ones before
        return extras.add_validation_to_vote(model, val_features, (val_labels + 1) % 3, seed, log)

    monkeypatch.setattr(extras, "fit_vote", always_vote)
    monkeypatch.setattr(trainer, "add_validation_to_vote", grow)
    data = make_shapes_dataset(tmp_path / "shapes")
    config = scratch_config(tmp_path, **{"train.epochs": 2, "train.flip_average": False})
    run = api.train(data, config, out=tmp_path / "run", progress=False, log=quiet).run_dir
    vote = json.loads((run / "model.json").read_text())["neighbours"]
    assert vote["validation_photos"] == 12 and vote["bank_size"] == 60 + 12
    reported = [float(line.split(",")[3]) for line in (run / "predictions_val.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(reported, before[0].max(1), atol=1e-5)  # the figures from before the photos joined
    # evaluating the run's own validation photos leaves them out of the bank: the figures training reported
    evaluation = api.evaluate(run, data, split="val", out=tmp_path / "eval", progress=False)
    assert "the 12 validation photos the neighbour vote holds were left out" in evaluation.metrics["note"]
    assert evaluation.metrics["accuracy"] == pytest.approx(json.loads((run / "metrics_val.json").read_text())["accuracy"])
