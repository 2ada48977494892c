"""The serving core behind the HTTP layer: the model, the micro-batcher, verdicts, the log.

- :class:`ModelHolder` keeps the model being served and reloads it when its files change
  (polled every ``reload_interval`` seconds; a change must hold still for one more poll so a file
  being copied is never loaded half-written). The new model is loaded in a background thread and
  swapped in one assignment: requests already started finish on the model they began with.
  The model's version is a hash of its files, reported in every response.
- :class:`MicroBatcher` gathers the photos of concurrent requests (those arriving less than
  ``window`` apart, up to ``max_batch``) and runs them through the model as one batch in one
  inference thread, so throughput under concurrency approaches batch throughput. Photos admitted
  but not yet answered are bounded by ``queue_limit``: beyond it requests get 503 with ``Retry-After``.
- :class:`Service` decodes uploads in a thread pool, asks the batcher for probabilities and turns
  them into predictions and listing verdicts, and records every check in the moderation log.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from vitrina.data.images import decode
from vitrina.description import META_FILE, UNKNOWN_FILE, WEIGHTS_FILE
from vitrina.errors import ConfigError, ImageError, ModelError, VitrinaError
from vitrina.export.loading import load_predictor
from vitrina.inference.decide import VERDICTS, DecisionRule
from vitrina.inference.predictor import Predictor
from vitrina.serving.moderation import CheckRecord, ModerationLog, PhotoRecord

log = logging.getLogger("uvicorn.error").getChild("vitrina")
disable_created_metrics()  # the *_created series only double the size of every scrape

MEBIBYTE = 1024 * 1024
# Room for the multipart framing and the text fields around the photos of one request.
FORM_OVERHEAD_BYTES = MEBIBYTE
VERSION_DIGITS = 12
# The longest a micro-batch waits for more photos, in batch windows.
MAX_WAIT_WINDOWS = 20
# Labels listed per photo of a listing check (the verdict itself rests on the listing's mean).
CHECK_TOP_K = 3

# Leading bytes of the formats the server decodes (with their media type), and of image formats it refuses (415).
ACCEPTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
)
REFUSED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"8BPS", "Photoshop"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
)
ACCEPTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Declared types that are images PIL cannot (or should not) decode here.
REFUSED_IMAGE_TYPES = frozenset({"image/svg+xml", "image/heic", "image/heif", "image/avif", "image/jp2", "image/vnd.adobe.photoshop"})


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ServeSettings:
    """What a server needs; plain values, so worker processes receive them as JSON."""

    model: str
    backend: str = "auto"
    threads: int | None = None  # ONNX Runtime threads (default: all cores)
    database: str | None = None  # path or URL of the moderation log (default: moderation.db beside the model)
    store_images: bool = False  # keep the photos themselves in the moderation log
    api_keys_file: str | None = None
    rate_limit: float = 0.0  # requests a second per client; 0: no limit
    rate_burst: int | None = None
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_photos: int = 10
    top_k: int = 5
    batch_window_ms: float = 5.0
    max_batch: int = 32
    queue_limit: int = 256  # photos admitted and not yet answered
    decode_threads: int = 2
    reload_interval: float = 2.0  # seconds between looks at the model files; 0: never reload
    confidence: float | None = None  # overrides the model's calibrated confidence threshold

    def __post_init__(self) -> None:
        checks = {
            "max_upload_mb": self.max_upload_mb > 0, "max_pixels": self.max_pixels > 0, "max_photos": self.max_photos >= 1,
            "top_k": self.top_k >= 1, "batch_window_ms": self.batch_window_ms >= 0, "max_batch": self.max_batch >= 1,
            "queue_limit": self.queue_limit >= 1, "decode_threads": self.decode_threads >= 1,
            "reload_interval": self.reload_interval >= 0, "rate_limit": self.rate_limit >= 0,
            "confidence": self.confidence is None or 0.0 <= self.confidence <= 1.0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ConfigError(f"invalid server settings: {', '.join(f'{name}={getattr(self, name)!r}' for name in wrong)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MEBIBYTE)

    @property
    def max_request_bytes(self) -> int:
        return self.max_upload_bytes * self.max_photos + FORM_OVERHEAD_BYTES

    def database_target(self) -> str:
        """The moderation log's path or URL: as given, else ``moderation.db`` beside the model."""
        if self.database:
            return self.database
        model = Path(self.model)
        return str((model if model.is_dir() else model.parent) / "moderation.db")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------- errors
