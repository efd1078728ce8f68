"""The engine's Prometheus metrics, as a scraper reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(h) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = h.service.metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_what_happened(make_harness) -> None:
    h = await make_harness(sizes={"small": {"cpus": 1, "memory": 1024, "storage_size_in_gb": 15},
                                  "huge": {"cpus": 1, "memory": 1024,
                                           "storage_size_in_gb": 500}})
    await h.run(size="small")  # reuses free-15g
    await h.run(size="small")  # creates
    await h.run(size="huge")   # no storage
    m = samples(h)

    assert m[("provisiond_requests", (("state", "done"),))] == 2
    assert m[("provisiond_requests", (("state", "failed"),))] == 1
    assert m[("provisiond_requests", (("state", "defining"),))] == 0
    for outcome in ("reused", "created", "no_storage"):
        assert m[("provisiond_placements_total", (("outcome", outcome),))] == 1
    assert m[("provisiond_state_seconds_count", (("state", "defining"),))] == 2
    assert m[("provisiond_state_seconds_count", (("state", "storage-creating"),))] == 1
    assert m[("provisiond_libvirt_call_seconds_count",
              (("call", "create_volume"), ("host", "testhost")))] == 1
    assert m[("provisiond_libvirt_events_total",
              (("event", "DEFINED"), ("host", "testhost"), ("kind", "DomainEvent")))] == 2


async def test_failed_libvirt_calls_are_counted(make_harness) -> None:
    h = await make_harness(faults={"defineXML": "no emulator"})
    await h.run(size="small")
    m = samples(h)
    assert m[("provisiond_libvirt_call_errors_total",
              (("call", "define_domain"), ("host", "testhost")))] == 1
