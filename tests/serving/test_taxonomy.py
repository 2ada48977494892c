"""A model trained with coarse and fine labels judges a listing at the level it was declared."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import DEMO, quiet, scratch_settings
from tests.serving.conftest import demo_photos, serve_settings, upload
from vitrina import api
from vitrina.config import resolve
from vitrina.serving.app import create_app

PARENTS = {"t-shirt": "tops", "shirt": "tops", "longsleeve": "tops", "outwear": "tops", "dress": "tops",
           "pants": "bottoms", "shorts": "bottoms", "skirt": "bottoms", "hat": "accessories", "shoes": "footwear"}


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("taxonomy")
    (folder / "coarse.csv").write_text("".join(f"{fine},{parent}\n" for fine, parent in PARENTS.items()))
    settings = scratch_settings(folder / "cache", **{"data.coarse_map": str(folder / "coarse.csv"), "train.epochs": 2})
    return api.train(DEMO, resolve(overrides=settings), out=folder / "run", progress=False, log=quiet).run_dir


def test_a_fine_mismatch_inside_one_parent_is_a_coarse_match(coarse_run: Path, tmp_path: Path) -> None:
    # confidence 0: every verdict is sure, so the levels alone decide
    with TestClient(create_app(serve_settings(coarse_run, tmp_path, confidence=0.0))) as client:
        model = client.get("/v1/model").json()
        assert model["coarse_of"] == PARENTS
        shifted = 0
        for photo in demo_photos("shirt") + demo_photos("pants"):
            answer = client.post("/v1/predict", files={"image": upload(photo)}, params={"top_k": 10}).json()
            predicted, sums = answer["predicted"], {}
            for entry in answer["top"]:
                sums[PARENTS[entry["label"]]] = sums.get(PARENTS[entry["label"]], 0.0) + entry["probability"]
            likeliest = max(sums, key=sums.get)
            coarse = client.post("/v1/check", files={"image": upload(photo)}, data={"category": likeliest}).json()
            assert (coarse["verdict"], coarse["predicted"], coarse["declared_level"]) == ("match", likeliest, "coarse")
            if PARENTS[predicted] != likeliest:
                continue  # the class's own parent is not the likeliest one: no fine match inside it to compare
            sibling = next(name for name, parent in PARENTS.items() if parent == likeliest and name != predicted)
            fine = client.post("/v1/check", files={"image": upload(photo)}, data={"category": sibling}).json()
            assert (fine["verdict"], fine["suggestion"], fine["declared_level"], fine["suggestion_level"]) == ("mismatch", predicted, "fine", "fine")
            shifted += 1  # a fine-level mismatch that is a coarse-level match
        assert shifted >= 1
        other = "footwear" if likeliest != "footwear" else "tops"
        wrong = client.post("/v1/check", files={"image": upload(photo)}, data={"category": other}).json()
        assert (wrong["verdict"], wrong["suggestion"], wrong["suggestion_level"]) == ("mismatch", predicted, "fine")
        logged = client.get("/v1/checks", params={"limit": 1}).json()["checks"][0]
        assert (logged["declared_level"], logged["suggestion"], logged["suggestion_level"]) == ("coarse", predicted, "fine")
        refused = client.post("/v1/check", files={"image": upload(photo)}, data={"category": "furniture"})
        assert refused.status_code == 422 and "or a parent category: accessories, bottoms, footwear, tops" in refused.json()["detail"]


def test_a_model_without_parents_refuses_them(make_client: Callable[..., TestClient]) -> None:
    answer = make_client().post("/v1/check", files={"image": upload(demo_photos("hat")[0])}, data={"category": "tops"})
    assert answer.status_code == 422 and "parent" not in answer.json()["detail"]
