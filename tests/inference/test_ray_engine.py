"""`vitrina predict --engine ray`: the local engine's rows on Ray Data, resume, a killed worker,
an unreachable cluster."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DEMO
from tests.inference.photo_server import PhotoServer
from vitrina import api
from vitrina.errors import ConfigError

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e .[dev])")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A list file naming 40 demo photos, a truncated JPEG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("ray-catalogue")
    photos = sorted(DEMO.glob("test/*/*.jpg"))[:40]
    (root / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    (root / "notes.jpg").write_text("not a photo")
    listing = root / "catalogue.txt"
    listing.write_text("\n".join([*map(str, photos[:20]), str(root / "broken.jpg"), *map(str, photos[20:]), str(root / "notes.jpg")]) + "\n")
    return listing


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, object_store_memory=200 * 1024**2)
    yield
    ray.shutdown()


def predict(model: Path, listing: Path, out: Path, **options: object):  # type: ignore[no-untyped-def]
    return api.predict(model, [listing], out=out, batch_size=8, progress=False, **options)


def test_ray_gives_the_rows_of_the_local_engine(model: Path, catalogue: Path, tmp_path: Path, local_ray: None) -> None:
    local = predict(model, catalogue, tmp_path / "local.csv", workers=2)
    on_ray = predict(model, catalogue, tmp_path / "ray.csv", engine="ray")
    assert (on_ray.n_predicted, on_ray.n_errors) == (local.n_predicted, local.n_errors) == (40, 2)
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()


def test_ray_reads_urls_and_writes_parquet_as_the_local_engine(model: Path, catalogue: Path, tmp_path: Path, local_ray: None) -> None:
    """URLs from a CSV column (one fails) and Parquet shards: the local engine's rows."""
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install -e .[dev])")
    photos = [Path(line) for line in catalogue.read_text().split() if "broken" not in line and "notes" not in line][:12]
    with PhotoServer([p.read_bytes() for p in photos]) as server:
        urls = [server.url(f"photo/{i}") for i in range(len(photos))] + [server.url("missing")]
        table = tmp_path / "export.csv"
        table.write_text("sku,picture\n" + "".join(f"{i},{u}\n" for i, u in enumerate(urls)))
        local = api.predict(model, [table], out=tmp_path / "local.csv", column="picture", batch_size=8, progress=False)
        on_ray = api.predict(model, [table], out=f"{tmp_path}/shards/", column="picture", batch_size=8, progress=False, engine="ray")
    assert (on_ray.n_predicted, on_ray.n_errors) == (local.n_predicted, local.n_errors) == (12, 1)
    rows = [row for part in sorted((tmp_path / "shards").glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]
    with open(tmp_path / "local.csv", newline="") as fh:
        expected = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [r["path"] for r in expected] == urls
    assert [r["label_1"] or "" for r in rows] == [r["label_1"] for r in expected]
    assert all(abs(r["prob_1"] - float(e["prob_1"])) < 1e-5 for r, e in zip(rows, expected) if e["prob_1"])
    assert "HTTP 404" in rows[-1]["error"]


def test_ray_resumes_a_truncated_output(model: Path, catalogue: Path, tmp_path: Path, local_ray: None) -> None:
    predict(model, catalogue, tmp_path / "full.jsonl", engine="ray")
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:17]) + lines[17][:20])
    summary = predict(model, catalogue, partial, engine="ray", resume=True)
    assert summary.n_resumed == 17 and partial.read_text() == (tmp_path / "full.jsonl").read_text()


def test_an_unreachable_cluster_is_a_clear_error_in_bounded_time(model: Path, catalogue: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot be reached"):
        predict(model, catalogue, tmp_path / "rows.csv", engine="ray", address="127.0.0.1:9")
    assert time.monotonic() - started < 15
    with pytest.raises(ConfigError, match="HOST:PORT"):
        predict(model, catalogue, tmp_path / "rows2.csv", engine="ray", address="nowhere")


def model_actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"MapBatches(_Model)" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_killed_ray_worker_does_not_lose_or_repeat_rows(model: Path, catalogue: Path, tmp_path: Path) -> None:
    photos = [line for line in catalogue.read_text().splitlines() if line.endswith(".jpg") and "broken" not in line and "notes" not in line]
    listing = tmp_path / "big.txt"
    copies = tmp_path / "copies"
    copies.mkdir()
    names = []
    for i in range(600):  # 600 distinct paths (each row names its own file)
        target = copies / f"p{i:04d}.jpg"
        shutil.copy(photos[i % len(photos)], target)
        names.append(str(target))
    listing.write_text("\n".join(names) + "\n")
    expected = tmp_path / "local.csv"
    api.predict(model, [listing], out=expected, batch_size=8, progress=False, workers=1)

    out = tmp_path / "ray.csv"
    command = [sys.executable, "-m", "vitrina", "predict", str(model), str(listing), "--engine", "ray", "--batch-size", "8",
               "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 120, []
    while not killed and time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) > 20:
            for pid in model_actor_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=300)
    assert killed, "no Ray model worker was found to kill"
    assert process.returncode == 0, stderr[-2000:]
    with open(out, newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    assert sorted(paths) == sorted(names) and len(set(paths)) == len(paths)
    assert out.read_text() == expected.read_text()
