"""Catalogue prediction: input forms, error rows, CSV/JSONL output, resume without duplicates or gaps."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from tests import imagegen
from vitrina import api
from vitrina.errors import ConfigError, DataError
from vitrina.inference.batch import expand_inputs, predict_catalogue
from vitrina.description import Thresholds
from vitrina.export.loading import load_predictor
from vitrina.inference.predictor import Predictor

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 good photos in nested folders plus a truncated JPEG, a text file named .jpg, an empty
    file, an enormous PNG and a file that is not an image by name (ignored)."""
    root = tmp_path_factory.mktemp("catalogue")
    for i, source in enumerate(sorted(DEMO.glob("test/*/*.jpg"))[:30]):
        folder = root / ("shelf-a" if i % 2 else "shelf-b") / f"row{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / f"item{i:02d}.jpg")
    good = next(root.rglob("*.jpg")).read_bytes()
    (root / "shelf-a" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (root / "shelf-a" / "notes.jpg").write_text("this is a text file")
    (root / "shelf-b" / "empty.jpg").write_bytes(b"")
    (root / "shelf-b" / "huge.png").write_bytes(imagegen.huge_png_bytes())
    (root / "readme.txt").write_text("not listed")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def small_batches(model: Path, size: int = 8) -> Predictor:
    predictor = load_predictor(model)
    predictor.batch_size = size
    return predictor


def test_folder_with_bad_files_gives_error_rows_and_predicts_the_rest(model: Path, catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    summary = api.predict(model, [catalogue], out=out, top_k=3, progress=False, workers=0)
    rows = read_csv(out)
    predictor = load_predictor(model)
    flag = ["uncertain"] if predictor.rule().flags_uncertain else []  # trained models carry a confidence threshold
    flag += ["unknown", "unknown_score"] if predictor.detects_unknown else []  # and an unknown-photo score, in the ONNX graph too
    assert predictor.backend.name == "onnx" and predictor.detects_unknown
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3", *flag, "error"]
    assert [r["path"] for r in rows] == expand_inputs([catalogue])
    assert len(rows) == 34 and summary.n_inputs == 34
    assert (summary.n_predicted, summary.n_errors) == (30, 4)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert "truncated" in errors["broken.jpg"]
    assert "not an image" in errors["notes.jpg"]
    assert "empty file" in errors["empty.jpg"]
    assert "too many pixels" in errors["huge.png"]
    for row in rows:
        if row["error"]:
            assert row["label_1"] == row["prob_1"] == ""
        else:
            probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
            assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
            assert row["label_1"]


def test_worker_processes_give_the_same_rows_as_one_process(model: Path, catalogue: Path, tmp_path: Path) -> None:
    predict_catalogue(small_batches(model), [catalogue], tmp_path / "serial.csv", progress=False, workers=0)
    summary = predict_catalogue(small_batches(model), [catalogue], tmp_path / "parallel.csv", progress=False, workers=2)
    assert summary.workers == 2
    assert (tmp_path / "parallel.csv").read_text() == (tmp_path / "serial.csv").read_text()


def test_torch_backend_with_decoding_workers_matches_onnx(model: Path, catalogue: Path, tmp_path: Path) -> None:
    predict_catalogue(small_batches(model), [catalogue], tmp_path / "onnx.csv", progress=False, workers=0)
    torch_predictor = load_predictor(model.parent, backend="torch")
    torch_predictor.batch_size = 8
    summary = predict_catalogue(torch_predictor, [catalogue], tmp_path / "torch.csv", progress=False, workers=1)
    assert (summary.backend, summary.workers) == ("torch", 1)
    for a, b in zip(read_csv(tmp_path / "onnx.csv"), read_csv(tmp_path / "torch.csv"), strict=True):
        assert (a["path"], a["label_1"], a["error"]) == (b["path"], b["label_1"], b["error"])
        if not a["error"]:
            assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=1e-5)


def test_globs_csv_and_list_files_name_the_inputs(model: Path, catalogue: Path, tmp_path: Path) -> None:
    listed = sorted(catalogue.rglob("item*.jpg"))[:4]
    table = tmp_path / "lists" / "catalogue.csv"
    table.parent.mkdir()
    relative = Path("..", "..", listed[1].relative_to(tmp_path.parent))  # relative to the CSV's folder
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "path"])
        writer.writerow(["A1", str(listed[0])])
        writer.writerow(["A2", str(relative)])
    plain = tmp_path / "lists" / "more.txt"
    plain.write_text(f"# two more\n{listed[2]}\n\n{listed[3]}\n{listed[0]}\n")
    bare = tmp_path / "lists" / "bare.csv"
    bare.write_text(f"{listed[3]},A4\n{listed[2]},A3\n")  # no header: paths in the first column
    assert expand_inputs([bare]) == [str(listed[3]), str(listed[2])]
    pattern = str(catalogue / "shelf-b" / "**" / "item0*.jpg")
    inputs = expand_inputs([table, plain, pattern])
    assert inputs[:4] == [str(listed[0]), str(table.parent / relative), str(listed[2]), str(listed[3])]
    assert all(Path(p).name.startswith("item0") for p in inputs[4:]) and len(inputs) > 4
    assert len(inputs) == len(set(inputs)), "a path named twice is predicted once"
    summary = api.predict(model, [table, plain, pattern], out=tmp_path / "out.jsonl", progress=False, workers=0)
    assert summary.n_errors == 0 and summary.n_predicted == len(inputs)


