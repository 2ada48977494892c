"""Streaming prediction over whole catalogues: bounded memory, parallel decoding, resumable output.

Inputs (files, folders, globs, URLs, list files and CSV or Parquet tables; see
:mod:`~vitrina.inference.inputs`) expand to one ordered list of paths and URLs. Worker processes
take whole batches: with an ONNX model each worker reads (downloading URLs), decodes, resizes and
runs its own single-threaded session and passes back probabilities; with PyTorch the workers
decode (uint8 arrays) and the main process runs the model. At most a few batches are in flight,
so memory stays flat however large the catalogue. Rows are written in input order by
:mod:`~vitrina.inference.outputs` (CSV, JSONL, Parquet), which ``resume`` continues.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrina.data.fetch import FetchSettings
from vitrina.data.images import DEFAULT_MAX_PIXELS
from vitrina.errors import ConfigError
from vitrina.inference.decide import top_k as top_k_of
from vitrina.inference.inputs import expand_inputs
from vitrina.inference.outputs import Columns, Scored, open_rows
from vitrina.inference.predictor import OnnxBackend, Predictor, decode_batch, default_threads, onnx_predictor
from vitrina.preprocess import Preprocess

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
# (predictor, paths, max_pixels, workers, fetch) -> (paths, probabilities and unknown scores of the
# readable ones, per-path error), batch by batch in input order
BatchScorer = Callable[[Predictor, list[str], int | None, int, FetchSettings], Iterator[ScoredBatch]]


# ----------------------------------------------------------------------------- decoding
_worker_predictor: Predictor | None = None
WorkerResult = tuple[np.ndarray, "np.ndarray | None", int]  # probabilities, unknown scores, photos mirrored


def _start_model_worker(model_file: Path, threads: int) -> None:
    global _worker_predictor
    _worker_predictor = onnx_predictor(model_file, threads, verify=False)  # the main process checked the file


def _score_batch(paths: list[str], preprocess: Preprocess, max_pixels: int | None, fetch: FetchSettings,
                 fetch_threads: int) -> tuple[WorkerResult, list[str | None]]:
    """In a model worker: :func:`score_paths` with the worker's predictor."""
    assert _worker_predictor is not None, "model worker not started"
    return score_paths(_worker_predictor, paths, max_pixels, fetch, fetch_threads)


def score_paths(predictor: Predictor, paths: list[str], max_pixels: int | None, fetch: FetchSettings | None = None,
                fetch_threads: int = 1) -> tuple[WorkerResult, list[str | None]]:
    """Read, decode, resize and predict (the model's whole predictor, mirror average included)
    -> ((probabilities, unknown scores, photos mirrored) of the readable photos, per-photo errors)."""
    images, errors = decode_batch(paths, predictor.preprocess, max_pixels, fetch, fetch_threads)
    before = predictor.mirrored_photos
    probs, scores = predictor.predict_scored(images)
    return (probs, scores, predictor.mirrored_photos - before), errors


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
    column: str | None = None,
    fetch: FetchSettings | None = None,
) -> PredictSummary:
    """Predict every photo ``inputs`` name; one row per photo, written to ``out`` or standard output.

    ``out``: ``.csv``, ``.jsonl``, ``.parquet``, or a folder (ending in ``/``) of Parquet shards;
    None writes CSV to standard output. Unreadable photos give a row whose ``error`` says why.
    ``resume`` continues an interrupted ``out``: paths already in it are skipped. ``column``: the
    column of paths or URLs in CSV or Parquet inputs. ``fetch``: how URLs are downloaded.
    ``workers``: processes that read (and, for an ONNX model, also run it); 0 does everything in
    this process. ``engine`` scores the paths batch by batch, in input order (default: this
    machine's processes; see ``ray_engine``).
    """
    from tqdm import tqdm

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    started = time.perf_counter()
    photos_before, mirrored_before = predictor.photos, predictor.mirrored_photos
    rule = predictor.rule()
    columns = Columns(predictor.classes, min(top_k, len(predictor.classes)), rule.flags_uncertain, rule.unknown_threshold is not None)
    paths = expand_inputs(inputs, column)
    rows = open_rows(out, columns, resume)
    done = rows.completed()
    remaining = [p for p in paths if p not in done]
    n_resumed = len(paths) - len(remaining)
    workers = default_workers(predictor) if workers is None else max(0, workers)
    n_predicted = n_errors = 0
    finished = False
    bar = tqdm(total=len(paths), initial=n_resumed, unit="img", desc="predicting", file=sys.stderr, disable=not progress, smoothing=0.05)
    try:
        for chunk, probs, scores, errors in (engine or _scored_batches)(predictor, remaining, max_pixels, workers, fetch or FetchSettings()):
            order, top_probs = top_k_of(probs, columns.top_k)
            flags = rule.unknown(scores)
            unknown = (flags, scores) if flags is not None else None
            rows.write(Scored(chunk, order, top_probs, rule.uncertain(probs, scores), errors, unknown))
            n_predicted += len(probs)
            n_errors += len(chunk) - len(probs)
            bar.update(len(chunk))
        finished = True
    finally:
        bar.close()
        rows.close(finished)
    return PredictSummary(
        out=Path(out) if out is not None else None, n_inputs=len(paths), n_predicted=n_predicted, n_errors=n_errors,
        n_resumed=n_resumed, seconds=time.perf_counter() - started, backend=predictor.backend_name,
        precision=predictor.precision, batch_size=predictor.batch_size, workers=workers,
        passes_per_photo=1.0 + (predictor.mirrored_photos - mirrored_before) / max(1, predictor.photos - photos_before),
    )


def _scored_batches(predictor: Predictor, paths: list[str], max_pixels: int | None, workers: int,
                    fetch: FetchSettings) -> Iterator[ScoredBatch]:
    """(paths, probabilities and unknown scores of the readable ones, per-path error) batch by batch, in input order.

    With an ONNX file, each worker process reads, decodes and runs its own single-threaded
    session: on a few cores this beats a multi-threaded model beside separate decoders, whose
    threads wait for each other whenever a decoder (or any other program) takes a core.
    Otherwise workers decode and this process runs the model. At most a few batches are in
    flight, and at most ``fetch.concurrency`` downloads.
    """
    preprocess, batch_size = predictor.preprocess, predictor.batch_size
    chunks = (paths[start : start + batch_size] for start in range(0, len(paths), batch_size))
    if workers == 0 or len(paths) <= batch_size:
        for chunk in chunks:
            images, errors = decode_batch(chunk, preprocess, max_pixels, fetch, fetch.concurrency)
            yield chunk, *predictor.predict_scored(images), errors
        return
    model_file = model_file_of(predictor)
    fetch_threads = fetch.per_worker(workers)
    # Spawned workers start clean: no inherited model threads, no torch.
    context = multiprocessing.get_context("spawn")
    if model_file is not None:
        threads = max(1, default_threads() // workers)
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_model_worker, initargs=(model_file, threads))
        task: Callable = _score_batch
    else:
        pool = ProcessPoolExecutor(workers, mp_context=context)
        task = decode_batch
    with pool:
        pending: deque[tuple[list[str], Future]] = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append((chunk, pool.submit(task, chunk, preprocess, max_pixels, fetch, fetch_threads)))

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
