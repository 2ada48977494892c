"""The serving core behind the HTTP handlers: one facade over the model, the batcher and the log.

:class:`Service` decodes uploads in a thread pool, asks the micro-batcher for probabilities, turns
them into predictions and listing verdicts, and records every check in the moderation log.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from vitrina.inference.decide import VERDICTS
from vitrina.serving.admission import LARGE_PHOTO_PIXELS, DecodeBudget, lower_priority, timed
from vitrina.serving.answers import CHECK_TOP_K, check_answer, photo_results, review_context
from vitrina.serving.batcher import MicroBatcher
from vitrina.serving.errors import NotReady, PayloadTooLarge, UnknownCategory
from vitrina.serving.metrics import ServiceMetrics
from vitrina.serving.model import LoadedModel
from vitrina.serving.moderation import CheckRecord, ModerationLog, PhotoRecord
from vitrina.serving.drift import drift_report
from vitrina.serving.reload import ModelHolder
from vitrina.serving.reviews import QueueFilter, record_review, review_queue
from vitrina.serving.settings import MEBIBYTE, ServeSettings
from vitrina.serving.uploads import (
    Photo,
    Upload,
    check_media_type,
    decode_cost,
    read_photo,
)


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
        self.budget = DecodeBudget(settings.decode_budget, self.metrics)
        self._decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="vitrina-decode")
        # Large photos decode in one thread of their own at a lower CPU priority: ordinary photos
        # never wait behind them, and a stream of them takes at most a core's idle time.
        self._large_decoders = ThreadPoolExecutor(1, thread_name_prefix="vitrina-decode-large", initializer=lower_priority)
        self._database = ThreadPoolExecutor(1, thread_name_prefix="vitrina-moderation")
        self._watcher: asyncio.Task | None = None

    # --------------------------------------------------------------- life cycle
    async def start(self) -> None:
        if self.holder.current is None:
            await asyncio.to_thread(self.holder.load)
        assert self.holder.current is not None
        self.metrics.show_model(self.holder.current)
        settings = self.settings
        self.moderation = await self._in_database(ModerationLog, settings.database_target(), settings.store_images,
                                                  int(settings.stored_photo_mb * MEBIBYTE), settings.photo_retention_days)
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
        self._large_decoders.shutdown(wait=True)
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

    def _database_deadline(self) -> float:
        """The ``time.monotonic()`` until which a request waits for a busy moderation log."""
        return time.monotonic() + self.settings.db_timeout

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
        costs = [decode_cost(upload, model.predictor.preprocess, self.settings.max_pixels) for upload in uploads]
        with self.batcher.admit(len(uploads)) as admission:
            photos = await self._decode(uploads, costs, model)
            probs, scores = await self.batcher.submit(admission, model, np.stack([photo.pixels for photo in photos]))
        return model, photos, probs, scores

    async def _decode(self, uploads: Sequence[Upload], costs: list[int], model: LoadedModel) -> list[Photo]:
        """Decode the uploads within the decode budget: reserved here, given back as each photo's decoding ends."""
        large = [cost > LARGE_PHOTO_PIXELS for cost in costs]
        self.budget.reserve(sum(costs), large=any(large))
        loop = asyncio.get_running_loop()
        pending = sum(costs)
        futures = []
        try:
            for upload, cost, is_large in zip(uploads, costs, large):
                if is_large:
                    future = self._large_decoders.submit(timed, read_photo, upload, model.predictor, self.settings.max_pixels)
                    future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._charge_large, f))
                else:
                    future = self._decoders.submit(read_photo, upload, model.predictor, self.settings.max_pixels)
                # Given back when the thread is done, even if this request has gone meanwhile.
                future.add_done_callback(lambda _, cost=cost: loop.call_soon_threadsafe(self.budget.release, cost))
                pending -= cost
                futures.append(asyncio.wrap_future(future))
        finally:
            if pending:  # not submitted (shutting down)
                self.budget.release(pending)
        decoded = await asyncio.gather(*futures)
        return [photo[0] if is_large else photo for photo, is_large in zip(decoded, large)]

    def _charge_large(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.budget.charge_large(future.result()[1])

    async def probabilities(self, uploads: Sequence[Upload]) -> tuple[LoadedModel, np.ndarray, np.ndarray | None]:
        """Every class's probability (and the unknown score) of each photo: the Open Inference Protocol's answer."""
        model, _, probs, scores = await self._classify(uploads)
        return model, probs, scores

    async def predict(self, uploads: Sequence[Upload], top_k: int) -> dict[str, Any]:
        """Top-k labels of each photo."""
        model, photos, probs, scores = await self._classify(uploads)
        rule = model.rule(self.settings.confidence)
        results = photo_results([upload.filename for upload in uploads], photos, probs, scores, model.classes, top_k, rule)
        return {"model_version": model.version, "results": results}

    async def check(self, uploads: Sequence[Upload], declared: str, submitted_by: str | None = None) -> dict[str, Any]:
        """A listing's verdict: do its photos show the declared category? Recorded in the moderation log."""
        _require_category(self.model, declared)
        model, photos, probs, scores = await self._classify(uploads)
        _require_category(model, declared)  # the model may have been swapped for one without this category meanwhile
        rule = model.rule(self.settings.confidence)
        verdict = rule.verdict(probs, scores, declared, model.classes, model.predictor.description.coarse_of)
        per_photo = photo_results([upload.filename for upload in uploads], photos, probs, scores, model.classes, CHECK_TOP_K, rule)
        record = CheckRecord(
            declared, verdict.predicted, round(verdict.confidence, 6), verdict.verdict, model.version,
            [PhotoRecord(r["sha256"], r["predicted"], r["confidence"], p.media_type, u.data) for u, p, r in zip(uploads, photos, per_photo)],
            **review_context(probs, scores, model.classes), submitted_by=submitted_by, suggestion=verdict.suggestion,
            declared_level=verdict.declared_level, suggestion_level=verdict.suggestion_level,
        )
        assert self.moderation is not None
        # The verdict is answered only once it is in the log; a log busy beyond --db-timeout means 503, no verdict.
        check_id = await self._in_database(self.moderation.record, record, self._database_deadline())
        self.metrics.verdicts.labels(verdict.verdict).inc()
        self.metrics.categories.labels(declared, verdict.predicted).inc()
        if verdict.unknown:
            self.metrics.unknown_listings.inc()
        return check_answer(check_id, model.version, declared, verdict, rule, per_photo)

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
            "coarse_of": dict(description.coarse_of),
            "preprocess": model.predictor.preprocess.to_dict(),
            "thresholds": thresholds,
            "metrics": {k: v for k, v in model.metrics.items() if not isinstance(v, (dict, list))},
            "mode": description.mode,
            "backend": model.predictor.backend_name,
            "loaded_at": model.loaded_at,
            "limits": {
                "max_photos": self.settings.max_photos, "max_upload_mb": self.settings.max_upload_mb,
                "max_pixels": self.settings.max_pixels, "max_decode_pixels": self.settings.decode_budget,
            },
        }

    async def recent_checks(self, verdict: str | None, limit: int, before: int | None, after: int | None = None) -> dict[str, Any]:
        assert self.moderation is not None and (verdict is None or verdict in VERDICTS)
        checks = await self._in_database(self.moderation.recent, verdict, limit, before, self._database_deadline(), after)
        if after is not None:  # following the log: where to continue, even when this page is empty
            return {"checks": checks, "next_before": None, "next_after": checks[-1]["id"] if checks else after}
        return {"checks": checks, "next_before": checks[-1]["id"] if len(checks) == limit else None, "next_after": None}

    async def review_queue(self, reviewer: str, filters: QueueFilter) -> dict[str, Any]:
        assert self.moderation is not None
        return {"checks": await self._in_database(review_queue, self.moderation, reviewer, filters, self._database_deadline())}

    async def drift(self, days: int) -> dict[str, Any]:
        """Per day: shares of mismatches, uncertain checks and unknown photos; the category mix against training."""
        assert self.moderation is not None
        model = self.model
        counts = model.predictor.description.train_counts
        threshold = model.rule(self.settings.confidence).unknown_threshold
        return await self._in_database(drift_report, self.moderation, days, counts, threshold, self._database_deadline())

    async def review(self, check_id: int, reviewer: str, action: str, category: str | None) -> dict[str, Any]:
        """Keep a moderator's review of a check (an audit trail: the check itself never changes)."""
        assert self.moderation is not None
        review = await self._in_database(record_review, self.moderation, check_id, reviewer, action, category,
                                         self.model.classes, self._database_deadline())
        self.metrics.reviews.labels(action).inc()
        return {"check_id": check_id, "review": review}

    async def stored_photo(self, check_id: int, position: int) -> tuple[bytes, str | None] | None:
        assert self.moderation is not None
        return await self._in_database(self.moderation.photo, check_id, position, self._database_deadline())


def _require_category(model: LoadedModel, declared: str) -> None:
    """A declared category the model knows: a class, or a parent of classes (a model trained with coarse labels)."""
    parents = sorted(set(model.predictor.description.coarse_of.values()))
    if declared not in model.classes and declared not in parents:
        choices = ", ".join(model.classes) + (f" (or a parent category: {', '.join(parents)})" if parents else "")
        raise UnknownCategory(f"unknown category {declared!r}; choose one of: {choices}")
