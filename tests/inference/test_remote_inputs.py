"""Catalogue exports as they come: CSV and Parquet tables with a column of paths or http(s) URLs,
downloaded from a real loopback server that redirects, fails, stalls, trickles and oversends."""
from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DEMO
from tests.inference.photo_server import PhotoServer
from vitrina import api
from vitrina.data.fetch import FetchError, FetchSettings, fetch
from vitrina.errors import DataError

PHOTOS = sorted(DEMO.glob("test/*/*.jpg"))[:6]
# Short limits so the misbehaving routes fail in about a second.
QUICK = FetchSettings(timeout=1.0, retries=1, backoff=0.05, max_mb=1.0, concurrency=4)


@pytest.fixture(scope="module")
def server() -> Iterator[PhotoServer]:
    with PhotoServer([p.read_bytes() for p in PHOTOS]) as running:
        yield running


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def test_every_misbehaving_url_is_an_error_row_and_the_job_completes(model: Path, server: PhotoServer, tmp_path: Path) -> None:
    routes = {
        "photo/0": None, "redirect/1": None, "photo/2": None,
        "missing": "HTTP 404", "loop": "too many redirects", "stall": "timed out after 1 s",
        "trickle": "timed out after 1 s", "huge": "too large (50.0 MB, the limit is 1 MB)",
        "endless": "too large (the limit is 1 MB)", "text": "not an image", "busy": "HTTP 503",
    }
    table = write_table(tmp_path / "export.csv", ["sku", "image_url"], [[f"sku{i}", server.url(r)] for i, r in enumerate(routes)])
    out = tmp_path / "rows.csv"
    started = time.monotonic()
    summary = api.predict(model, [table], out=out, column="image_url", fetch=QUICK, workers=2, batch_size=4, progress=False)
    assert time.monotonic() - started < 60
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [server.url(r) for r in routes]
    assert (summary.n_predicted, summary.n_errors) == (3, len(routes) - 3)
    for row, expected in zip(rows, routes.values()):
        if expected is None:
            assert row["error"] == "" and row["label_1"], row
        else:
            assert expected in row["error"] and row["label_1"] == "", (expected, row)
    assert "after 2 attempts" in rows[-1]["error"] and server.requests["/busy"] == 2  # 503: retried once
    assert server.requests["/missing"] == 1  # 404 is final


def test_downloaded_photos_get_the_rows_of_the_same_files_on_disk(model: Path, server: PhotoServer, tmp_path: Path) -> None:
    urls = [server.url(f"redirect/{i}") for i in range(len(PHOTOS))]
    table = write_table(tmp_path / "export.csv", ["url", "title"], [[u, "a product"] for u in urls])
    api.predict(model, [table], out=tmp_path / "remote.csv", fetch=QUICK, progress=False)  # the url column, found by name
    api.predict(model, [str(p) for p in PHOTOS], out=tmp_path / "local.csv", progress=False)
    remote, local = read_csv(tmp_path / "remote.csv"), read_csv(tmp_path / "local.csv")
    assert [r["path"] for r in remote] == urls
    for a, b in zip(remote, local):
        assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}


def test_a_parquet_table_of_paths_and_urls(model: Path, server: PhotoServer, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e .[dev])")
    import pyarrow.parquet as pq

    names = [PHOTOS[0].name, server.url("photo/1"), str(PHOTOS[2]), None, server.url("missing")]
    shutil_copy = (tmp_path / PHOTOS[0].name)
    shutil_copy.write_bytes(PHOTOS[0].read_bytes())  # a relative path: resolved against the table's folder
    pq.write_table(pa.table({"sku": [1, 2, 3, 4, 5], "picture": names}), tmp_path / "export.parquet")
    summary = api.predict(model, [tmp_path / "export.parquet"], out=tmp_path / "rows.jsonl", column="picture", fetch=QUICK, progress=False)
    assert (summary.n_inputs, summary.n_predicted, summary.n_errors) == (4, 3, 1)
    with pytest.raises(DataError, match="no path or URL column among sku, picture; name one with --column"):
        api.predict(model, [tmp_path / "export.parquet"], out=tmp_path / "again.csv", progress=False)


def test_a_flaky_server_is_retried_with_backoff(server: PhotoServer) -> None:
    settings = FetchSettings(timeout=2.0, retries=2, backoff=0.2)
    started = time.monotonic()
    assert fetch(server.url("flaky/2/3"), settings) == PHOTOS[3].read_bytes()
    assert time.monotonic() - started >= 0.2 + 0.4  # waited 0.2 s, then 0.4 s
    assert server.requests["/flaky/2/3"] == 3
    with pytest.raises(FetchError, match=r"HTTP 503 .* \(after 2 attempts\)"):
        fetch(server.url("flaky/5/3"), FetchSettings(timeout=2.0, retries=1, backoff=0.01))


def test_a_malformed_url_fails_at_once_without_retries() -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="bad URL"):
        fetch("http://127.0.0.1:9/a photo with spaces.jpg", FetchSettings(retries=3, backoff=1.0))
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("workers, concurrency, allowed", [(0, 3, 3), (2, 4, 4), (2, 1, 2)])
def test_downloads_at_once_stay_within_the_limit(model: Path, tmp_path: Path, workers: int, concurrency: int, allowed: int) -> None:
    """--fetch-concurrency bounds downloads across all workers (at least one each)."""
    with PhotoServer([p.read_bytes() for p in PHOTOS]) as fresh:
        urls = [fresh.url(f"slow/{i % len(PHOTOS)}?n={i}") for i in range(24)]
        settings = FetchSettings(timeout=5.0, concurrency=concurrency)
        summary = api.predict(model, urls, out=tmp_path / "rows.csv", fetch=settings, workers=workers, batch_size=8, progress=False)
        assert summary.n_predicted == 24
        assert 1 < fresh.in_flight_max <= allowed if allowed > 1 else fresh.in_flight_max == 1


def test_a_missing_column_is_a_clear_error(model: Path, tmp_path: Path) -> None:
    table = write_table(tmp_path / "export.csv", ["sku", "image_url"], [["a", str(PHOTOS[0])]])
    done = subprocess.run([sys.executable, "-m", "vitrina", "predict", str(model), str(table), "--column", "photo"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no column 'photo' (its columns: sku, image_url)" in done.stderr
