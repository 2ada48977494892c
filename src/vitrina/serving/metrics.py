"""Prometheus metrics of one server process: requests, latency, queue, batches, verdicts, reloads."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from vitrina.serving.model import LoadedModel

disable_created_metrics()  # the *_created series only double the size of every scrape


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
        self.reviews = Counter("vitrina_reviews", "Moderators' reviews of checks, by action", ["action"], registry=r)
        self.categories = Counter("vitrina_checks_by_category", "Listing checks by declared and predicted category",
                                  ["declared", "predicted"], registry=r)
        self.unknown_listings = Counter("vitrina_unknown_listings", "Listing checks whose photos look unlike every training photo", registry=r)
        self.queue_depth = Gauge("vitrina_queue_depth", "Photos waiting for the model", registry=r)
        self.in_flight = Gauge("vitrina_photos_in_flight", "Photos admitted and not yet answered (bounded by the queue limit)", registry=r)
        self.batch_size = Histogram("vitrina_batch_photos", "Photos per model call", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.inference = Histogram(
            "vitrina_inference_seconds", "Model time per batch", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.overloaded = Counter(
            "vitrina_overload_rejections", "Requests answered 503 because the queue or the decode budget was full", registry=r
        )
        self.decode_pixels = Gauge("vitrina_decode_pixels_in_flight", "Pixels being decoded (bounded by the decode budget)", registry=r)
        self.reloads = Counter("vitrina_model_reloads", "Model reloads after the files changed, by result", ["result"], registry=r)
        self.model = Gauge("vitrina_model_info", "The model being served (value 1)", ["name", "version"], registry=r)

    def show_model(self, model: LoadedModel) -> None:
        self.model.clear()
        self.model.labels(model.name, model.version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