class ServingError(VitrinaError):
    """A request the server refuses; rendered as ``{"error": code, "detail": message}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class PayloadTooLarge(ServingError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServingError):
    status, code = 415, "unsupported_media_type"


class InvalidImage(ServingError):
    status, code = 422, "invalid_image"


class UnknownCategory(ServingError):
    status, code = 422, "unknown_category"


class Overloaded(ServingError):
    status, code = 503, "overloaded"


class NotReady(ServingError):
    status, code = 503, "not_ready"


# ----------------------------------------------------------------------------- uploads
@dataclass
class Upload:
    """One uploaded file as received."""

    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Photo:
    """An accepted upload: its hash, its format's media type and its pixels at the model's input size."""

    sha256: str
    media_type: str
    pixels: np.ndarray


def _signature(data: bytes, table: tuple[tuple[int, bytes, str], ...]) -> str | None:
    return next((name for offset, magic, name in table if data[offset : offset + len(magic)] == magic), None)


def check_media_type(upload: Upload) -> None:
    """415 unless the declared type and the leading bytes are those of an accepted image format."""
    declared = (upload.content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream" and (not declared.startswith("image/") or declared in REFUSED_IMAGE_TYPES):
        raise UnsupportedMediaType(f"{upload.filename}: {declared} is not a supported photo type; send a {ACCEPTED_FORMATS} image")
    refused = _signature(upload.data[:16], REFUSED_SIGNATURES)
    if refused is not None:
        raise UnsupportedMediaType(f"{upload.filename}: {refused} files are not supported; send a {ACCEPTED_FORMATS} image")


def read_photo(upload: Upload, predictor: Predictor, max_pixels: int) -> Photo:
    """Decode an upload to the model's input size; 422 for corrupt, non-image or oversized data."""
    media_type = _signature(upload.data[:16], ACCEPTED_SIGNATURES)
    if media_type is None:
        reason = "empty file (0 bytes)" if not upload.data else f"not an image (send a {ACCEPTED_FORMATS} photo)"
        raise InvalidImage(f"{upload.filename}: {reason}")
    preprocess = predictor.preprocess
    try:
        image = decode(upload.data, preprocess.mode, max_pixels, draft_size=preprocess.draft_size(), name=upload.filename)
    except ImageError as exc:
        reason = exc.reason
        if reason.startswith("too many pixels"):
            reason = reason.split(" (limit", 1)[0] + f"; this server accepts at most {max_pixels:,}"
        raise InvalidImage(f"{upload.filename}: {reason}") from None
    return Photo(hashlib.sha256(upload.data).hexdigest(), media_type, predictor.prepare(image))


# ----------------------------------------------------------------------------- the model
def model_files(path: Path) -> list[Path]:
    """The files whose content is the model: the ``.onnx`` file, or a run's weights and description."""
    if path.is_file() and path.suffix.lower() == ".onnx":
        return [path]
    folder = path if path.is_dir() else path.parent
    files = [folder / META_FILE, folder / WEIGHTS_FILE]
    if (folder / UNKNOWN_FILE).is_file():  # the unknown-photo statistics, where the model has them
        files.append(folder / UNKNOWN_FILE)
    return files


def files_version(files: Sequence[Path]) -> str:
    """A short content hash of the model files: the version reported with every answer."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(MEBIBYTE), b""):
                digest.update(block)
    return digest.hexdigest()[:VERSION_DIGITS]


def files_fingerprint(files: Sequence[Path]) -> tuple[tuple[int, int] | None, ...]:
    """Cheap change detection: (mtime, size) of each file, None where missing."""
    stamps = []
    for file in files:
        try:
            stat = file.stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


@dataclass(frozen=True)
class LoadedModel:
    """A predictor with its version and the figures shown by ``GET /v1/model``."""

    predictor: Predictor
    version: str
    fingerprint: tuple[tuple[int, int] | None, ...]
    loaded_at: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def name(self) -> str:
        return self.predictor.description.model

    def rule(self, confidence: float | None = None) -> DecisionRule:
        """The decision rule of this model's answers (``confidence`` overrides its calibrated threshold)."""
        return self.predictor.rule(confidence)


