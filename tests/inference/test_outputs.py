"""Parquet outputs of `vitrina predict`: one file or a folder of shards, the CSV's rows, and after
kill -9 and --resume every input exactly once."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import DEMO
from vitrina import api
from vitrina.errors import ConfigError
from vitrina.inference import outputs

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e .[dev])")
import pyarrow.parquet as pq  # noqa: E402 - after the skip above

PHOTOS = sorted(str(p) for p in DEMO.glob("test/*/*.jpg"))[:30]


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 demo photos, a text file named .jpg and a missing file."""
    root = tmp_path_factory.mktemp("outputs")
    (root / "notes.jpg").write_text("not a photo")
    names = [*PHOTOS[:10], str(root / "notes.jpg"), *PHOTOS[10:], str(root / "gone.jpg")]
    (root / "catalogue.txt").write_text("\n".join(names) + "\n")
    return root / "catalogue.txt"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def same_rows(table: object, csv_rows: list[dict[str, str]]) -> None:
    """A Parquet table holds the CSV's rows: same order, labels and errors; probabilities within 1e-6."""
    rows = table.to_pylist()  # type: ignore[attr-defined]
    assert [r["path"] for r in rows] == [r["path"] for r in csv_rows]
    for got, want in zip(rows, csv_rows):
        assert (got["error"] or "") == want["error"]
        assert (got["label_1"] or "") == want["label_1"]
        if want["prob_1"]:
            assert abs(got["prob_1"] - float(want["prob_1"])) < 1e-6
            assert str(got["uncertain"]).lower() == want["uncertain"]
        else:
            assert got["prob_1"] is None and got["uncertain"] is None


def test_a_parquet_file_and_shards_hold_the_rows_of_the_csv(model: Path, listing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api.predict(model, [listing], out=tmp_path / "rows.csv", top_k=2, batch_size=8, progress=False)
    expected = read_csv(tmp_path / "rows.csv")
    api.predict(model, [listing], out=tmp_path / "rows.parquet", top_k=2, batch_size=8, progress=False)
    table = pq.read_table(tmp_path / "rows.parquet")
    assert table.schema.field("prob_1").type == pa.float32() and table.schema.field("uncertain").type == pa.bool_()
    same_rows(table, expected)
    assert not (tmp_path / ".rows.parquet.parts").exists()

    monkeypatch.setattr(outputs, "SHARD_ROWS", 8)
    api.predict(model, [listing], out=f"{tmp_path}/shards/", top_k=2, batch_size=8, progress=False)
    parts = sorted((tmp_path / "shards").iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(4)]  # 32 rows, 8 a shard
    same_rows(pa.concat_tables([pq.read_table(p) for p in parts]), expected)


def test_an_existing_output_needs_resume(model: Path, listing: Path, tmp_path: Path) -> None:
    for out in (tmp_path / "rows.parquet", f"{tmp_path}/shards/"):
        api.predict(model, [listing], out=out, batch_size=8, progress=False)
        with pytest.raises(ConfigError, match="--resume"):
            api.predict(model, [listing], out=out, batch_size=8, progress=False)
        again = api.predict(model, [listing], out=out, batch_size=8, progress=False, resume=True)
        assert (again.n_resumed, again.n_predicted, again.n_errors) == (32, 0, 0)
    with pytest.raises(ConfigError, match="ending in .csv, .jsonl or .parquet"):
        api.predict(model, [listing], out=tmp_path / "rows.xlsx", progress=False)


KILLED_RUN = """
import sys
from vitrina.inference import outputs
outputs.SHARD_ROWS = 64
from vitrina.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "shards"])
def test_a_killed_run_resumes_to_every_input_once(model: Path, listing: Path, tmp_path: Path, kind: str) -> None:
    """kill -9 mid-catalogue, then --resume: the rows of one uninterrupted run, each input once."""
    names = listing.read_text().split()
    copies = tmp_path / "copies.txt"  # 1,280 inputs: the 32 names under 40 distinct spellings
    copies.write_text("\n".join(f"{Path(n).parent}/{'./' * i}{Path(n).name}" for i in range(40) for n in names) + "\n")
    out = tmp_path / "killed.parquet" if kind == "file" else tmp_path / "killed"
    target = str(out) if kind == "file" else f"{out}/"
    parts = out.with_name(f".{out.name}.parts") if kind == "file" else out
    command = [sys.executable, "-c", KILLED_RUN, "predict", str(model), str(copies), "--batch-size", "8", "--workers", "1", "--quiet"]
    subprocess.run([*command, "--out", str(tmp_path / "full.csv")], check=True, capture_output=True, timeout=300)

    process = subprocess.Popen([*command, "--out", target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    written = len(list(parts.glob("part-*.parquet")))
    assert 3 <= written < 1280 // 64, "the kill should land mid-catalogue"

    resumed = subprocess.run([*command, "--out", target, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{written * 64} already in the output" in resumed.stderr
    table = pq.read_table(out) if kind == "file" else pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    same_rows(table, read_csv(tmp_path / "full.csv"))
    assert len(set(table.column("path").to_pylist())) == table.num_rows == 1280
