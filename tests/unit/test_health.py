"""The health side that needs no server: the metrics list documents the registry, and the probe's
URL for a wildcard bind."""

from __future__ import annotations

from poller import metrics
from poller.health import probe


def test_metrics_doc_list_covers_the_registry() -> None:
    documented = {doc.name.removesuffix("_total") for doc in metrics.METRICS}
    registered = {
        family.name
        for family in metrics.REGISTRY.collect()
        if family.name.startswith("poller_") or family.name == "poller"
    }
    assert {name.removesuffix("_info") for name in documented} >= registered - {"poller"}
    assert "| `poller_spool_rows` | gauge |" in metrics.markdown_table()


def test_local_url_for_wildcard_binds() -> None:
    assert probe.local_url("::", 9464) == "http://[::1]:9464/readyz"
    assert probe.local_url("10.1.2.3", 1, "/livez") == "http://10.1.2.3:1/livez"
