"""`vitrina clean` on real photos with planted problems: what it finds, what it writes, what it leaves alone."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CLEAN_TINY, CleanedRun, quiet
from vitrina import api
from vitrina.config import resolve
from vitrina.errors import ConfigError, DataError, VitrinaError
from vitrina.quality.clean import CleanSettings


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_files_are_never_changed(cleaned: CleanedRun) -> None:
    assert cleaned.before == cleaned.after


def test_writes_every_output(cleaned: CleanedRun) -> None:
    out = cleaned.result.out_dir
    for name in ("report.html", "suspects.csv", "duplicates.csv", "unreadable.csv", "exclude.csv", "suspects.png", "summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in page and "<script" not in page and "http" not in page.replace("http-equiv", "")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == ["efficientnet_lite0"] and summary["n_readable"] == summary["n_images"] - 1


def test_finds_the_unreadable_file(cleaned: CleanedRun) -> None:
    unreadable = rows(cleaned.result.out_dir / "unreadable.csv")
    assert [(Path(r["path"]), r["split"], r["label"]) for r in unreadable] == [(cleaned.planted.broken, "train", "shoes")]
    assert unreadable[0]["reason"]


def test_finds_exact_and_near_duplicates_across_splits(cleaned: CleanedRun) -> None:
    p = cleaned.planted
    groups: dict[str, list[dict]] = {}
    for r in rows(cleaned.result.out_dir / "duplicates.csv"):
        groups.setdefault(r["group"], []).append(r)
    members = {frozenset(Path(r["path"]) for r in g): g for g in groups.values()}
    exact = members[frozenset({p.exact_copy, p.exact_original})]
    near = members[frozenset({p.near_copy, p.near_original})]
    assert exact[0]["kind"] == "exact" and near[0]["kind"] == "near"
    assert exact[0]["leakage"] == near[0]["leakage"] == "True"
    assert len(groups) == 2, groups  # the demo photos themselves have no duplicates


def test_finds_the_wrong_label_and_the_off_topic_photo(cleaned: CleanedRun) -> None:
    p = cleaned.planted
    suspects = {Path(r["path"]): r for r in rows(cleaned.result.out_dir / "suspects.csv")}
    wrong = suspects[p.mislabelled]
    assert wrong["flagged"] == "label" and wrong["label"] == "hat" and wrong["suggested"] == "pants"
    assert "off-topic" in suspects[p.off_topic]["flagged"]
    ranks = sorted(int(r["rank"]) for r in suspects.values())
    assert ranks == list(range(1, len(ranks) + 1))
    # The planted problems come first; few false alarms among 3 distinct classes of real photos.
    # (The off-topic ranking also weighs atypical ImageNet concepts, which on a demo this small
    # can put a real but unusual photo beside the synthetic one.)
    assert int(suspects[p.mislabelled]["rank"]) <= 2 and int(suspects[p.off_topic]["rank"]) <= 4
    assert sum(bool(r["flagged"]) for r in suspects.values()) <= 5
    # Copies are listed once: of the exact and the near duplicate pair, at most one member each.
    assert len({p.exact_copy, p.exact_original} & set(suspects)) <= 1
    assert len({p.near_copy, p.near_original} & set(suspects)) <= 1


def test_exclusion_list_keeps_the_test_copy_and_drops_the_train_copies(cleaned: CleanedRun) -> None:
    p = cleaned.planted
    excluded = {Path(r["path"]): r["reason"] for r in rows(cleaned.result.exclude_file)}
    assert {p.exact_copy, p.near_copy, p.mislabelled, p.off_topic} <= set(excluded)
    assert p.exact_original not in excluded and p.near_original not in excluded
    assert "duplicate of" in excluded[p.exact_copy] and "pants" in excluded[p.mislabelled]


def test_train_honours_the_exclusion_list(cleaned: CleanedRun, quality_cache: Path, tmp_path: Path) -> None:
    exclude = cleaned.result.exclude_file
    listed = {r["path"] for r in rows(exclude)}
    settings = {"train.mode": "scratch", "model.name": "cnn1", "model.input_size": 32, "train.epochs": 1, "train.batch_size": 16,
                "train.workers": 1, "train.patience": 0, "train.cache_dir": str(quality_cache), "data.exclude": str(exclude)}
    messages: list[str] = []
    run = api.train(cleaned.planted.root, resolve(overrides=settings), out=tmp_path / "run", progress=False, log=messages.append)
    used = {path for paths in json.loads((run.run_dir / "splits.json").read_text())["splits"].values() for path in paths}
    assert not used & listed
    assert run.metrics["excluded"]["count"] == len(listed)
    assert any(f"left out {len(listed)} files" in m for m in messages)


def test_a_malformed_exclusion_list_is_a_clear_error(cleaned: CleanedRun, tmp_path: Path) -> None:
    bad = tmp_path / "exclude.csv"
    bad.write_text("file name,why\na.jpg,dup\n")
    with pytest.raises(DataError, match="needs a header row naming its path column"):
        api.train(cleaned.planted.root, resolve(overrides={"data.exclude": str(bad)}), out=tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(DataError, match="exclude file not found"):
        api.train(cleaned.planted.root, resolve(overrides={"data.exclude": str(tmp_path / "none.csv")}), out=tmp_path / "run", progress=False, log=quiet)


def test_bad_settings_and_paths_are_clear_errors(dirty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = resolve(overrides=CLEAN_TINY)
    with pytest.raises(ConfigError, match="folds"):
        api.clean(dirty.root, out=tmp_path / "a", config=config, settings=CleanSettings(folds=1), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="unknown kind"):
        api.clean(dirty.root, out=tmp_path / "b", config=config, settings=CleanSettings(exclude_kinds="labels,typos"), progress=False, log=quiet)
    with pytest.raises(VitrinaError, match="unknown model"):
        api.clean(dirty.root, out=tmp_path / "c", config=config, model="efficientnet_lite9", progress=False, log=quiet)
    taken = tmp_path / "taken.csv"
    taken.write_text("path\n")
    with pytest.raises(VitrinaError, match="already exists"):
        api.clean(dirty.root, out=tmp_path / "d", config=config, exclude_out=taken, progress=False, log=quiet)
    with pytest.raises(DataError, match="dataset not found"):
        api.clean(tmp_path / "missing", out=tmp_path / "e", config=config, progress=False, log=quiet)


def test_cli_prints_errors_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vitrina", "clean", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "vitrina clean: error: dataset not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vitrina", "clean", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--exclude-out" in proc.stdout


def test_backbones_take_an_optional_input_size() -> None:
    from vitrina.errors import ConfigError
    from vitrina.quality.settings import CleanSettings, model_and_size

    assert model_and_size("efficientnet_lite0@288") == ("efficientnet_lite0", 288)
    assert model_and_size("efficientnet_lite2") == ("efficientnet_lite2", None)
    for bad in ("efficientnet_lite0@big", "efficientnet_lite0@4"):
        with pytest.raises(ConfigError, match="size after @"):
            CleanSettings(models=bad).check()


def test_concept_typicality_is_lowest_for_a_photo_unlike_its_class() -> None:
    import numpy as np

    from vitrina.quality.offtopic import concept_typicality

    rng = np.random.default_rng(0)
    concepts = np.full((9, 4), 0.02)
    concepts[:4, 0] = 0.94  # class 0: concept 0
    concepts[4:8, 1] = 0.94  # class 1: concept 1
    concepts[8, 3] = 0.94  # labelled class 0, but concept 3: a moped among phones
    concepts += rng.uniform(0, 0.01, concepts.shape)
    concepts /= concepts.sum(1, keepdims=True)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    typicality = concept_typicality(concepts, labels)
    assert int(np.argmin(typicality)) == 8
    # leave-one-out: a photo alone in its class is compared with all photos, and stays finite
    assert np.isfinite(concept_typicality(concepts[:5], np.array([0, 0, 0, 0, 1]))).all()
