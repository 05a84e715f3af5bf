"""Prometheus metrics of a serving process, in one registry the gateway owns and passes around.

Names follow the Prometheus rules (reference serving.md section 9): the `lingbot_` prefix, base
units (`_seconds`, `_bytes`), `_total` on counters, no colons, and no session-id labels (one series
per session would grow without bound). Labels take a few fixed values: `stage`, `reason`, `code`,
`kind`.

    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_metrics(9100, registry)                  # GET http://host:9100/metrics

Every instance takes its own `CollectorRegistry` (never the global default), so tests and several
gateways in one process do not collide.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

STAGES = ("queue", "denoise", "decode", "jpeg")
# Stage and latency buckets: 1 ms to 10 s. A block is 0.75 s of video at 16 fps, so a healthy
# server keeps every stage and the action-to-frame latency well under a second; the top
# buckets catch overload (and CPU runs).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServingMetrics:
    """The gateway's and scheduler's metrics. Thread-safe (prometheus-client locks each sample):
    the engine thread and the event loop both update them."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.sessions_active = Gauge("lingbot_sessions_active", "Sessions generating now (holding a KV slot)",
                                     registry=registry)
        self.kv_slots = Gauge("lingbot_kv_slots", "KV-cache rows in the pool: sessions that can play at once "
                              "(KV use = lingbot_sessions_active / lingbot_kv_slots)", registry=registry)
        self.sessions_waiting = Gauge("lingbot_sessions_waiting", "Sessions admitted and waiting for a KV slot",
                                      registry=registry)
        self.sessions_admitted = Counter("lingbot_sessions_admitted_total", "Sessions accepted by the scheduler",
                                         registry=registry)
        self.sessions_refused = Counter(
            "lingbot_sessions_refused_total",
            "Play calls refused before a session started, by reason (capacity, invalid, unauthenticated, draining)",
            ["reason"], registry=registry)
        self.blocks_generated = Counter("lingbot_blocks_generated_total", "Blocks denoised and decoded",
                                        registry=registry)
        self.frames_generated = Counter("lingbot_frames_generated_total", "Video frames decoded", registry=registry)
        self.frames_sent = Counter("lingbot_frames_sent_total", "Frames written to clients", registry=registry)
        self.frames_dropped = Counter(
            "lingbot_frames_dropped_total",
            "Frames dropped unsent because their session's queue was full (a client reading too slowly)",
            registry=registry)
        self.stage_seconds = Histogram(
            "lingbot_stage_seconds",
            "Seconds per block in each stage: queue (late against its deadline), denoise (its batch's DiT "
            "steps), decode (VAE), jpeg (encoding the block's frames)",
            ["stage"], buckets=SECONDS_BUCKETS, registry=registry)
        self.action_latency = Histogram(
            "lingbot_action_latency_seconds",
            "Server-side seconds from receiving an action to writing the first frame it conditions",
            buckets=SECONDS_BUCKETS, registry=registry)
        self.batch_size = Histogram("lingbot_batch_size", "Sessions per DiT step", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.errors = Counter("lingbot_errors_total", "Errors returned to clients, by gRPC status code name",
                              ["code"], registry=registry)
        self.gpu_memory = Gauge(
            "lingbot_gpu_memory_bytes",
            "CUDA memory of the stages' processes, from PyTorch's caching allocator: stage dit+vae (both "
            "in the serving process) or dit / vae (the Ray stage actors); kind allocated (tensors) or "
            "reserved (held by the allocator). Updated after each DiT step; absent off the GPU",
            ["stage", "kind"], registry=registry)
        for stage in STAGES:                       # export every series from the start, at 0
            self.stage_seconds.labels(stage=stage)

    def track_sessions(self, stats: Callable[[], dict]) -> None:
        """Read the session gauges and the pool size from `stats()` (`Scheduler.stats`) at each scrape."""
        self.sessions_active.set_function(lambda: stats()["running"])
        self.kv_slots.set_function(lambda: stats()["max_sessions"])
        self.sessions_waiting.set_function(lambda: stats()["waiting"])

    def observe_block(self, num_frames: int, timings: dict[str, float]) -> None:
        """A block left the scheduler: count it and its stage seconds (any of `STAGES`)."""
        self.blocks_generated.inc()
        self.frames_generated.inc(num_frames)
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)

    def observe_batch(self, num_sessions: int) -> None:
        """One DiT step of `num_sessions` sessions (called by the engine loop)."""
        self.batch_size.observe(num_sessions)

    def observe_gpu_memory(self, readings: dict[str, dict[str, int]]) -> None:
        """`Executor.gpu_memory()`: stage -> kind -> bytes."""
        for stage, kinds in readings.items():
            for kind, value in kinds.items():
                self.gpu_memory.labels(stage=stage, kind=kind).set(value)


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0"):
    """Serve `registry` as `/metrics` on `addr:port` from a daemon thread; returns
    prometheus-client's (server, thread) pair (`server.shutdown()` stops it)."""
    return start_http_server(port, addr=addr, registry=registry)