def test_bad_inputs_are_clear_errors(model: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        expand_inputs([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="no files match"):
        expand_inputs([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match=r"\.csv, \.jsonl or \.parquet"):
        api.predict(model, [DEMO / "test"], out=tmp_path / "out.xlsx", progress=False)
    with pytest.raises(ConfigError, match="top-k"):
        api.predict(model, [DEMO / "test"], out=tmp_path / "out.csv", top_k=0, progress=False)


def test_jsonl_rows(model: Path, catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.jsonl"
    api.predict(model, [catalogue], out=out, top_k=2, progress=False, workers=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 34
    good = next(r for r in rows if r["error"] is None)
    assert {"path", "top", "unknown", "unknown_score", "error"} <= set(good) <= {"path", "top", "uncertain", "unknown", "unknown_score", "error"}
    assert len(good["top"]) == 2 and isinstance(good["unknown"], bool) and good["unknown_score"] >= 0
    assert set(good["top"][0]) == {"label", "prob"}
    bad = next(r for r in rows if r["path"].endswith("notes.jpg"))
    assert bad["top"] == [] and "not an image" in bad["error"]


def test_uncertain_column_when_the_model_has_thresholds(model: Path, catalogue: Path, tmp_path: Path) -> None:
    plain = load_predictor(model)
    predictor = Predictor(plain.backend, plain.description.with_changes(thresholds=Thresholds(confidence=0.5)), model)
    predict_catalogue(predictor, [catalogue], tmp_path / "out.csv", top_k=1, progress=False, workers=0)
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == ["path", "label_1", "prob_1", "uncertain", "unknown", "unknown_score", "error"]
    for row in rows:
        if not row["error"]:
            # the one decision rule: uncertain when the confidence is low or the photo is unknown
            expected = float(row["prob_1"]) < 0.5 or row["unknown"] == "true"
            assert row["uncertain"] == ("true" if expected else "false")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_continues_a_truncated_file_without_duplicates(model: Path, catalogue: Path, tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    predict_catalogue(small_batches(model), [catalogue], full, top_k=3, progress=False, workers=0)
    lines = full.read_text().splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    partial = tmp_path / f"partial{suffix}"
    partial.write_text("".join(lines[: header + 12]) + lines[header + 12][:17])  # 12 rows and half of the 13th
    summary = predict_catalogue(small_batches(model), [catalogue], partial, top_k=3, resume=True, progress=False, workers=2)
    assert summary.n_resumed == 12
    assert summary.n_predicted + summary.n_errors == len(lines) - header - 12
    assert partial.read_text() == full.read_text()


def test_existing_output_needs_resume_and_the_same_columns(model: Path, catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    predict_catalogue(small_batches(model), [catalogue], out, top_k=2, progress=False, workers=0)
    before = out.read_text()
    with pytest.raises(ConfigError, match="--resume"):
        predict_catalogue(small_batches(model), [catalogue], out, top_k=2, progress=False, workers=0)
    with pytest.raises(ConfigError, match="columns"):
        predict_catalogue(small_batches(model), [catalogue], out, top_k=3, resume=True, progress=False, workers=0)
    summary = predict_catalogue(small_batches(model), [catalogue], out, top_k=2, resume=True, progress=False, workers=0)
    assert (summary.n_resumed, summary.n_predicted, summary.n_errors) == (34, 0, 0)
    assert out.read_text() == before


def test_without_out_rows_go_to_standard_output(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = sorted((DEMO / "test" / "hat").glob("*.jpg"))[:3]
    api.predict(model, images, top_k=1, progress=False, workers=0)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in rows] == [str(p) for p in images]


@pytest.mark.slow
def test_a_killed_predict_resumes_to_the_same_rows(model: Path, catalogue: Path, tmp_path: Path) -> None:
    """kill -9 of `vitrina predict` mid-catalogue, then --resume: every input once, the same rows as one uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    photos = sorted(str(p) for p in catalogue.rglob("item*.jpg"))
    listing = tmp_path / "catalogue.txt"
    listing.write_text("\n".join(photos * 40) + "\n")  # 1,200 inputs
    command = [sys.executable, "-m", "vitrina", "predict", str(model), str(listing), "--batch-size", "8", "--workers", "1", "--quiet"]
    full, killed = tmp_path / "full.csv", tmp_path / "killed.csv"
    subprocess.run([*command, "--out", str(full)], check=True, capture_output=True, timeout=300)

    process = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not killed.exists() or killed.stat().st_size < 20_000) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    rows_at_kill = len(read_csv(killed))
    assert 0 < rows_at_kill < len(photos) * 40, "the kill should land mid-catalogue"

    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert killed.read_text() == full.read_text()