def load_model(settings: ServeSettings) -> LoadedModel:
    """Load the model the settings name, warmed up; ModelError when it is missing or unreadable.

    The warm-up runs one full batch of blank images, so the runtime's memory is sized before the
    first request and the first answers are as fast as the rest (also after a hot reload).
    """
    path = Path(settings.model)
    if not path.exists():
        raise ModelError(f"{path}: model not found (give a run folder or an exported .onnx file)")
    files = model_files(path)
    fingerprint = files_fingerprint(files)
    predictor = load_predictor(path, settings.backend, threads=settings.threads)  # type: ignore[arg-type]
    pre = predictor.preprocess
    predictor.predict_scored(np.zeros((settings.max_batch, pre.input_size, pre.input_size, pre.channels), dtype=np.uint8))
    version = files_version(files)
    metrics = dict(predictor.description.metrics)
    metrics_file = files[0].parent / "metrics.json"
    if not metrics and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return LoadedModel(predictor, version, fingerprint, loaded_at, metrics)


class ModelHolder:
    """The model being served; ``watch()`` reloads it in the background when its files change."""

    def __init__(self, settings: ServeSettings, on_reload: Callable[[str], None]):
        self.settings = settings
        self.files = model_files(Path(settings.model))
        self.current: LoadedModel | None = None
        self._on_reload = on_reload

    def load(self) -> LoadedModel:
        self.current = load_model(self.settings)
        return self.current

    async def watch(self) -> None:
        """Poll the model files; load a changed model once it stopped changing, then swap it in."""
        interval = self.settings.reload_interval
        settled = self.current.fingerprint if self.current else None
        candidate = None
        while True:
            await asyncio.sleep(interval)
            stamp = files_fingerprint(self.files)
            if stamp == settled or None in stamp:
                candidate = None
                continue
            if stamp != candidate:  # changed since the last look: maybe still being written
                candidate = stamp
                continue
            settled, candidate = stamp, None
            try:
                model = await asyncio.to_thread(load_model, self.settings)
            except Exception as exc:  # noqa: BLE001 - a broken new file must never stop the server
                log.error("model files changed but the new model cannot be loaded; still serving %s: %s",
                          self.current.version if self.current else "nothing", exc)
                self._on_reload("failed")
                continue
            previous, self.current = self.current, model
            log.info("model reloaded: version %s -> %s", previous.version if previous else "none", model.version)
            self._on_reload("loaded")


# ----------------------------------------------------------------------------- metrics
class ServiceMetrics:
    """Prometheus metrics of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vitrina_http_requests", "HTTP requests answered, by route and status", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "vitrina_http_request_duration_seconds", "Time to answer an HTTP request, by route", ["route"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.verdicts = Counter("vitrina_verdicts", "Listing checks by verdict", ["verdict"], registry=r)
        self.queue_depth = Gauge("vitrina_queue_depth", "Photos waiting for the model", registry=r)
        self.in_flight = Gauge("vitrina_photos_in_flight", "Photos admitted and not yet answered (bounded by the queue limit)", registry=r)
        self.batch_size = Histogram("vitrina_batch_photos", "Photos per model call", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.inference = Histogram(
            "vitrina_inference_seconds", "Model time per batch", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.overloaded = Counter("vitrina_overload_rejections", "Requests answered 503 because the queue was full", registry=r)
        self.reloads = Counter("vitrina_model_reloads", "Model reloads after the files changed, by result", ["result"], registry=r)
        self.model = Gauge("vitrina_model_info", "The model being served (value 1)", ["name", "version"], registry=r)

    def show_model(self, model: LoadedModel) -> None:
        self.model.clear()
        self.model.labels(model.name, model.version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ----------------------------------------------------------------------------- micro-batching
@dataclass
class _Job:
    model: LoadedModel
    pixels: np.ndarray  # uint8 N x H x W x C
    future: asyncio.Future


@dataclass
class Admission:
    """A request's places in the queue; ``queued`` once its photos reached the batcher."""

    photos: int
    queued: bool = False


