"""Micro-batching: the photos of concurrent requests go through the model together, in one thread.

Photos of requests arriving less than ``window`` apart, up to ``max_batch``, form one batch, so
throughput under concurrency approaches batch throughput. Photos admitted but not yet answered
are bounded by ``queue_limit``: beyond it requests get 503 with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np

from vitrina.serving.errors import Overloaded
from vitrina.serving.metrics import ServiceMetrics
from vitrina.serving.model import LoadedModel

# The longest a micro-batch waits for more photos, in batch windows.
MAX_WAIT_WINDOWS = 20


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
