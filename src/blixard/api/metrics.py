"""Prometheus metrics and the ASGI middleware that records every request."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# `*_created` series double the output and tell operators nothing they need.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "blixard_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "blixard_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.lock_conflicts = Counter(
            "blixard_lock_conflicts_total",
            "LOCK requests refused because another ID holds the lock.",
            registry=self.registry,
        )
        self.bytes_written = Counter(
            "blixard_state_bytes_written_total",
            "Bytes of state accepted as new versions.",
            registry=self.registry,
        )
        self.versions_written = Counter(
            "blixard_state_versions_written_total",
            "New state versions accepted, by source.",
            ["source"],
            registry=self.registry,
        )
        self.versions_stored = Gauge(
            "blixard_state_versions_stored",
            "State versions held by the store.",
            registry=self.registry,
        )
        self.workspaces = Gauge(
            "blixard_workspaces", "Workspaces known to the store.", registry=self.registry
        )
        self.stored_bytes = Gauge(
            "blixard_state_stored_bytes",
            "Bytes the stored versions take after compression.",
            registry=self.registry,
        )


#: Labelled series kept at hand; any beyond are looked up each time.
_MAX_SERIES = 1024


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts and times requests by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        #: The labelled series of each (route, method, status) seen: prometheus_client's
        #: labels() validates and locks on every call, a few microseconds per request.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            series = self._series.get((template, method, status))
            if series is None:
                series = (
                    self.metrics.requests.labels(template, method, str(status)),
                    self.metrics.latency.labels(template, method),
                )
                if len(self._series) < _MAX_SERIES:  # methods are the client's to choose
                    self._series[(template, method, status)] = series
            series[0].inc()
            series[1].observe(time.perf_counter() - started)
