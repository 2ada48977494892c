"""One predictor over two backends (PyTorch, ONNX Runtime) sharing one preprocessing implementation.

A :class:`Predictor` turns images into class probabilities: images are resized by
:meth:`Preprocess.to_uint8` and normalised by :meth:`Preprocess.normalize` whatever the backend,
so PyTorch and ONNX Runtime see identical arrays. :func:`load_predictor` opens a run folder or
an exported ``.onnx`` file alone (its metadata carries labels and preprocessing).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from PIL import Image

from vitrina.data.images import DEFAULT_MAX_PIXELS, _to_mode, decode
from vitrina.errors import ImageError, ModelError
from vitrina.preprocess import Preprocess

BackendName = Literal["auto", "torch", "onnx"]
# efficientnet_lite0 at 224 px on 2 CPU cores: images/s is flat from batch 8 to 64 within noise,
# batch 1 is slower; at 32 a single-threaded session holds about 420 MB (at 64, 750 MB).
DEFAULT_BATCH_SIZE = 32
ImageInput = Image.Image | np.ndarray
# The unknown-photo score's ONNX output, named here (not in vitrina.quality.unknown) because that
# module imports PyTorch: ONNX prediction and its worker processes stay without it (a worker
# with torch starts about 2 s slower and holds about 450 MB more).
SCORE_OUTPUT = "unknown_score"


def default_threads() -> int:
    """CPU cores this process may use (ONNX Runtime's thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- backends
class OnnxBackend:
    """ONNX Runtime on CPU: normalised float32 NCHW batch -> probabilities."""

    name = "onnx"

    def __init__(self, session: Any, source: str, file: Path | None = None):
        from vitrina.export.onnx import INPUT_NAME, OUTPUT_NAME

        self.session = session
        self.source = source
        self.file = file  # the model file when the session was opened from one (workers reopen it)
        self._input, self._output = INPUT_NAME, OUTPUT_NAME
        # An export that includes the unknown-photo score has it as a second output.
        self.score_output = SCORE_OUTPUT if SCORE_OUTPUT in {o.name for o in session.get_outputs()} else None

    @staticmethod
    def session_options(threads: int | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None) -> "OnnxBackend":
        return cls._open(str(path), str(path), threads)

    @classmethod
    def from_bytes(cls, model: bytes, source: str, threads: int | None = None) -> "OnnxBackend":
        return cls._open(model, source, threads)

    @classmethod
    def _open(cls, model: str | bytes, source: str, threads: int | None) -> "OnnxBackend":
        import onnxruntime as ort

        if isinstance(model, str) and not Path(model).is_file():
            raise ModelError(f"{model}: ONNX model file not found")
        try:
            session = ort.InferenceSession(model, cls.session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for damaged files
            raise ModelError(f"{source}: not a readable ONNX model: {str(exc).strip() or type(exc).__name__}") from None
        return cls(session, source, Path(model) if isinstance(model, str) else None)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: batch})[0]

    def scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the unknown-photo score (None when the graph has no such output)."""
        if self.score_output is None:
            return self(batch), None
        probs, scores = self.session.run([self._output, self.score_output], {self._input: batch})
        return probs, scores


class TorchBackend:
    """The PyTorch network in fp32: normalised float32 NCHW batch -> probabilities."""

    name = "torch"

    def __init__(self, model: Any, scorer: Any = None):
        self.model = model.float().eval()
        self.scorer = scorer.float().eval() if scorer is not None else None  # a vitrina.quality.unknown.UnknownScore

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(batch)), dim=1).numpy()

    def scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the unknown-photo score from one pass (None without a scorer)."""
        if self.scorer is None:
            return self(batch), None
        import torch

        with torch.inference_mode():
            probs, features, logits = self.model.classify_images(torch.from_numpy(batch))
            return probs.numpy(), self.scorer(features, logits).numpy()


