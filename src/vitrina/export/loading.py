"""Opening a model for prediction: an exported ``.onnx`` file, or a run folder through its exports.

A run folder is predicted with ONNX Runtime on its ``model.onnx``: the precision `vitrina export`
chose (int8 where it kept the validation accuracy within ``export.int8_tolerance``, else fp32),
exported and checked on first use and again whenever the weights change; with PyTorch when
ONNX Runtime is missing or the run's images for the export check are gone. (An export of vitrina
0.1.0, an fp32 ``model.onnx`` without a recorded choice, gives way to its ``model.int8.onnx``
when that one was validated.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from vitrina import config as config_lib
from vitrina.description import META_FILE, WEIGHTS_FILE
from vitrina.errors import ModelError
from vitrina.export.checks import NoReferenceImages
from vitrina.export.paths import default_onnx_path, int8_path_for
from vitrina.inference.predictor import DEFAULT_BATCH_SIZE, Predictor, onnx_predictor, torch_predictor

BackendName = Literal["auto", "torch", "onnx"]
MODEL_FILES = (WEIGHTS_FILE, META_FILE)


def _model_time(run_dir: Path) -> float:
    """When the run's weights or description last changed (exports older than this are stale)."""
    return max((p.stat().st_mtime for p in (run_dir / name for name in MODEL_FILES) if p.is_file()), default=0.0)


def cached_onnx(run_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """``RUN/model.onnx``, exported (and checked) the first time or when the weights changed."""
    path = default_onnx_path(run_dir)
    if not path.is_file() or path.stat().st_mtime < _model_time(run_dir):
        # lazy: PyTorch and the ONNX exporter load only when a run folder must be exported
        from vitrina.export.run import export_run

        saved = run_dir / "config.yaml"
        tolerance = config_lib.resolve(saved if saved.is_file() else None).export.int8_tolerance
        export_run(run_dir, path, int8_tolerance=tolerance, log=log or (lambda _: None))
    return path


def _legacy_int8(run_dir: Path, chosen: Predictor, threads: int | None) -> Predictor | None:
    """For an export of vitrina 0.1.0 (no recorded choice): its ``model.int8.onnx`` if `vitrina export
    --int8` made it from the current weights and found its accuracy within the allowed change."""
    export = chosen.description.export
    if export is not None and "choice" in export.checks:
        return None
    path = int8_path_for(default_onnx_path(run_dir))
    if not path.is_file() or path.stat().st_mtime < _model_time(run_dir):
        return None
    predictor = onnx_predictor(path, threads)
    export = predictor.description.export
    report = (export.int8 if export is not None else None) or {}
    return predictor if report.get("within_tolerance") else None


def _run_predictor(run_dir: Path, use_onnx: bool, onnx_required: bool, threads: int | None, log: Callable[[str], None] | None) -> Predictor:
    """A run folder's predictor: its validated int8 export, else its (cached) fp32 export, else PyTorch."""
    if not use_onnx:
        return torch_predictor(run_dir)
    try:
        chosen = onnx_predictor(cached_onnx(run_dir, log), threads)
        return _legacy_int8(run_dir, chosen, threads) or chosen
    except NoReferenceImages as exc:
        if onnx_required:
            raise
        if log is not None:
            log(f"{exc}; predicting with PyTorch instead of ONNX Runtime")
        return torch_predictor(run_dir)


def _onnx_runtime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_predictor(
    path: str | Path,
    backend: BackendName = "auto",
    *,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    log: Callable[[str], None] | None = None,
) -> Predictor:
    """A predictor for a run folder or an exported ``.onnx`` file.

    ``backend="auto"`` uses ONNX Runtime (see the module's description) and falls back to
    PyTorch for a run folder when it must. ``threads`` sets ONNX Runtime's thread count
    (default: all cores); ``log`` receives export messages.
    """
    path = Path(path)
    if backend not in ("auto", "torch", "onnx"):
        raise ModelError(f"unknown backend {backend!r} (choose auto, torch or onnx)")
    if not path.exists():
        raise ModelError(f"{path}: model not found (give a run folder or an exported .onnx file)")
    if path.is_file() and path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise ModelError(f"{path}: the torch backend needs a run folder, not an ONNX file")
        predictor = onnx_predictor(path, threads)
    else:
        run_dir = path if path.is_dir() else path.parent
        use_onnx = backend == "onnx" or (backend == "auto" and _onnx_runtime_available())
        if backend == "onnx" and not _onnx_runtime_available():
            raise ModelError("the onnx backend needs onnxruntime and onnx: pip install onnxruntime onnx")
        predictor = _run_predictor(run_dir, use_onnx, backend == "onnx", threads, log)
    predictor.batch_size = batch_size
    if predictor.description.unknown is not None and not predictor.detects_unknown and log is not None:
        log(f"{path}: this ONNX graph has no unknown-photo score output, so no photo is marked unknown; "
            "predict from the run folder with --backend torch to get it")
    return predictor
