"""One predictor over two backends (PyTorch, ONNX Runtime) sharing one preprocessing implementation.

A :class:`Predictor` turns images into class probabilities: images are resized by
:meth:`Preprocess.to_uint8` and normalised by :meth:`Preprocess.normalize` whatever the backend,
so PyTorch and ONNX Runtime see identical arrays. :func:`load_predictor` opens a run folder or
an exported ``.onnx`` file alone (its metadata carries labels and preprocessing).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from vitrina.data.fetch import FetchError, FetchSettings, sources
from vitrina.data.images import DEFAULT_MAX_PIXELS, _to_mode, decode
from vitrina.description import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, SCORE_OUTPUT, ModelDescription
from vitrina.errors import ImageError, ModelError
from vitrina.preprocess import Preprocess, mirror_images
from vitrina.inference.decide import DecisionRule
from vitrina.inference.integrity import verify_onnx_file

# efficientnet_lite0 at 224 px on 2 CPU cores: images/s is flat from batch 8 to 64 within noise,
# batch 1 is slower; at 32 a single-threaded session holds about 420 MB (at 64, 750 MB).
DEFAULT_BATCH_SIZE = 32
ImageInput = Image.Image | np.ndarray


def default_threads() -> int:
    """CPU cores this process may use (ONNX Runtime's thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- backends
# Images per ONNX Runtime run: a few images' activations stay in the CPU caches and memory stays
# small. The model alone, single-threaded, efficientnet_lite0 at 288 px: int8 6.7 ms per image at
# 4, 7.3 at 32 (end to end the difference is within the noise of a 2-core machine).
RUN_BATCH = 4


class OnnxBackend:
    """ONNX Runtime on CPU: normalised float32 NCHW batch -> probabilities (run a few images at a time)."""

    name = "onnx"

    def __init__(self, session: Any, source: str, file: Path | None = None):
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
        # Idle threads sleep instead of spinning: a server's session waits between batches, and
        # spinning threads would burn a core while it waits (and take it from decoding).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        return self._run([self._output], batch)[0]

    def scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the unknown-photo score (None when the graph has no such output)."""
        if self.score_output is None:
            return self(batch), None
        probs, scores = self._run([self._output, self.score_output], batch)
        return probs, scores

    def _run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        if len(batch) <= RUN_BATCH:
            return self.session.run(outputs, {self._input: batch})
        parts = [self.session.run(outputs, {self._input: batch[i : i + RUN_BATCH]}) for i in range(0, len(batch), RUN_BATCH)]
        return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]


class TorchBackend:
    """The PyTorch network in fp32: normalised float32 NCHW batch -> probabilities."""

    name = "torch"

    def __init__(self, model: Any, scorer: Any = None):
        self.model = model.float().eval()
        self.scorer = scorer.float().eval() if scorer is not None else None  # a vitrina.models.unknown.UnknownScore

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
def decode_batch(paths: Sequence[str], preprocess: Preprocess, max_pixels: int | None,
                 fetch: FetchSettings | None = None, fetch_threads: int = 1) -> tuple[np.ndarray, list[str | None]]:
    """Decode and resize files or ``http(s)`` URLs (downloaded by ``fetch``, ``fetch_threads`` at
    once) -> (uint8 images of the readable ones, per-photo error or None)."""
    size, channels = preprocess.input_size, preprocess.channels
    images = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    errors: list[str | None] = []
    kept = 0
    for path, source in sources(paths, fetch, fetch_threads):
        try:
            if isinstance(source, FetchError):
                raise source
            images[kept] = preprocess.to_uint8(decode(source, preprocess.mode, max_pixels, draft_size=preprocess.draft_size(), name=path))
            kept += 1
            errors.append(None)
        except (ImageError, FetchError) as exc:
            errors.append(exc.reason)
        except OSError as exc:
            errors.append(f"cannot read file: {exc.strerror or exc}")
        except MemoryError:
            errors.append("not enough memory to decode this image")
    return images[:kept], errors


class Predictor:
    """Class probabilities for images, whatever the backend.

    ``description`` is the model's :class:`~vitrina.description.ModelDescription` (from
    ``model.json`` or the metadata of an exported file): classes, preprocessing, thresholds and
    the unknown-photo detector.
    """

    def __init__(self, backend: Backend, description: ModelDescription, source: str | Path, batch_size: int = DEFAULT_BATCH_SIZE):
        self.backend = backend
        self.description = description
        self.source = str(source)
        self.preprocess = description.preprocess
        self.classes: list[str] = list(description.classes)
        self.batch_size = batch_size
        self.photos = 0  # predicted so far, and of those, how many also took the mirror pass
        self.mirrored_photos = 0

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    @property
    def precision(self) -> str:
        """The weights' precision: "int8" for a quantised export, else "fp32"."""
        return self.description.artifact_precision

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
        return self.predict_scored(images)[0]

    @property
    def detects_unknown(self) -> bool:
        """Whether predictions come with an unknown-photo score (the model has a detector the backend can run)."""
        detector = self.description.unknown
        if detector is None:
            return False
        if detector.score == "msp":
            return True
        return getattr(self.backend, "scorer", None) is not None or getattr(self.backend, "score_output", None) is not None

    def rule(self, confidence: float | None = None) -> DecisionRule:
        """The decision rule for this model's predictions (``confidence`` overrides its threshold)."""
        return DecisionRule.for_model(self.description, detects_unknown=self.detects_unknown, confidence=confidence)

    def predict_scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (float32 N x classes) of uint8 N x H x W x C images at the input size, and
        each image's unknown-photo score (None: not available).

        A model with a mirror average (``description.mirror``) runs a second pass on the mirror
        images of the photos its first pass is unsure of; the unknown score reads the photos as given.
        """
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32), (np.zeros(0) if self.detects_unknown else None)
        probs, scores = [], []
        for start in range(0, len(images), self.batch_size):
            p, s = self._batch(images[start : start + self.batch_size])
            probs.append(p)
            scores.append(s)
        joined = None if scores[0] is None else np.concatenate(scores).astype(np.float64)
        return np.concatenate(probs).astype(np.float32, copy=False), joined

    def _batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        scored = getattr(self.backend, "scored", None)
        batch = self.preprocess.normalize(images)
        probs, scores = scored(batch) if scored is not None else (self.backend(batch), None)
        self.photos += len(images)
        if self.detects_unknown and scores is None:
            scores = 1.0 - probs.max(axis=1)  # "msp" from the probabilities
        mirror = self.description.mirror
        if mirror is not None:
            probs, n = mirror.apply(probs, lambda rows: self.backend(self.preprocess.normalize(mirror_images(images[rows]))))
            self.mirrored_photos += n
        return probs, scores if self.detects_unknown else None

    @property
    def passes_per_photo(self) -> float:
        """Network passes per photo predicted so far (above 1 where the mirror average ran)."""
        return 1.0 + self.mirrored_photos / max(1, self.photos)

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
        images, errors = decode_batch([str(p) for p in paths], self.preprocess, max_pixels)
        probs = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        probs[[e is None for e in errors]] = self.predict_arrays(images)
        return probs, errors


# ----------------------------------------------------------------------------- loading
def parse_onnx_metadata(metadata: dict[str, str], path: str | Path) -> ModelDescription:
    """The model description in an ONNX file's metadata map; ModelError if absent or damaged."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelError(
            f"{path}: an ONNX model without vitrina metadata (no labels or preprocessing); "
            "export it with `vitrina export RUN`"
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"{path}: damaged vitrina metadata in the ONNX file: {exc}") from None
    return ModelDescription.from_dict(data, f"{path} (vitrina metadata)")


