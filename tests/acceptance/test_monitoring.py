"""deploy/monitoring/ through promtool: the rules and the dashboard's queries pass Prometheus'
own checks, and the alerts fire when they should (alerts.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.monitoring import (
    RULE_TESTS,
    alert_rules,
    dashboard_queries,
    rule_document,
)


def promtool() -> str:
    # On PATH, or beside this interpreter, where .ci/deploy-checks puts it.
    beside = Path(sys.executable).parent / "promtool"
    found = shutil.which("promtool") or (str(beside) if beside.exists() else None)
    if found is None:
        pytest.skip(
            "promtool is not installed (Debian: apt-get install prometheus;"
            " bash .ci/deploy-checks puts it in .venv/bin)"
        )
    return found


def test_promtool_checks_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    tool = promtool()
    rules = tmp_path / "poller.rules.yaml"
    rules.write_text(yaml.safe_dump(rule_document()["spec"]))
    # Prometheus' own parser for the dashboard too: each query as a recording rule.
    queries = tmp_path / "dashboard.rules.yaml"
    recorded = [
        {"record": f"dashboard:query:{i}", "expr": expr}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(rules), str(queries)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    # Tried (alerts.test.yaml): the spool's oldest message ageing past 5 minutes; writes
    # stopping while Infobip reports messages waiting (and a quiet poller that must not
    # alert); every pull failing (and a forward-only poller, which sends none).
    tool = promtool()
    (tmp_path / "poller.rules.yaml").write_text(yaml.safe_dump(rule_document()["spec"]))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