class MicroBatcher:
    """Runs the photos of concurrent requests through the model together, in one inference thread.

    A batch starts when ``max_batch`` photos wait, or when no photo arrived for ``window_s`` and
    none is being decoded; it never waits more than ``MAX_WAIT_WINDOWS`` windows. So a burst of
    requests (clients answered together come back together) shares one model call.
    """

    def __init__(self, max_batch: int, window_s: float, queue_limit: int, metrics: ServiceMetrics):
        self.max_batch = max_batch
        self.window_s = window_s
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.in_flight = 0  # photos admitted and not yet answered
        self.incoming = 0  # photos admitted and still being decoded
        self.queued = 0  # photos waiting for the model
        self._last_arrival = 0.0
        self._jobs: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitrina-inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vitrina-batcher")

    async def stop(self) -> None:
        """Answer everything already queued, then stop."""
        while self._jobs:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._inference.shutdown(wait=True)

    def _signal_arrival(self) -> None:
        self._last_arrival = asyncio.get_running_loop().time()
        self._arrived.set()

    @contextmanager
    def admit(self, photos: int) -> Iterator[Admission]:
        """Hold ``photos`` places in the bounded queue for the life of a request, or raise 503."""
        if self.in_flight + photos > self.queue_limit:
            self.metrics.overloaded.inc()
            raise Overloaded(
                f"the server is busy ({self.in_flight} photos in progress, limit {self.queue_limit}); retry shortly",
                {"Retry-After": "1"},
            )
        admission = Admission(photos)
        self.in_flight += photos
        self.incoming += photos
        self.metrics.in_flight.set(self.in_flight)
        self._signal_arrival()
        try:
            yield admission
        finally:
            self.in_flight -= photos
            if not admission.queued:  # decoding failed: these photos will never arrive
                self.incoming -= photos
                self._signal_arrival()
            self.metrics.in_flight.set(self.in_flight)

    async def submit(self, admission: Admission, model: LoadedModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and unknown-photo scores (or None) for ``pixels`` (uint8 N x H x W x C) from ``model``,
        batched with other requests."""
        job = _Job(model, pixels, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        admission.queued = True
        self.incoming -= admission.photos
        self.queued += len(pixels)
        self.metrics.queue_depth.set(self.queued)
        self._signal_arrival()
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        """Wait for a job, then for the rest of its burst, up to ``max_batch`` photos."""
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MAX_WAIT_WINDOWS * self.window_s
        while self.queued < self.max_batch:
            now = loop.time()
            quiet_from = self._last_arrival + self.window_s
            if now >= give_up or (self.incoming == 0 and now >= quiet_from):
                break
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), (give_up if self.incoming else min(quiet_from, give_up)) - now)
        batch: list[_Job] = []
        photos = 0
        while self._jobs and (not batch or photos + len(self._jobs[0].pixels) <= self.max_batch):
            job = self._jobs.popleft()
            batch.append(job)
            photos += len(job.pixels)
        self.queued -= photos
        self.metrics.queue_depth.set(self.queued)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            # After a hot reload a batch may mix models: each group runs on the model its requests began with.
            groups: dict[int, list[_Job]] = {}
            for job in batch:
                groups.setdefault(id(job.model), []).append(job)
            for jobs in groups.values():
                pixels = np.concatenate([job.pixels for job in jobs])
                started = time.perf_counter()
                try:
                    probs, scores = await loop.run_in_executor(self._inference, jobs[0].model.predictor.predict_scored, pixels)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                self.metrics.inference.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(pixels))
                start = 0
                for job in jobs:
                    if not job.future.done():  # a cancelled request (client gone) needs no answer
                        part = slice(start, start + len(job.pixels))
                        job.future.set_result((probs[part], scores[part] if scores is not None else None))
                    start += len(job.pixels)


# ----------------------------------------------------------------------------- answers
def _ranked(probs: np.ndarray, classes: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"label": classes[i], "probability": round(float(probs[i]), 6)} for i in order]


def photo_result(filename: str, photo: Photo, probs: np.ndarray, classes: Sequence[str], top_k: int, rule: DecisionRule,
                 score: float | None = None) -> dict[str, Any]:
    """One photo's answer: its best label, confidence, the rule's flags, unknown-photo score and top-k."""
    best = int(np.argmax(probs))
    scores = None if score is None else np.array([score])
    uncertain = rule.uncertain(probs[None], scores)
    result = {
        "filename": filename,
        "sha256": photo.sha256,
        "predicted": classes[best],
        "confidence": round(float(probs[best]), 6),
        "uncertain": bool(uncertain[0]) if uncertain is not None else False,
        "top": _ranked(probs, classes, top_k),
    }
    unknown = rule.unknown(scores)
    if unknown is not None and score is not None:
        result["unknown"] = bool(unknown[0])
        result["unknown_score"] = round(float(score), 6)
    return result


# ----------------------------------------------------------------------------- the service
class Service:
    """Everything the HTTP handlers call."""

    def __init__(self, settings: ServeSettings, model: LoadedModel | None = None):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.holder = ModelHolder(settings, lambda result: self._reloaded(result))
        self.holder.current = model
        self.batcher: MicroBatcher | None = None
        self.moderation: ModerationLog | None = None
        self.draining = False
        self._decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="vitrina-decode")
        self._database = ThreadPoolExecutor(1, thread_name_prefix="vitrina-moderation")
        self._watcher: asyncio.Task | None = None

    # --------------------------------------------------------------- life cycle
    async def start(self) -> None:
        if self.holder.current is None:
            await asyncio.to_thread(self.holder.load)
        assert self.holder.current is not None
        self.metrics.show_model(self.holder.current)
        self.moderation = await self._in_database(ModerationLog, self.settings.database_target(), self.settings.store_images)
        self.batcher = MicroBatcher(self.settings.max_batch, self.settings.batch_window_ms / 1000, self.settings.queue_limit, self.metrics)
        self.batcher.start()
        if self.settings.reload_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self.holder.watch(), name="vitrina-model-watch")

    async def stop(self) -> None:
        """Finish queued work, then release the threads and the database."""
        self.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.stop()
        self._decoders.shutdown(wait=True)
        if self.moderation is not None:
            await self._in_database(self.moderation.close)
        self._database.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.holder.current is not None and self.batcher is not None and not self.draining

    @property
    def model(self) -> LoadedModel:
        if self.holder.current is None:
            raise NotReady("the model is still loading; retry shortly", {"Retry-After": "1"})
        return self.holder.current

    def _reloaded(self, result: str) -> None:
        self.metrics.reloads.labels(result).inc()
        if self.holder.current is not None:
            self.metrics.show_model(self.holder.current)

    async def _in_database(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._database, function, *args)

    # --------------------------------------------------------------- predictions
    async def _classify(self, uploads: Sequence[Upload]) -> tuple[LoadedModel, list[Photo], np.ndarray, np.ndarray | None]:
        """Decode the uploads and run them through the model the request started with."""
        if not self.ready or self.batcher is None:
            raise NotReady("the server is not ready (starting or shutting down)", {"Retry-After": "1"})
        if len(uploads) > self.settings.max_photos:
            raise PayloadTooLarge(f"{len(uploads)} photos in one request; this server accepts at most {self.settings.max_photos}")
        for upload in uploads:
            if len(upload.data) > self.settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"{upload.filename}: {len(upload.data) / MEBIBYTE:.3g} MB; photos may be at most {self.settings.max_upload_mb:g} MB"
                )
            check_media_type(upload)
        model = self.model
        loop = asyncio.get_running_loop()
        with self.batcher.admit(len(uploads)) as admission:
            photos = await asyncio.gather(
                *(loop.run_in_executor(self._decoders, read_photo, upload, model.predictor, self.settings.max_pixels) for upload in uploads)
            )
            probs, scores = await self.batcher.submit(admission, model, np.stack([photo.pixels for photo in photos]))
        return model, list(photos), probs, scores

    async def predict(self, uploads: Sequence[Upload], top_k: int) -> dict[str, Any]:
        """Top-k labels of each photo."""
        model, photos, probs, scores = await self._classify(uploads)
        rule = model.rule(self.settings.confidence)
        per_score = scores if scores is not None else [None] * len(photos)
        results = [
            photo_result(u.filename, p, row, model.classes, top_k, rule, score)
            for u, p, row, score in zip(uploads, photos, probs, per_score)
        ]
        return {"model_version": model.version, "results": results}

    async def check(self, uploads: Sequence[Upload], declared: str) -> dict[str, Any]:
        """A listing's verdict: do its photos show the declared category? Recorded in the moderation log."""
        model = self.model
        if declared not in model.classes:
            raise UnknownCategory(f"unknown category {declared!r}; choose one of: {', '.join(model.classes)}")
        model, photos, probs, scores = await self._classify(uploads)
        if declared not in model.classes:  # the model was swapped for one without this category meanwhile
            raise UnknownCategory(f"unknown category {declared!r}; choose one of: {', '.join(model.classes)}")
        rule = model.rule(self.settings.confidence)
        verdict = rule.verdict(probs, scores, declared, model.classes)
        per_score = scores if scores is not None else [None] * len(photos)
        per_photo = [
            photo_result(u.filename, p, row, model.classes, CHECK_TOP_K, rule, score)
            for u, p, row, score in zip(uploads, photos, probs, per_score)
        ]
        record = CheckRecord(
            declared, verdict.predicted, round(verdict.confidence, 6), verdict.verdict, model.version,
            [PhotoRecord(r["sha256"], r["predicted"], r["confidence"], p.media_type, u.data) for u, p, r in zip(uploads, photos, per_photo)],
        )
        assert self.moderation is not None
        check_id = await self._in_database(self.moderation.record, record)
        self.metrics.verdicts.labels(verdict.verdict).inc()
        return {
            "check_id": check_id,
            "model_version": model.version,
            "declared": declared,
            "predicted": verdict.predicted,
            "confidence": round(verdict.confidence, 6),
            "threshold": rule.confidence,
            **({"unknown": verdict.unknown, "unknown_threshold": rule.unknown_threshold} if rule.unknown_threshold is not None else {}),
            "verdict": verdict.verdict,
            "suggestion": verdict.suggestion,
            "photos": per_photo,
        }

    # --------------------------------------------------------------- model and log
    def model_info(self) -> dict[str, Any]:
        model = self.model
        description = model.predictor.description
        rule = model.rule(self.settings.confidence)
        thresholds = description.thresholds.to_dict() if description.thresholds else {}
        if rule.confidence is not None:
            thresholds["confidence"] = rule.confidence
        if rule.unknown_threshold is not None:
            thresholds["unknown_score"] = rule.unknown_threshold  # above it a photo is unlike the training photos
        return {
            "name": model.name,
            "version": model.version,
            "labels": model.classes,
            "preprocess": model.predictor.preprocess.to_dict(),
            "thresholds": thresholds,
            "metrics": {k: v for k, v in model.metrics.items() if not isinstance(v, (dict, list))},
            "mode": description.mode,
            "backend": model.predictor.backend_name,
            "loaded_at": model.loaded_at,
            "limits": {
                "max_photos": self.settings.max_photos, "max_upload_mb": self.settings.max_upload_mb,
                "max_pixels": self.settings.max_pixels,
            },
        }

    async def recent_checks(self, verdict: str | None, limit: int, before: int | None) -> dict[str, Any]:
        assert self.moderation is not None and (verdict is None or verdict in VERDICTS)
        checks = await self._in_database(self.moderation.recent, verdict, limit, before)
        return {"checks": checks, "next_before": checks[-1]["id"] if len(checks) == limit else None}

    async def stored_photo(self, check_id: int, position: int) -> tuple[bytes, str | None] | None:
        assert self.moderation is not None
        return await self._in_database(self.moderation.photo, check_id, position)
