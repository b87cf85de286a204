"""deploy/monitoring/ read for the tests: the alert rules, the Grafana dashboard and its queries
as PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = MONITORING / "alerts.test.yaml"


# Grafana's variables, replaced by a value of their kind before parsing.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
GRAFANA_VARIABLES = re.compile(r"\$\{?(\w+)\}?")


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values of their kind."""
    return GRAFANA_VARIABLES.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))


def rule_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return document


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_document()["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every target and every query variable's metric selector."""
    document = dashboard()
    queries = [
        (panel["title"], grafana_to_promql(target["expr"]))
        for panel in panels(document)
        for target in panel.get("targets", [])
    ]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query!r}"
            queries.append((f"variable {variable['name']}", grafana_to_promql(match[1])))
    return queries