Backend = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- predictor
class Predictor:
    """Class probabilities for images, whatever the backend.

    ``description`` is the model's self-description (``model.json`` content, or the metadata of
    an exported file): classes, preprocessing, and optionally ``thresholds`` such as
    ``{"confidence": 0.6}`` below which a prediction counts as uncertain.
    """

    def __init__(self, backend: Backend, description: dict[str, Any], source: str | Path, batch_size: int = DEFAULT_BATCH_SIZE):
        self.backend = backend
        self.description = description
        self.source = str(source)
        self.preprocess = Preprocess.from_dict(description["preprocess"])
        self.classes: list[str] = list(description["classes"])
        self.thresholds: dict[str, float] | None = description.get("thresholds") or None
        # Unknown-photo detection: {"score", "threshold", "accept_rate", ...} (vitrina.quality.unknown).
        self.unknown_detector: dict[str, Any] | None = description.get("unknown") or None
        self.batch_size = batch_size

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    @property
    def precision(self) -> str:
        """The weights' precision: "int8" for a quantised export, else "fp32"."""
        return (self.description.get("export") or {}).get("precision", "fp32")

    # --------------------------------------------------------------- images -> arrays
    def prepare(self, image: ImageInput) -> np.ndarray:
        """A decoded image (PIL, or uint8 HxW / HxWxC array) -> uint8 HxWxC at the input size."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ImageError("<array>", f"expected a uint8 HxW or HxWxC array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        return self.preprocess.to_uint8(_to_mode(image, self.preprocess.mode))

    def load(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode one file (fast JPEG draft decoding) -> uint8 HxWxC; ImageError if unusable."""
        image = decode(path, self.preprocess.mode, max_pixels, draft_size=self.preprocess.draft_size())
        return self.preprocess.to_uint8(image)

    # --------------------------------------------------------------- predictions
    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x C images at the input size -> float32 N x classes probabilities."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        parts = [
            self.backend(self.preprocess.normalize(images[start : start + self.batch_size]))
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @property
    def detects_unknown(self) -> bool:
        """Whether predictions come with an unknown-photo score (the model has a detector the backend can run)."""
        if not self.unknown_detector or "threshold" not in self.unknown_detector:
            return False
        if self.unknown_detector.get("score") == "msp":
            return True
        return getattr(self.backend, "scorer", None) is not None or getattr(self.backend, "score_output", None) is not None

    def predict_scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like :meth:`predict_arrays`, plus each image's unknown-photo score (None: not available)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32), (np.zeros(0) if self.detects_unknown else None)
        if not self.detects_unknown:
            return self.predict_arrays(images), None
        scored = getattr(self.backend, "scored", None)
        probs, scores = [], []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess.normalize(images[start : start + self.batch_size])
            p, s = scored(batch) if scored is not None else (self.backend(batch), None)
            probs.append(p)
            scores.append(s if s is not None else 1.0 - p.max(axis=1))  # "msp" from the probabilities
        return np.concatenate(probs).astype(np.float32, copy=False), np.concatenate(scores).astype(np.float64)

    def unknown(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Per row, whether the photo looks unlike the training photos (None: no detector or no scores)."""
        if scores is None or not self.detects_unknown:
            return None
        return np.asarray(scores) > float(self.unknown_detector["threshold"])  # type: ignore[index]

    def predict_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Decoded images (PIL or uint8 arrays, any size) -> N x classes probabilities."""
        size, channels = self.preprocess.input_size, self.preprocess.channels
        arrays = np.empty((len(images), size, size, channels), dtype=np.uint8)
        for i, image in enumerate(images):
            arrays[i] = self.prepare(image)
        return self.predict_arrays(arrays)

    def predict_paths(self, paths: Sequence[str | os.PathLike], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str | None]]:
        """Image files -> (N x classes probabilities, per-file error reason or None).

        Rows of unreadable files are NaN; use :func:`vitrina.inference.batch.predict_catalogue`
        for large collections (parallel decoding, streaming output).
        """
        from vitrina.inference.batch import decode_batch

        images, errors = decode_batch([str(p) for p in paths], self.preprocess, max_pixels)
        probs = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        probs[[e is None for e in errors]] = self.predict_arrays(images)
        return probs, errors

    def top(self, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and probabilities of the ``k`` likeliest classes per row, likeliest first."""
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(probs, order, axis=1)

    def uncertain(self, probs: np.ndarray) -> np.ndarray | None:
        """Per row, whether the top probability is below the confidence threshold (None: no thresholds)."""
        if not self.thresholds or "confidence" not in self.thresholds:
            return None
        return probs.max(axis=1) < float(self.thresholds["confidence"])


# ----------------------------------------------------------------------------- loading
def _onnx_predictor(path: Path, threads: int | None) -> Predictor:
    from vitrina.export.onnx import parse_description

    backend = OnnxBackend.from_file(path, threads)
    return Predictor(backend, parse_description(backend.metadata(), path), path)


def _torch_predictor(run_dir: Path) -> Predictor:
    from vitrina.models.checkpoint import load_model

    from vitrina.quality.unknown import load_unknown

    model, meta = load_model(run_dir)
    return Predictor(TorchBackend(model, load_unknown(run_dir, meta.get("unknown"))), meta, run_dir)


def _model_time(run_dir: Path) -> float:
    """When the run's weights or description last changed (exports older than this are stale)."""
    from vitrina.models.checkpoint import META_FILE, WEIGHTS_FILE

    return max((p.stat().st_mtime for p in (run_dir / WEIGHTS_FILE, run_dir / META_FILE) if p.is_file()), default=0.0)


def cached_onnx(run_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """``RUN/model.onnx``, exported (and checked) the first time or when the weights changed."""
    from vitrina.export.onnx import default_onnx_path, export_run

    path = default_onnx_path(run_dir)
    if not path.is_file() or path.stat().st_mtime < _model_time(run_dir):
        export_run(run_dir, path, log=log or (lambda _: None))
    return path


def _validated_int8(run_dir: Path, threads: int | None) -> Predictor | None:
    """The run's ``model.int8.onnx`` if `vitrina export --int8` made it from the current weights
    and found its validation accuracy within the allowed change; else None."""
    from vitrina.export.onnx import default_onnx_path, int8_path_for

    path = int8_path_for(default_onnx_path(run_dir))
    if not path.is_file() or path.stat().st_mtime < _model_time(run_dir):
        return None
    predictor = _onnx_predictor(path, threads)
    report = predictor.description.get("export", {}).get("int8") or {}
    return predictor if report.get("within_tolerance") else None


def _run_predictor(run_dir: Path, use_onnx: bool, onnx_required: bool, threads: int | None, log: Callable[[str], None] | None) -> Predictor:
    """A run folder's predictor: ONNX Runtime on its validated int8 export, else on its (cached)
    fp32 export, else PyTorch."""
    from vitrina.export.onnx import NoReferenceImages

    if not use_onnx:
        return _torch_predictor(run_dir)
    try:
        return _validated_int8(run_dir, threads) or _onnx_predictor(cached_onnx(run_dir, log), threads)
    except NoReferenceImages as exc:
        if onnx_required:
            raise
        if log is not None:
            log(f"{exc}; predicting with PyTorch instead of ONNX Runtime")
        return _torch_predictor(run_dir)


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

    ``backend="auto"`` uses ONNX Runtime: the ``.onnx`` file itself, or for a run folder its
    ``model.int8.onnx`` when `vitrina export --int8` kept the accuracy change within the limit,
    else its ``model.onnx`` (exported and checked there on first use); it falls back to PyTorch
    when ONNX Runtime is not installed or the run's images for the export check are gone. ``threads``
    sets ONNX Runtime's thread count (default: all cores); ``log`` receives export messages.
    """
    path = Path(path)
    if backend not in ("auto", "torch", "onnx"):
        raise ModelError(f"unknown backend {backend!r} (choose auto, torch or onnx)")
    if not path.exists():
        raise ModelError(f"{path}: model not found (give a run folder or an exported .onnx file)")
    if path.is_file() and path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise ModelError(f"{path}: the torch backend needs a run folder, not an ONNX file")
        predictor = _onnx_predictor(path, threads)
    else:
        run_dir = path if path.is_dir() else path.parent
        use_onnx = backend == "onnx" or (backend == "auto" and _onnx_runtime_available())
        if backend == "onnx" and not _onnx_runtime_available():
            raise ModelError("the onnx backend needs onnxruntime and onnx: pip install onnxruntime onnx")
        predictor = _run_predictor(run_dir, use_onnx, backend == "onnx", threads, log)
    predictor.batch_size = batch_size
    if predictor.unknown_detector and not predictor.detects_unknown and log is not None:
        log(f"{path}: this ONNX graph has no unknown-photo score output, so no photo is marked unknown; "
            "predict from the run folder with --backend torch to get it")
    return predictor
