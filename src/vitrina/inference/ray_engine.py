"""Catalogue prediction on Ray Data: the rows of the local engine, on a local Ray or a cluster.

The paths become a Ray dataset; an actor pool, one actor per CPU, each with one single-threaded
ONNX Runtime session, reads (downloading URLs), decodes and predicts each batch as the local engine's workers do
(:func:`~vitrina.inference.batch.score_paths`). The dataset keeps the input order and its object
store is bounded, and the rows are written by :func:`~vitrina.inference.batch.predict_catalogue`
as with the local engine (same columns, same ``--resume``). Actors that die are restarted and
their batches retried. Ray is an optional extra (``pip install 'vitrina[ray]'``), imported only here.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.data.fetch import FetchSettings
from vitrina.errors import ConfigError
from vitrina.inference.batch import BatchScorer, ScoredBatch, model_file_of, score_paths
from vitrina.inference.predictor import Predictor, onnx_predictor

CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before giving up
OBJECT_STORE_BYTES = 256 * 1024**2  # a Ray started here: its object store (only paths and probabilities cross it)
RESTARTS = 3  # a dead actor is restarted, and its batch retried, this many times


def ray_engine(address: str | None = None) -> BatchScorer:
    """A scorer for ``predict_catalogue`` on Ray: a local Ray when ``address`` is None, else that cluster's."""

    def scored(predictor: Predictor, paths: list[str], max_pixels: int | None, workers: int,
               fetch: FetchSettings) -> Iterator[ScoredBatch]:
        model_file = model_file_of(predictor)
        if model_file is None:
            raise ConfigError("--engine ray predicts from an exported .onnx file (or a run folder, exported on first use)")
        if not paths:
            return
        ray = _start(address)
        yield from _pipeline(ray, model_file, predictor, paths, max_pixels, fetch)

    return scored


def _start(address: str | None) -> Any:
    try:
        import ray  # lazy: Ray is an optional extra, and heavy
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'vitrina[ray]'") from None
    for name in ("ray", "ray.data"):  # its progress lines would bury vitrina's own
        logging.getLogger(name).setLevel(logging.WARNING)
    if address is not None:
        _reachable(address)
    if ray.is_initialized():
        return ray
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
                 configure_logging=False)
        return ray
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types (connection, authentication, version)
        raise ConfigError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return ray


def _reachable(address: str) -> None:
    """A clear error within CONNECT_TIMEOUT when nothing answers at ``address`` (host:port of the head)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT of the Ray head (ray start --head prints it)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"the Ray cluster at {address} cannot be reached within {CONNECT_TIMEOUT:g} s: "
                          f"{exc.strerror or exc}") from None


def _pipeline(ray: Any, model_file: Path, predictor: Predictor, paths: list[str], max_pixels: int | None,
              fetch: FetchSettings) -> Iterator[ScoredBatch]:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(object_store_memory=OBJECT_STORE_BYTES // 2)
    # One single-threaded actor per CPU that decodes and runs the model, as the local engine's
    # workers: only paths and probabilities cross the object store. (Decoding in separate tasks
    # moved every decoded photo through it: 0.59x the local engine's speed on 2 cores.)
    pool = max(1, int(ray.cluster_resources().get("CPU", 1)))
    batch = predictor.batch_size
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, -(-len(paths) // batch)))
    dataset = dataset.map_batches(
        _Model, fn_constructor_kwargs={"model_file": str(model_file), "max_pixels": max_pixels, "fetch": fetch,
                                       "fetch_threads": fetch.per_worker(pool)},
        batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
        max_restarts=RESTARTS, max_task_retries=RESTARTS,
    )
    for out in dataset.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2):
        errors = [str(e) or None for e in out["error"]]
        readable = np.asarray([e is None for e in errors])
        scores = out["score"][readable] if predictor.detects_unknown else None
        predictor.photos += int(readable.sum())
        predictor.mirrored_photos += int(out["mirrored"].sum())
        yield [str(p) for p in out["path"]], out["probs"][readable].astype(np.float32), scores, errors


class _Model:
    """A Ray actor: one single-threaded ONNX Runtime session; paths -> probabilities (NaN rows and an
    error for unreadable files)."""

    def __init__(self, model_file: str, max_pixels: int | None, fetch: FetchSettings, fetch_threads: int):
        self.predictor = onnx_predictor(model_file, 1, verify=False)  # the driver checked the file
        self.max_pixels, self.fetch, self.fetch_threads = max_pixels, fetch, fetch_threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (probs, scores, mirrored), errors = score_paths(self.predictor, [str(p) for p in batch["path"]], self.max_pixels, self.fetch, self.fetch_threads)
        readable = np.asarray([e is None for e in errors])
        all_probs = np.full((len(errors), len(self.predictor.classes)), np.nan, dtype=np.float32)
        all_probs[readable] = probs
        all_scores = np.full(len(errors), np.nan)
        if scores is not None:
            all_scores[readable] = scores
        per_row = np.zeros(len(errors), dtype=np.int64)
        per_row[0] = mirrored  # the batch's count, carried by its first row
        return {"path": batch["path"], "probs": all_probs, "score": all_scores, "mirrored": per_row,
                "error": np.asarray([e or "" for e in errors], dtype=object)}
