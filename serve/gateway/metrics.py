"""Prometheus metrics of the gateway (``GET /metrics``), each gateway with its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Monitor steps take ~1 ms (tiny models, a GPU) to ~1 s (a big CPU batch).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GatewayMetrics:
    """The gateway's counters, gauges and histograms.

    Metrics (all prefixed ``scm_``): ``live_streams``; ``requests_total{route,outcome}``; ``tokens_scored_total``;
    ``stops_total``; ``tokens_saved_total`` (tokens of the response budget not generated because of a stop: the
    request's max_tokens, or the local default, minus the tokens generated); ``chars_withheld_total`` (received
    after a stop, never released); ``monitor_errors_total``; ``rejected_total`` (429);
    ``stream_failures_total{cause}`` (streams ended by a failure the gateway survived: ``monitor`` (the model
    raised), ``input`` (text the monitor could not read), ``internal`` (any other exception in the worker),
    ``worker_down`` (the worker died), ``idle_timeout`` and ``time_limit`` (see ``--stream-idle-timeout``,
    ``--max-stream-seconds``)); ``truncated_total`` (responses cut at the monitor's maximum length);
    ``monitor_worker_up`` (1 while the monitor's worker thread runs);
    ``monitor_step_seconds``, ``monitor_batch_streams``, ``monitor_batch_tokens`` (per batched step);
    ``monitor_added_latency_seconds`` (an input's wait for its step plus the step). With a category head:
    ``category_stops_total{category}`` (stops by the category named at the stop token) and
    ``category_annotations_total{category,reason}`` (firings of the rule the category policy let through:
    ``annotated`` categories, or blocked ones ``below_threshold``).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.live_streams = Gauge("scm_live_streams", "Streams being monitored now.", registry=r)
        self.requests = Counter("scm_requests_total", "Finished requests by route and outcome.",
                                ["route", "outcome"], registry=r)
        self.tokens_scored = Counter("scm_tokens_scored_total", "Response tokens scored by the monitor.", registry=r)
        self.stops = Counter("scm_stops_total", "Streams the monitor stopped.", registry=r)
        self.tokens_saved = Counter("scm_tokens_saved_total",
                                    "Response tokens not generated because of a stop (token budget minus tokens "
                                    "generated; counted when the budget is known).", registry=r)
        self.chars_withheld = Counter("scm_chars_withheld_total", "Characters received after a stop, never released.",
                                      registry=r)
        self.monitor_errors = Counter("scm_monitor_errors_total", "Streams the monitor failed on.", registry=r)
        self.rejected = Counter("scm_rejected_total", "Requests refused with 429 (all stream slots taken).",
                                registry=r)
        self.stream_failures = Counter("scm_stream_failures_total",
                                       "Streams ended by a failure the gateway survived, by cause.", ["cause"],
                                       registry=r)
        self.category_stops = Counter("scm_category_stops_total",
                                      "Streams the monitor stopped, by the category named at the stop token.",
                                      ["category"], registry=r)
        self.category_annotations = Counter(
            "scm_category_annotations_total",
            "Firings of the decision rule that did not stop the stream because of the category named there, by "
            "category and reason (annotated, below_threshold).", ["category", "reason"], registry=r)
        self.truncated = Counter("scm_truncated_total", "Responses cut at the monitor's maximum length.", registry=r)
        self.worker_up = Gauge("scm_monitor_worker_up", "1 while the monitor's worker thread runs, else 0.",
                               registry=r)
        self.step_seconds = Histogram("scm_monitor_step_seconds", "Duration of one batched monitor step.",
                                      buckets=_SECONDS, registry=r)
        self.batch_streams = Histogram("scm_monitor_batch_streams", "Streams advanced by one monitor step.",
                                       buckets=_BATCH, registry=r)
        self.batch_tokens = Histogram("scm_monitor_batch_tokens", "Tokens scored by one monitor step.",
                                      buckets=_BATCH, registry=r)
        self.added_latency = Histogram("scm_monitor_added_latency_seconds",
                                       "From an input's arrival at the gateway to the end of the step that scored it.",
                                       buckets=_SECONDS, registry=r)

    def observe_step(self, seconds: float, streams: int, tokens: int) -> None:
        """One batched monitor step (called from the monitor's worker thread)."""
        self.step_seconds.observe(seconds)
        self.batch_streams.observe(streams)
        self.batch_tokens.observe(tokens)
        self.tokens_scored.inc(tokens)

    def observe_failure(self, cause: str) -> None:
        """One stream ended by a failure (called from the worker thread and the event loop)."""
        self.stream_failures.labels(cause).inc()

    def observe_latency(self, seconds: float) -> None:
        """The monitor-added latency of one input (an upstream delta or a generated token batch)."""
        self.added_latency.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
