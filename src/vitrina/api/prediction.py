"""The public API of export and prediction: a run folder to ONNX, and whole catalogues predicted."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from vitrina import config as config_lib
from vitrina.api.settings import resolve_config
from vitrina.config import Config
from vitrina.data.fetch import FetchSettings
from vitrina.errors import ConfigError
from vitrina.export.loading import BackendName, load_predictor
from vitrina.inference.batch import PredictSummary, predict_catalogue
from vitrina.inference.predictor import Predictor

if TYPE_CHECKING:  # the exporter loads torch, which predicting from an .onnx file avoids
    from vitrina.export.run import ExportResult


def export(
    run: str | Path,
    out: str | Path | None = None,
    *,
    precision: str = "auto",
    config: Config | str | Path | None = None,
    calibration: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export a run folder to a self-describing ONNX file plus a model card beside it.

    The export is checked against PyTorch on the run's validation images (largest probability
    difference at most 1e-4, identical top-1) and refused otherwise. ``precision="auto"`` also
    quantises to int8 and writes int8 at ``out`` (default ``RUN/model.onnx``) when it changes
    validation accuracy by at most ``export.int8_tolerance`` points (``config``: 0.5 by
    default), else fp32, with the other precision beside it; "fp32" or "int8" force one.
    ``calibration``: a dataset to use for these checks instead of the run's own data.
    """
    # lazy: PyTorch and the ONNX exporter load only to export, never to predict from an .onnx file
    from vitrina.export.run import export_run

    saved = Path(run) / "config.yaml"  # the run's own settings, unless others are given
    settings = resolve_config(config) if config is not None else config_lib.resolve(saved if saved.is_file() else None)
    tolerance = settings.export.int8_tolerance
    return export_run(run, out, precision=precision, int8_tolerance=tolerance, calibration=calibration, log=log)  # type: ignore[arg-type]


def predict(
    model: str | Path | Predictor,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    top_k: int = 5,
    resume: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    backend: BackendName = "auto",
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    column: str | None = None,
    fetch: FetchSettings | None = None,
) -> PredictSummary:
    """Predict every photo that ``inputs`` name (files, folders, globs, http(s) URLs, list files,
    CSV or Parquet tables whose ``column`` holds paths or URLs).

    Writes one row per photo to ``out`` (``.csv``, ``.jsonl``, ``.parquet`` or a folder ending in
    ``/`` for Parquet shards; standard output as CSV when None): path, the ``top_k`` labels and
    probabilities, and an error reason for unreadable photos. ``fetch`` sets how URLs are
    downloaded (timeout, retries, size limit, downloads at once). ``model`` is a run folder, an exported ``.onnx`` file or a loaded :class:`Predictor`.
    ``resume`` continues an interrupted ``out`` file without repeating or losing rows.
    ``workers``: processes that decode (and with ONNX Runtime also run the model); default one
    per core. ``threads``: ONNX Runtime threads of a model loaded here (default: all cores).
    ``log`` receives messages about the model (a run folder is exported to ONNX on first use).
    ``engine``: "local" (this machine's processes) or "ray" (Ray Data: a local Ray, or the
    cluster at ``address``), with the same rows.
    """
    for name, value, low in (("--workers", workers, 0), ("--threads", threads, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    predictor = model if isinstance(model, Predictor) else load_predictor(model, backend, threads=threads, log=log)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        predictor.batch_size = batch_size
    scorer = None
    if engine == "ray":
        from vitrina.inference.ray_engine import ray_engine  # lazy: keeps Ray's import off the local path

        scorer = ray_engine(address)
    elif engine != "local" or address is not None:
        raise ConfigError(f"--engine must be local or ray (--address needs ray), got {engine!r}")
    return predict_catalogue(predictor, inputs, out, top_k=top_k, resume=resume, workers=workers, progress=progress, engine=scorer,
                             column=column, fetch=fetch)