def _check_interface(backend: OnnxBackend, description: ModelDescription, path: str | Path) -> None:
    """ModelError when the graph's input or output shape contradicts its metadata (classes, preprocessing)."""
    inputs = {i.name: i.shape for i in backend.session.get_inputs()}
    outputs = {o.name: o.shape for o in backend.session.get_outputs()}
    pre = description.preprocess
    expected_in, expected_out = [pre.channels, pre.input_size, pre.input_size], description.num_classes
    shape_in, shape_out = inputs.get(INPUT_NAME), outputs.get(OUTPUT_NAME)
    if shape_in is None or shape_out is None:
        raise ModelError(f"{path}: the graph lacks its '{INPUT_NAME}' input or '{OUTPUT_NAME}' output")
    fixed_in = [d for d in shape_in[1:] if isinstance(d, int)]
    if len(shape_in) != 4 or (len(fixed_in) == 3 and fixed_in != expected_in):
        raise ModelError(f"{path}: the graph takes input {shape_in}, its metadata describes N x {' x '.join(map(str, expected_in))}")
    if len(shape_out) != 2 or (isinstance(shape_out[1], int) and shape_out[1] != expected_out):
        raise ModelError(f"{path}: the graph gives {shape_out[1] if len(shape_out) == 2 else shape_out} class probabilities, "
                         f"its metadata names {expected_out} classes")


def onnx_predictor(path: str | Path, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, *, verify: bool = True) -> Predictor:
    """A predictor on an exported ``.onnx`` file alone (its metadata carries classes and preprocessing).

    ``verify`` checks the file's weights against the digest its export recorded (ModelError if damaged).
    """
    backend = OnnxBackend.from_file(path, threads)
    description = parse_onnx_metadata(backend.metadata(), path)
    _check_interface(backend, description, path)
    if verify:
        verify_onnx_file(path, description.export.weights_digest if description.export else None)
    return Predictor(backend, description, path, batch_size)


def torch_predictor(run_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
    """A predictor running a run folder's PyTorch network (with its unknown-photo score)."""
    # lazy: PyTorch stays off the ONNX-only prediction path (workers without torch start faster and smaller)
    from vitrina.models.checkpoint import load_model
    from vitrina.models.unknown import load_unknown

    model, description = load_model(run_dir)
    return Predictor(TorchBackend(model, load_unknown(run_dir, description.unknown)), description, run_dir, batch_size)
