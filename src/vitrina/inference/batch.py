"""Streaming prediction over whole catalogues: bounded memory, parallel decoding, resumable output.

Inputs (files, folders searched recursively, globs, CSV or list files of paths) expand to one
ordered list of paths. Worker processes take whole batches: with an ONNX model each worker
decodes, resizes and runs its own single-threaded session and passes back probabilities; with
PyTorch the workers decode (uint8 arrays) and the main process runs the model. At most a few
batches are in flight, so memory stays flat however large the catalogue. Each batch's rows are
written and flushed before the next, in input order: an interrupted run leaves a valid prefix
that ``resume`` continues (a half-written last line is dropped and redone).
"""
from __future__ import annotations

import csv
import glob
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from vitrina.data.images import DEFAULT_MAX_PIXELS, is_image_file
from vitrina.errors import ConfigError, DataError
from vitrina.inference.decide import top_k as top_k_of
from vitrina.inference.predictor import OnnxBackend, Predictor, decode_batch, default_threads, onnx_predictor
from vitrina.preprocess import Preprocess

LIST_SUFFIXES = (".txt", ".lst", ".list")
CSV_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")
GLOB_CHARACTERS = frozenset("*?[")
# Batches queued per worker: none waits while rows are written, and memory stays flat.
BATCHES_AHEAD_PER_WORKER = 2
# An fp32 efficientnet_lite0 worker at batch 32 holds about 420 MB; more cores become threads per worker.
MAX_MODEL_WORKERS = 3


@dataclass
class PredictSummary:
    out: Path | None
    n_inputs: int  # paths after expansion
    n_predicted: int  # rows written by this run with a prediction
    n_errors: int  # rows written by this run with an error
    n_resumed: int  # rows already in the output file (resume)
    seconds: float
    backend: str
    precision: str
    batch_size: int
    workers: int
    passes_per_photo: float = 1.0  # network passes per photo predicted (above 1 with the mirror average)

    @property
    def images_per_second(self) -> float:
        return (self.n_predicted + self.n_errors) / max(self.seconds, 1e-9)


ScoredBatch = tuple[list[str], np.ndarray, np.ndarray | None, list[str | None]]
# (predictor, paths, max_pixels, workers) -> (paths, probabilities and unknown scores of the readable ones, per-path error), in order
BatchScorer = Callable[[Predictor, list[str], int | None, int], Iterator[ScoredBatch]]


# ----------------------------------------------------------------------------- inputs
def _paths_in_folder(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if is_image_file(name) and not name.startswith("."))
    return found


def _paths_in_list(path: Path) -> list[str]:
    """Paths from a CSV (a path column, else the first) or a list file; relative to its folder.

    A CSV's first row is a header when it names a path column or its first cell is not an image file name.
    """
    base = path.parent
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if path.suffix.lower() == ".csv":
            rows = list(csv.reader(fh))
            if not rows:
                return []
            header = [cell.strip().lower() for cell in rows[0]]
            column = next((header.index(name) for name in CSV_PATH_COLUMNS if name in header), None)
            if column is not None or not is_image_file(rows[0][0].strip() if rows[0] else ""):
                rows = rows[1:]  # a header row
            column = column or 0
            names = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
        else:
            names = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    return [name if os.path.isabs(name) else str(base / name) for name in names]


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Every image path the inputs name, in order, each once.

    A folder gives its image files (recursively, sorted); a ``.csv``/``.txt``/``.lst`` file gives
    the paths it lists (CSV: the ``path`` column, else the first); a glob gives its matches; any
    other file is taken as an image (an unreadable one becomes an error row later).
    """
    paths: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            paths.extend(_paths_in_folder(path))
        elif path.is_file():
            is_list = path.suffix.lower() == ".csv" or path.suffix.lower() in LIST_SUFFIXES
            paths.extend(_paths_in_list(path) if is_list else [text])
        elif GLOB_CHARACTERS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"{text}: no files match this pattern")
            for match in matches:
                paths.extend(_paths_in_folder(Path(match)) if os.path.isdir(match) else [match])
        else:
            raise DataError(f"{text}: no such file or folder")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DataError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return unique


# ----------------------------------------------------------------------------- decoding
_worker_predictor: Predictor | None = None
WorkerResult = tuple[np.ndarray, "np.ndarray | None", int]  # probabilities, unknown scores, photos mirrored


def _start_model_worker(model_file: Path, threads: int) -> None:
    global _worker_predictor
    _worker_predictor = onnx_predictor(model_file, threads, verify=False)  # the main process checked the file


def _score_batch(paths: list[str], preprocess: Preprocess, max_pixels: int | None) -> tuple[WorkerResult, list[str | None]]:
    """In a model worker: :func:`score_paths` with the worker's predictor."""
    assert _worker_predictor is not None, "model worker not started"
    return score_paths(_worker_predictor, paths, max_pixels)


