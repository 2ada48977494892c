"""The whole loop on real photos: a model trained with a third of one class filed under another is
served; moderators review and correct its checks; the reviewed photos are exported and a new model
trained on the original photos plus them is promoted, and the running server answers with it
without a restart. A model trained on shuffled labels is refused and changes nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import quiet, scratch_settings, shuffle_labels
from tests.serving.conftest import RunningServer
from vitrina import api
from vitrina.config import resolve
from vitrina.serving.model import files_version, model_files

pytestmark = pytest.mark.slow
SIZE = 40


def shape(kind: str, rng: np.random.Generator) -> Image.Image:
    """A noisy light photo with one coloured shape: a big or a small disc, a bar or a square."""
    arr = rng.integers(200, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cx, cy = rng.integers(12, SIZE - 12, size=2)
    masks = {
        "big-disc": (xx - cx) ** 2 + (yy - cy) ** 2 < 81, "small-disc": (xx - cx) ** 2 + (yy - cy) ** 2 < 12,
        "bar": (abs(xx - cx) < 3) & (abs(yy - cy) < 12), "square": (abs(xx - cx) < 8) & (abs(yy - cy) < 8),
    }
    colour = {"bar": (40, 180, 60), "square": (40, 60, 210)}.get(kind, (210, 40, 40))
    arr[masks[kind]] = np.clip(np.array(colour) + rng.integers(-20, 20, size=3), 0, 255)
    return Image.fromarray(arr)


def write(folder: Path, kind: str, count: int, rng: np.random.Generator, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}-{kind}-{i:03d}.jpg"
        shape(kind, rng).save(path, quality=92)
        paths.append(path)
    return paths


def catalogue(root: Path) -> list[Path]:
    """original/train (small discs, a third of the discs, filed under bar), original/test (held out,
    labelled right), and the photos sellers will upload as discs; returns those."""
    rng = np.random.default_rng(7)
    train, test = root / "original" / "train", root / "original" / "test"
    write(train / "disc", "big-disc", 16, rng, "train")
    write(train / "bar", "small-disc", 8, rng, "train")  # the misfiled third
    write(train / "bar", "bar", 24, rng, "train")
    write(train / "square", "square", 24, rng, "train")
    for kind, label in (("big-disc", "disc"), ("small-disc", "disc"), ("bar", "bar"), ("square", "square")):
        write(test / label, kind, 10, rng, "test")
    return write(root / "uploads", "small-disc", 24, rng, "upload") + write(root / "uploads", "big-disc", 8, rng, "upload")


def settings(cache: Path) -> dict:
    return scratch_settings(cache, **{"train.epochs": 12})


def test_reviews_retrain_and_promote_a_better_model_into_a_running_server(tmp_path: Path) -> None:
    started = time.monotonic()
    uploads = catalogue(tmp_path)
    original = tmp_path / "original"
    first = api.train(original, resolve(overrides=settings(tmp_path / "cache")), out=tmp_path / "first", progress=False, log=quiet).run_dir
    served = tmp_path / "deploy" / "model"
    shutil.copytree(first, served)
    (tmp_path / "keys").write_text("anna:anna-key\nshop:shop-key\n")
    server = RunningServer(served, "--db", str(tmp_path / "log.db"), "--api-keys", str(tmp_path / "keys"), "--reload-interval", "0.2")
    try:
        shop, anna = {"X-API-Key": "shop-key"}, {"X-API-Key": "anna-key"}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for photo in uploads:
                client.post("/v1/check", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data={"category": "disc"},
                            headers=shop).raise_for_status()
            while queue := client.get("/v1/reviews/queue", params={"verdict": ["match", "mismatch", "uncertain"]}, headers=anna).json()["checks"]:
                for check in queue:
                    body = {"action": "confirm"} if check["predicted"] == "disc" else {"action": "correct", "category": "disc"}
                    client.post(f"/v1/checks/{check['id']}/review", json=body, headers=anna).raise_for_status()
        subprocess.run([sys.executable, "-m", "vitrina", "review", "export", "--db", str(tmp_path / "log.db"), "--out",
                        str(tmp_path / "reviewed")], check=True, capture_output=True, timeout=120)
        (tmp_path / "dataset.yaml").write_text("train: [original/train, reviewed/labels.csv]\ntest: original/test\n")
        second = api.train(tmp_path / "dataset.yaml", resolve(overrides=settings(tmp_path / "cache")), out=tmp_path / "second",
                           progress=False, log=quiet).run_dir

        promoted = subprocess.run([sys.executable, "-m", "vitrina", "promote", str(second), "--over", str(served), "--data", str(original)],
                                  capture_output=True, text=True, timeout=300)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        decision = json.loads((served.parent / "promotions.jsonl").read_text().splitlines()[-1])
        comparison = api.promote(second, first, original, log=quiet).comparison  # the per-class figures, same photos
        [disc] = [row for row in comparison.per_class if row["class"] == "disc"]
        assert disc["accuracy_new"] > disc["accuracy_old"], disc  # better on held-out photos of the misfiled class
        assert decision["promoted"] and decision["accuracy_new"] >= decision["accuracy_old"]

        new_version = files_version(model_files(served))
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/v1/model", headers=anna, timeout=30).json()["version"] != new_version:
            assert time.monotonic() < deadline, "the running server did not pick up the promoted model"
            time.sleep(0.2)

        shuffled = tmp_path / "shuffled"
        shuffle_labels(original / "train", shuffled / "train")
        noise = api.train(shuffled, resolve(overrides=settings(tmp_path / "cache")), out=tmp_path / "noise", progress=False, log=quiet).run_dir
        refused = subprocess.run([sys.executable, "-m", "vitrina", "promote", str(noise), "--over", str(served), "--data", str(original)],
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1 and "not promoted" in refused.stdout
        assert files_version(model_files(served)) == new_version
        assert server.process.poll() is None  # the same server process throughout
    finally:
        server.stop()
    assert time.monotonic() - started < 180
