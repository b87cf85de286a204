"""deploy/monitoring/: the alert rules and the Grafana dashboard speak only of metrics the
poller exports, parse as PromQL, and the alerts fire when they should (promtool)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poller import metrics
from tests.support.monitoring import (
    alert_rules,
    dashboard,
    dashboard_queries,
    panels,
    rule_document,
)

promql_parser = pytest.importorskip("promql_parser", reason="pip install promql-parser")

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "deploy" / "REFERENCE.md"

# Labels Prometheus adds to every scraped series (the target's), not the poller.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
# Series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up": set[str]()}


def exported_series() -> dict[str, set[str]]:
    """Every series name the poller's registry exports, with the label names it may carry."""
    labels_of = {doc.name: set(doc.labels) for doc in metrics.METRICS}
    series: dict[str, set[str]] = dict(SCRAPE_SERIES)
    for family in metrics.REGISTRY.collect():
        name, kind = family.name, family.type
        names = {
            "counter": [f"{name}_total"],
            "gauge": [name],
            "histogram": [f"{name}_bucket", f"{name}_count", f"{name}_sum"],
            "summary": [name, f"{name}_count", f"{name}_sum"],
            "info": [f"{name}_info"],
        }.get(kind, [name])
        names += [sample.name for sample in family.samples]
        for series_name in names:
            labels = set(labels_of.get(name, ())) | set(labels_of.get(series_name, ()))
            labels |= {label for s in family.samples for label in s.labels}
            if series_name.endswith("_bucket"):
                labels.add("le")
            series.setdefault(series_name, set()).update(labels)
    return series


def selectors(expr: str) -> Iterator[tuple[str | None, set[str]]]:
    """(metric name, label names matched) of every selector; ValueError on bad PromQL."""
    found: list[tuple[str | None, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names = {m.name for m in node.matchers.matchers} - {"__name__"}
            found.append((node.name, names))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return iter(found)


def unknown_names(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What the expression selects that the poller does not export: metrics or labels."""
    problems = []
    for name, labels in selectors(expr):
        if name is None:
            problems.append(f"a selector without a metric name in {expr!r}")
        elif name not in exported:
            problems.append(f"{name} is not exported")
        else:
            extra = labels - exported[name] - TARGET_LABELS
            if extra:
                problems.append(f"{name} has no label {', '.join(sorted(extra))}")
    return problems


def test_the_name_check_can_fail() -> None:
    exported = exported_series()
    assert "poller_spool_rows" in exported
    assert "poller_pull_request_seconds_bucket" in exported
    assert "app" in exported["poller_messages_written_total"]
    assert unknown_names("rate(poller_messages_written_total[5m])", exported) == []
    assert unknown_names("rate(poller_messages_writen_total[5m])", exported) == [
        "poller_messages_writen_total is not exported"
    ]
    assert unknown_names('poller_spool_rows{app="a"}', exported) == [
        "poller_spool_rows has no label app"
    ]
    with pytest.raises(ValueError, match="parenthesis"):
        list(selectors("rate(poller_spool_rows[5m]"))


def test_the_prometheus_rule_is_a_complete_resource() -> None:
    document = rule_document()
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    assert document["metadata"]["name"] == "infobip-push-poller"
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)) >= 5
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_selects_only_exported_metrics() -> None:
    exported = exported_series()
    problems = {rule["alert"]: unknown_names(rule["expr"], exported) for rule in alert_rules()}
    assert {alert: p for alert, p in problems.items() if p} == {}


def test_the_reference_lists_the_alerts_of_the_rule_file() -> None:
    # One copy of the alerts: the reference names them and points at the file, and repeats no
    # expression that could drift from it.
    text = REFERENCE.read_text()
    section = text.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(Poller\w+)` \|", section, flags=re.MULTILINE)
    assert listed == [rule["alert"] for rule in alert_rules()]
    assert "deploy/monitoring/prometheusrule.yaml" in section
    for rule in alert_rules():
        assert " ".join(rule["expr"].split()) not in " ".join(text.split())


def test_the_dashboard_is_importable_with_a_datasource_variable() -> None:
    document = dashboard()
    assert document["uid"] == "infobip-push-poller"
    assert isinstance(document["schemaVersion"], int)
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(document)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(document):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        source = {"type": "prometheus", "uid": "${datasource}"}
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]


def test_every_dashboard_query_parses_and_selects_exported_metrics() -> None:
    exported = exported_series()
    problems: dict[str, list[str]] = {}
    used: set[str] = set()
    for where, expr in dashboard_queries():
        try:
            found = unknown_names(expr, exported)
        except ValueError as exc:
            found = [f"{expr!r}: {exc}"]
        used |= {name for name, _ in selectors(expr) if name} if not found else set()
        if found:
            problems.setdefault(where, []).extend(found)
    assert problems == {}
    # The dashboard shows the poller's own series, not only process metrics.
    assert {"poller_spool_rows", "poller_messages_written_total", "poller_pulls_total"} <= used
