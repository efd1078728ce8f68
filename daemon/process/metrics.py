"""Prometheus metrics of one engine, on a registry of its own (served at ``GET /metrics``).

Requests by state are read from the store at scrape time, so they are right after a
restart; the rest are counted as things happen.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from statemachines import State

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)


class _RequestsByState:
    """A collector: how many requests are in each state, from the store."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self.count_by_state = count_by_state

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("provisiond_requests", "Requests by state.",
                                   labels=["state"])
        counts = self.count_by_state()
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class Metrics:
    """The metrics of one engine."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_RequestsByState(count_by_state))
        self.state_seconds = Histogram(
            "provisiond_state_seconds", "Time requests spent in each state.", ["state"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.libvirt_call_seconds = Histogram(
            "provisiond_libvirt_call_seconds", "Latency of libvirt calls.", ["host", "call"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.libvirt_call_errors = Counter(
            "provisiond_libvirt_call_errors", "libvirt calls that failed.", ["host", "call"],
            registry=self.registry)
        self.placements = Counter(
            "provisiond_placements", "Placement outcomes.", ["outcome"],
            registry=self.registry)
        self.events = Counter(
            "provisiond_libvirt_events", "libvirt events received.", ["host", "kind", "event"],
            registry=self.registry)
        self.reconnects = Counter(
            "provisiond_reconnects", "Successful reconnections to a libvirt host.", ["host"],
            registry=self.registry)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