def score_paths(predictor: Predictor, paths: list[str], max_pixels: int | None) -> tuple[WorkerResult, list[str | None]]:
    """Decode, resize and predict (the model's whole predictor, mirror average included)
    -> ((probabilities, unknown scores, photos mirrored) of the readable files, per-file errors)."""
    images, errors = decode_batch(paths, predictor.preprocess, max_pixels)
    before = predictor.mirrored_photos
    probs, scores = predictor.predict_scored(images)
    return (probs, scores, predictor.mirrored_photos - before), errors


# ----------------------------------------------------------------------------- output
class _Rows:
    """One output format: a header (CSV), row encoding, and reading back completed paths."""

    def __init__(self, classes: list[str], top_k: int, with_uncertain: bool, with_unknown: bool = False):
        self.classes, self.top_k, self.with_uncertain, self.with_unknown = classes, top_k, with_uncertain, with_unknown

    def header(self) -> str:
        return ""

    def encode(self, paths: list[str], order: np.ndarray, probs: np.ndarray, uncertain: np.ndarray | None, errors: list[str | None],
               unknown: tuple[np.ndarray, np.ndarray] | None = None) -> str:
        """Rows for ``paths``; ``unknown`` is (flags, scores) of the readable ones when the model detects unknown photos."""
        raise NotImplementedError

    def completed(self, fh: IO[str]) -> Iterator[str]:
        raise NotImplementedError


class _CsvRows(_Rows):
    def columns(self) -> list[str]:
        ranks = [name for i in range(1, self.top_k + 1) for name in (f"label_{i}", f"prob_{i}")]
        return ["path", *ranks, *(["uncertain"] if self.with_uncertain else []), *(["unknown", "unknown_score"] if self.with_unknown else []), "error"]

    def _line(self, cells: list[str]) -> str:
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    def header(self) -> str:
        return self._line(self.columns())

    def encode(self, paths, order, probs, uncertain, errors, unknown=None):  # type: ignore[no-untyped-def]
        buffer = []
        row = 0
        for path, error in zip(paths, errors):
            if error is not None:
                cells = [path, *[""] * (2 * self.top_k), *([""] if self.with_uncertain else []), *(["", ""] if self.with_unknown else []), error]
            else:
                ranks = [cell for j in range(self.top_k) for cell in (self.classes[order[row, j]], f"{probs[row, j]:.6f}")]
                flag = ["true" if uncertain[row] else "false"] if uncertain is not None else []
                if self.with_unknown:
                    flag += ["true" if unknown[0][row] else "false", f"{unknown[1][row]:.6f}"] if unknown is not None else ["", ""]
                cells = [path, *ranks, *flag, ""]
                row += 1
            buffer.append(self._line(cells))
        return "".join(buffer)

    def completed(self, fh):  # type: ignore[no-untyped-def]
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is not None and header != self.columns():
            raise ConfigError(
                f"{fh.name}: its columns ({', '.join(header)}) differ from this run's; "
                "resume with the same --top-k and model, or choose another --out"
            )
        for cells in reader:
            if cells:
                yield cells[0]


class _JsonlRows(_Rows):
    def encode(self, paths, order, probs, uncertain, errors, unknown=None):  # type: ignore[no-untyped-def]
        lines = []
        row = 0
        for path, error in zip(paths, errors):
            record: dict[str, Any] = {"path": path, "top": []}
            if error is None:
                record["top"] = [{"label": self.classes[order[row, j]], "prob": round(float(probs[row, j]), 6)} for j in range(self.top_k)]
                if uncertain is not None:
                    record["uncertain"] = bool(uncertain[row])
                if unknown is not None:
                    record["unknown"] = bool(unknown[0][row])
                    record["unknown_score"] = round(float(unknown[1][row]), 6)
                row += 1
            record["error"] = error
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return "".join(lines)

    def completed(self, fh):  # type: ignore[no-untyped-def]
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)["path"]
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{fh.name}: line {number} is not a prediction row; cannot resume this file") from None


