"""The engine's Prometheus metrics (`GET /metrics`): what happens is counted where it happens (jobs, images, stages,
searches, lost workers); what is, is read when Prometheus asks (queue depth, workers, model caches, device memory).

One registry per engine app, not prometheus_client's global one: several apps in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.client.answers import WorkerInfo

# Stages a job's time is split into (engine.server.front): queue wait, inputs, the maker's (model load, plan, steps,
# safety, png, clip), the trip to the worker and back, and the front's (store, index, done).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SEARCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """The counters and histograms the engine moves, and the gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("dreamhall_jobs", "Jobs that ended, by source and outcome (done, failed, cancelled, "
                            "found: answered from the gallery, requeued)", ["source", "outcome"],
                            registry=self.registry)  # fmt: skip
        self.images = Counter("dreamhall_images", "Images made and stored, by source", ["source"],
                              registry=self.registry)  # fmt: skip
        self.stage_seconds = Histogram("dreamhall_job_stage_seconds", "Where a job's time went, by stage (queued, "
                                       "model, steps, store, ...)", ["stage"], buckets=STAGE_BUCKETS,
                                       registry=self.registry)  # fmt: skip
        self.search_seconds = Histogram("dreamhall_search_seconds", "Gallery searches, by kind (text, image, "
                                        "similar)", ["kind"], buckets=SEARCH_BUCKETS,
                                        registry=self.registry)  # fmt: skip
        self.batch_jobs = Histogram("dreamhall_batch_jobs", "Jobs per pipeline call (cross-user batching: more than "
                                    "one when queued jobs shared a model, size and steps)",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=self.registry)  # fmt: skip
        self.worker_failures = Counter("dreamhall_worker_failures", "Workers lost while running a job (a Ray actor "
                                       "died; the job was requeued)", registry=self.registry)  # fmt: skip

    def watch(self, depth: Callable[[], dict[int, int]], workers: Callable[[], list[WorkerInfo]]) -> None:
        """Read the queue and the workers whenever Prometheus asks (`workers` may say the engine is starting)."""
        self.registry.register(_Now(depth, workers))

    def job_ended(self, source: str, outcome: str) -> None:
        self.jobs.labels(source=source, outcome=outcome).inc()

    def stages(self, spent: dict[str, float]) -> None:
        for stage, seconds in spent.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Now(Collector):
    def __init__(self, depth: Callable[[], dict[int, int]], workers: Callable[[], list[WorkerInfo]]) -> None:
        self.depth = depth
        self.workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily("dreamhall_queue_depth", "Jobs waiting, by priority", labels=["priority"])
        for priority, count in sorted(self.depth().items()):
            queued.add_metric([str(priority)], count)
        yield queued
        infos = self.workers()
        total = GaugeMetricFamily("dreamhall_workers", "Workers, by state (alive, restarting, busy)", labels=["state"])
        total.add_metric(["alive"], sum(w.alive for w in infos))
        total.add_metric(["restarting"], sum(not w.alive for w in infos))
        total.add_metric(["busy"], sum(w.job is not None for w in infos))
        yield total
        cache = {
            "loaded": GaugeMetricFamily("dreamhall_model_cache_models", "Models in a worker's memory",
                                        labels=["worker"]),
            "bytes": GaugeMetricFamily("dreamhall_model_cache_bytes", "Weights in a worker's model cache",
                                       labels=["worker"]),
            "budget": GaugeMetricFamily("dreamhall_model_cache_budget_bytes", "A worker's model cache budget",
                                        labels=["worker"]),
            "loads": GaugeMetricFamily("dreamhall_model_loads", "Models a worker has loaded since it started",
                                       labels=["worker"]),
            "evictions": GaugeMetricFamily("dreamhall_model_evictions", "Models a worker unloaded to stay within its "
                                           "budget, since it started", labels=["worker"]),
            "device_bytes": GaugeMetricFamily("dreamhall_device_memory_bytes", "Memory allocated on the worker's "
                                              "GPU (CUDA)", labels=["worker"]),
        }  # fmt: skip
        for w in infos:
            cache["loaded"].add_metric([w.id], len(w.loaded))
            for key, value in w.cache.items():
                if key in cache and value is not None:
                    cache[key].add_metric([w.id], value)
        yield from cache.values()
