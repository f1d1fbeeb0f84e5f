"""Prometheus metrics: what the engine and the sessions are doing, scraped at GET /metrics.

One registry per server, so that servers built in one process (tests) do not collide. prometheus-client's
metric objects are thread-safe, so the engine thread records directly; every update is a lock and an add.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
FRAME_AGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _MlxMemoryCollector(Collector):
    """MLX's allocator figures, read at scrape time (they are plain counters, safe from any thread)."""

    def collect(self):
        yield GaugeMetricFamily("mlxd_mlx_active_memory_bytes", "Memory held by MLX arrays",
                                value=mx.get_active_memory())
        yield GaugeMetricFamily("mlxd_mlx_peak_memory_bytes", "Peak memory held by MLX arrays",
                                value=mx.get_peak_memory())


CACHE_COUNTERS = {"hits": "lookups answered from the cache", "misses": "lookups the cache could not answer",
                  "tokens_saved": "prompt tokens not prefilled because the cache held them"}
CACHE_GAUGES = {"bytes": "bytes the cache holds", "entries": "entries the cache holds"}


class _CacheCollector(Collector):
    """A cache's own counts (`stats()`: hits, misses, and what else it keeps), read at scrape time."""

    def __init__(self, name: str, what: str, stats: Callable[[], dict[str, int]]) -> None:
        self.name, self.what, self.stats = name, what, stats

    def collect(self):
        for key, value in self.stats().items():
            if key in CACHE_COUNTERS:
                yield CounterMetricFamily(f"mlxd_{self.name}_{key}", f"{self.what}: {CACHE_COUNTERS[key]}", value=value)
            else:
                yield GaugeMetricFamily(f"mlxd_{self.name}_{key}", f"{self.what}: {CACHE_GAUGES[key]}", value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(_MlxMemoryCollector())
        self.queue_depth = Gauge("mlxd_queue_depth", "Work waiting for the engine", ["kind"], registry=registry)
        self.active_sessions = Gauge("mlxd_active_sessions", "Open WebSocket sessions", registry=registry)
        self.connections = Counter("mlxd_connections", "WebSocket connections accepted", registry=registry)
        self.refused = Counter("mlxd_connections_refused", "WebSocket handshakes refused (origin, unauthorized, "
                               "forbidden, capacity)", ["reason"], registry=registry)
        self.disconnects = Counter("mlxd_disconnects", "Connections the server ended (idle, backlog, send_timeout, "
                                   "internal)", ["reason"], registry=registry)
        self.loop_lag = Histogram("mlxd_event_loop_lag_seconds", "How much later than asked the event loop woke a "
                                  "sleeping task", buckets=LOOP_LAG_BUCKETS, registry=registry)
        self.loop_own_lag = Histogram("mlxd_event_loop_own_lag_seconds", "The event loop's lag less the time its "
                                      "thread waited for a CPU that other threads had (Linux; elsewhere the lag)",
                                      buckets=LOOP_LAG_BUCKETS, registry=registry)
        self.frames_received = Counter("mlxd_frames_received", "Video and screen frames received",
                                       registry=registry)
        self.frames_dropped = Counter("mlxd_frames_dropped", "Frames dropped before inference", ["reason"],
                                      registry=registry)
        self.frame_age = Histogram("mlxd_frame_age_seconds", "Age of a frame when its inference starts",
                                   buckets=FRAME_AGE_BUCKETS, registry=registry)
        self.requests = Counter("mlxd_requests", "Inputs that reached a terminal message",
                                ["input_type", "outcome"], registry=registry)
        self.errors = Counter("mlxd_errors", "Error messages sent to clients", ["code"], registry=registry)
        self.prompt_tokens = Counter("mlxd_prompt_tokens", "Prompt tokens processed", registry=registry)
        self.generated_tokens = Counter("mlxd_generated_tokens", "Tokens generated", registry=registry)
        self.tokens_per_second = Gauge("mlxd_tokens_per_second", "Decode rate of the last response",
                                       registry=registry)
        self.decode_rate = Histogram("mlxd_decode_tokens_per_second", "Decode rate per response",
                                     buckets=RATE_BUCKETS, registry=registry)
        self.time_to_first_token = Histogram("mlxd_time_to_first_token_seconds",
                                             "From inference start to the first token",
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram("mlxd_inference_seconds", "From inference start to the last token",
                                   buckets=INFERENCE_BUCKETS, registry=registry)
        self.batch_size = Histogram("mlxd_batch_size", "Requests decoded together in one engine step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry)
        self.model_info = Gauge("mlxd_model_info", "The model served", ["model", "modalities"],
                                registry=registry)
        self.model_loaded = Gauge("mlxd_model_loaded", "1 once the model is loaded", registry=registry)
        self.model_load_seconds = Gauge("mlxd_model_load_seconds", "Time the model took to load",
                                        registry=registry)
        self.upstream_requests = Counter("mlxd_upstream_requests", "Requests sent to the upstream server, by "
                                         "outcome (finish reason, cancelled or error)", ["outcome"], registry=registry)
        self.upstream_errors = Counter("mlxd_upstream_errors", "Upstream requests that failed (unreachable, timeout, "
                                       "http_<status>, stream_cut)", ["reason"], registry=registry)
        self.upstream_first_byte = Histogram("mlxd_upstream_first_byte_seconds", "From sending an upstream request "
                                             "to its first streamed delta", buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_in_flight = Gauge("mlxd_upstream_in_flight", "Upstream requests in flight", registry=registry)
        for kind in ("request", "frame"):
            self.queue_depth.labels(kind=kind)

    def set_queue_depths(self, requests: int, frames: int) -> None:
        self.queue_depth.labels(kind="request").set(requests)
        self.queue_depth.labels(kind="frame").set(frames)

    def watch_cache(self, name: str, what: str, stats: Callable[[], dict[str, int]]) -> None:
        """Expose a cache's `stats()` as mlxd_<name>_<stat> (counters for hits, misses, tokens saved)."""
        self.registry.register(_CacheCollector(name, what, stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