def _drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (an interrupted write) so the file ends after a whole row."""
    with open(path, "rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(65536, position)
            fh.seek(position - step)
            chunk = fh.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = position - step + newline + 1
                break
            position -= step
        else:
            keep = 0
        if keep != end:
            fh.truncate(keep)


def _row_format(out: Path | None, classes: list[str], top_k: int, with_uncertain: bool, with_unknown: bool = False) -> _Rows:
    suffix = out.suffix.lower() if out is not None else ".csv"
    if suffix in (".jsonl", ".ndjson"):
        return _JsonlRows(classes, top_k, with_uncertain, with_unknown)
    if suffix == ".csv":
        return _CsvRows(classes, top_k, with_uncertain, with_unknown)
    raise ConfigError(f"{out}: choose an output file ending in .csv or .jsonl")


# ----------------------------------------------------------------------------- the pipeline
def default_workers(predictor: Predictor) -> int:
    """Worker processes: a model worker per core for an ONNX file (each holds its own
    activations, so at most :data:`MAX_MODEL_WORKERS`), else one decoder beside the model."""
    return min(default_threads(), MAX_MODEL_WORKERS) if model_file_of(predictor) else max(1, default_threads() - 1)


def model_file_of(predictor: Predictor) -> Path | None:
    """The ONNX file worker processes can open themselves, if the predictor came from one."""
    backend = predictor.backend
    return backend.file if isinstance(backend, OnnxBackend) and backend.file is not None else None


def predict_catalogue(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | Path | None = None,
    *,
    top_k: int = 5,
    resume: bool = False,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    engine: BatchScorer | None = None,
) -> PredictSummary:
    """Predict every image ``inputs`` name; one row per image, written to ``out`` (CSV/JSONL) or stdout.

    Unreadable files give a row whose ``error`` says why. ``resume`` continues an interrupted
    ``out`` file: paths already in it are skipped. ``workers``: processes that decode (and, for
    an ONNX model, also run it); 0 does everything in this process. ``engine`` scores the paths
    batch by batch, in input order (default: this machine's processes; see ``ray_engine``).
    """
    from tqdm import tqdm

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    started = time.perf_counter()
    photos_before, mirrored_before = predictor.photos, predictor.mirrored_photos
    out_path = Path(out) if out is not None else None
    top_k = min(top_k, len(predictor.classes))
    rule = predictor.rule()
    rows = _row_format(out_path, predictor.classes, top_k, rule.flags_uncertain, rule.unknown_threshold is not None)
    paths = expand_inputs(inputs)

    done: set[str] = set()
    if out_path is not None and out_path.exists():
        if not resume:
            raise ConfigError(f"{out_path} already exists; use --resume to continue it, or choose another --out")
        _drop_partial_line(out_path)
        with open(out_path, newline="", encoding="utf-8") as fh:
            done = set(rows.completed(fh))
    remaining = [p for p in paths if p not in done]
    n_resumed = len(paths) - len(remaining)
    workers = default_workers(predictor) if workers is None else max(0, workers)
    batch_size = predictor.batch_size

    if out_path is None:
        sink: IO[str] = sys.stdout
        sink.write(rows.header())
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(out_path, "a", newline="", encoding="utf-8")
        if sink.tell() == 0:
            sink.write(rows.header())
    n_predicted = n_errors = 0
    bar = tqdm(total=len(paths), initial=n_resumed, unit="img", desc="predicting", file=sys.stderr, disable=not progress, smoothing=0.05)
    try:
        for chunk, probs, scores, errors in (engine or _scored_batches)(predictor, remaining, max_pixels, workers):
            order, top_probs = top_k_of(probs, top_k)
            flags = rule.unknown(scores)
            unknown = (flags, scores) if flags is not None else None
            sink.write(rows.encode(chunk, order, top_probs, rule.uncertain(probs, scores), errors, unknown))
            sink.flush()
            n_predicted += len(probs)
            n_errors += len(chunk) - len(probs)
            bar.update(len(chunk))
    finally:
        bar.close()
        if sink is not sys.stdout:
            sink.close()
    return PredictSummary(
        out=out_path, n_inputs=len(paths), n_predicted=n_predicted, n_errors=n_errors, n_resumed=n_resumed,
        seconds=time.perf_counter() - started, backend=predictor.backend_name, precision=predictor.precision,
        batch_size=batch_size, workers=workers,
        passes_per_photo=1.0 + (predictor.mirrored_photos - mirrored_before) / max(1, predictor.photos - photos_before),
    )


def _scored_batches(predictor: Predictor, paths: list[str], max_pixels: int | None, workers: int) -> Iterator[ScoredBatch]:
    """(paths, probabilities and unknown scores of the readable ones, per-path error) batch by batch, in input order.

    With an ONNX file, each worker process decodes and runs its own single-threaded session: on
    a few cores this beats a multi-threaded model beside separate decoders, whose threads wait
    for each other whenever a decoder (or any other program) takes a core. Otherwise workers
    decode and this process runs the model. At most a few batches are in flight.
    """
    preprocess, batch_size = predictor.preprocess, predictor.batch_size
    chunks = (paths[start : start + batch_size] for start in range(0, len(paths), batch_size))
    if workers == 0 or len(paths) <= batch_size:
        for chunk in chunks:
            images, errors = decode_batch(chunk, preprocess, max_pixels)
            yield chunk, *predictor.predict_scored(images), errors
        return
    model_file = model_file_of(predictor)
    # Spawned workers start clean: no inherited model threads, no torch.
    context = multiprocessing.get_context("spawn")
    if model_file is not None:
        threads = max(1, default_threads() // workers)
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_model_worker, initargs=(model_file, threads))
        task = _score_batch
    else:
        pool = ProcessPoolExecutor(workers, mp_context=context)
        task = decode_batch
    with pool:
        pending: deque[tuple[list[str], Future]] = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append((chunk, pool.submit(task, chunk, preprocess, max_pixels)))

        for _ in range(workers * BATCHES_AHEAD_PER_WORKER):
            submit_next()
        while pending:
            chunk, future = pending.popleft()
            result, errors = future.result()
            submit_next()
            if model_file is None:
                probs, scores = predictor.predict_scored(result)
            else:
                probs, scores, mirrored = result
                predictor.photos += len(probs)  # the workers' counts, so the summary tells passes per photo
                predictor.mirrored_photos += mirrored
            yield chunk, probs, scores, errors
