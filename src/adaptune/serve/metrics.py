"""Prometheus metrics of one server (its own registry, so several apps in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
disable_created_metrics()  # the *_created series only add noise to every scrape


class Metrics:
    """Requests and errors by endpoint, adapter and status; latency; batch sizes; queue depth; tokens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adaptune_requests", "HTTP requests", ("endpoint", "adapter", "status"), registry=r)
        self.errors = Counter(
            "adaptune_errors", "requests answered with a 4xx or 5xx", ("endpoint", "adapter", "status"), registry=r
        )
        self.latency = Histogram("adaptune_request_seconds", "time to the full response", ("endpoint",), registry=r)
        self.batch_rows = Histogram(
            "adaptune_batch_rows",
            "rows per forward (texts or decoding sequences)",
            ("kind",),
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "adaptune_batch_requests", "requests per classification forward", buckets=ROW_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "adaptune_forward_seconds", "time of one batched forward (decode: one step)", ("kind",), registry=r
        )
        self.queue_depth = Gauge("adaptune_queue_depth", "requests waiting for a batch", ("kind",), registry=r)
        self.tokens = Counter("adaptune_generated_tokens", "completion tokens generated", ("adapter",), registry=r)

    def watch_queue(self, kind: str, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as the queue depth of ``kind`` at every scrape."""
        self.queue_depth.labels(kind).set_function(lambda: float(depth()))

    def observe(self, endpoint: str, adapter: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, adapter, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, adapter, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
