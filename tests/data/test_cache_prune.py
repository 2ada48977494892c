"""Cache maintenance: what the caches hold, pruning by age and by size, never touching anything else."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from vitrina.cli import main
from vitrina.data.cache import cache_entries, decode_samples, prune_cache
from vitrina.data.samples import Sample
from vitrina.errors import VitrinaError
from vitrina.preprocess import Preprocess

DAY = 86400.0
NOW = time.time()


def entry(root: Path, kind: str, name: str, size: int, days_ago: float, folder: bool = True) -> Path:
    """A cache entry of ``size`` bytes last used ``days_ago`` days before NOW."""
    path = root / kind / name
    target = path / "data.bin" if folder else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x" * size)
    stamp = NOW - days_ago * DAY
    os.utime(target, (stamp, stamp))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    entry(root, "decoded", "old", 500, 30)
    entry(root, "decoded", "recent", 400, 1)
    entry(root, "features", "middle", 300, 10)
    entry(root, "onnx", "graph.onnx", 200, 5, folder=False)
    entry(root, "decoded", "writing.tmp123", 100, 0.01)  # a job is filling it right now
    (root / "notes.txt").write_text("not a cache entry")
    (root / "other").mkdir()
    (root / "other" / "keep.bin").write_bytes(b"y" * 1000)
    return root


def names(entries) -> set[str]:  # type: ignore[no-untyped-def]
    return {e.path.name for e in entries}


def test_entries_are_listed_oldest_use_first_with_their_sizes(cache: Path) -> None:
    entries = cache_entries(cache)
    assert [e.path.name for e in entries] == ["old", "middle", "graph.onnx", "recent", "writing.tmp123"]
    assert [e.size for e in entries] == [500, 300, 200, 400, 100]
    assert {e.kind for e in entries} == {"decoded", "features", "onnx"}


def test_prune_by_age(cache: Path) -> None:
    removed = prune_cache(cache, older_than_days=7, now=NOW)
    assert names(removed) == {"old", "middle"}
    assert names(cache_entries(cache)) == {"graph.onnx", "recent", "writing.tmp123"}


def test_prune_by_size_removes_least_recently_used_first(cache: Path) -> None:
    removed = prune_cache(cache, max_bytes=600, now=NOW)
    assert [e.path.name for e in removed] == ["old", "middle", "graph.onnx"]  # 1500 -> 500 bytes
    assert sum(e.size for e in cache_entries(cache)) == 500


def test_unfinished_entries_and_other_files_are_never_removed(cache: Path) -> None:
    prune_cache(cache, max_bytes=0, now=NOW)
    assert names(cache_entries(cache)) == {"writing.tmp123"}
    assert (cache / "notes.txt").is_file() and (cache / "other" / "keep.bin").is_file()


def test_dry_run_removes_nothing(cache: Path) -> None:
    before = names(cache_entries(cache))
    assert names(prune_cache(cache, older_than_days=0, dry_run=True, now=NOW)) == {"old", "middle", "graph.onnx", "recent"}
    assert names(cache_entries(cache)) == before


def test_prune_needs_a_limit(cache: Path) -> None:
    with pytest.raises(VitrinaError, match="older-than"):
        prune_cache(cache)
    with pytest.raises(VitrinaError, match="negative"):
        prune_cache(cache, max_bytes=-1)


def test_a_cache_hit_counts_as_a_use(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, size=(8, 8), dtype=np.uint8)
    samples = [Sample(f"in-memory-{i}", "a", pixels=pixels) for i in range(3)]
    preprocess = Preprocess(input_size=8, mean=(0.5,), std=(0.5,), channels=1, resize="squash")
    decode_samples(samples, preprocess, tmp_path, workers=1, progress=False)
    (stale,) = cache_entries(tmp_path)
    for f in stale.path.iterdir():
        os.utime(f, (time.time() - 3 * DAY,) * 2)
    decode_samples(samples, preprocess, tmp_path, workers=1, progress=False)
    (used,) = cache_entries(tmp_path)
    assert time.time() - used.last_used < DAY
    assert prune_cache(tmp_path, older_than_days=2) == []


def test_cli_shows_and_prunes(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "decoded" in out and "features" in out and "onnx" in out
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "0", "--dry-run"]) == 0
    assert "would remove 4 entries" in capsys.readouterr().out
    assert len(cache_entries(cache)) == 5
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 2
    assert "error: say what to prune" in capsys.readouterr().err
