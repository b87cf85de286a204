"""The deploy artifacts keep the promises operators rely on, and agree with the settings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from poller.settings import SECRETS_DIR_ENV, Settings, env_name, load_settings
from tests.support.deploy import import_yaml, systemd_unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "infobip-push-poller.service"
SPOOL_DIR = "/var/lib/infobip-push-poller"
UID = 10001
STOP_MARGIN = 5.0  # seconds between the end of the grace period and the SIGKILL


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _known_names() -> set[str]:
    """Every POLLER_* variable the settings model reads."""
    names = {"POLLER_CONFIG", SECRETS_DIR_ENV}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        names.update(env_name((section, name)) for name in model.model_fields)
    return names


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Settings:
    """What the poller would read from exactly these variables (no stray .env, no TOML)."""
    # The model ignores unknown variables: a misspelt one would silently do nothing.
    assert set(env) <= _known_names(), set(env) - _known_names()
    if SECRETS_DIR_ENV in env:
        env = {**env, SECRETS_DIR_ENV: str(_secret_volume(tmp))}
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("POLLER_CONFIG", raising=False)
    for name in [n for n in os.environ if n.startswith("POLLER_")]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def _secret_volume(tmp: Path) -> Path:
    """secret.env as a Secret volume shows it: one file per key behind the ..data link."""
    secrets = tmp / "secrets"
    data = secrets / "..2026_11_30_00_00_00.000000000"
    data.mkdir(parents=True, exist_ok=True)
    if not (secrets / "..data").exists():
        (secrets / "..data").symlink_to(data.name)
    for key, value in _env_file(K8S / "secret.env").items():
        (data / key).write_text(value)
        if not (secrets / key).exists():
            (secrets / key).symlink_to(f"..data/{key}")
    return secrets


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", text.strip())
    assert match, f"cannot read a duration from {text!r}"
    number = float(match.group(1))
    return number * 60 if match.group(2) in ("min", "m") else number


# --- Kubernetes ---------------------------------------------------------------------------


def _docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in import_yaml().safe_load_all((K8S / name).read_text()) if doc]


@pytest.fixture(scope="module")
def statefulset() -> dict[str, Any]:
    (doc,) = _docs("statefulset.yaml")
    assert doc["kind"] == "StatefulSet"
    return doc


@pytest.fixture(scope="module")
def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    (only,) = statefulset["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def configmap_env() -> dict[str, str]:
    return _env_file(K8S / "poller.env")


def test_kustomization_lists_every_manifest_and_generator() -> None:
    kustomization = import_yaml().safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (configmap,) = kustomization["configMapGenerator"]
    (secret,) = kustomization["secretGenerator"]
    assert configmap["envs"] == ["poller.env"]
    assert secret["envs"] == ["secret.env"]


def test_one_replica_with_a_retained_spool_claim(statefulset: dict[str, Any]) -> None:
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == "infobip-push-poller"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_spool_lives_on_the_claim_and_tmp_is_writable(
    statefulset: dict[str, Any], container: dict[str, Any], configmap_env: dict[str, str]
) -> None:
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert mounts[SPOOL_DIR] == claim
    assert str(Path(configmap_env["POLLER_SPOOL__PATH"]).parent) == SPOOL_DIR
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_grace_period_covers_the_poller_stop(
    statefulset: dict[str, Any],
    configmap_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.schedule.grace_period + STOP_MARGIN


def test_probes_hit_the_health_server(
    container: dict[str, Any],
    configmap_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.health.port == 9464
    assert ports["forward"] == settings.forward.port == 8088
    # Bound to loopback, the kubelet's probes could not reach it.
    assert settings.health.host == "0.0.0.0"
    assert settings.health.enabled
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"


def test_restricted_security_context(
    statefulset: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == UID
    assert pod["fsGroup"] == UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert statefulset["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_resources_have_requests_and_limits(container: dict[str, Any]) -> None:
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_secrets_come_from_the_secret_as_files(
    statefulset: dict[str, Any], container: dict[str, Any], configmap_env: dict[str, str]
) -> None:
    # The Secret is mounted read-only where POLLER_SECRETS_DIR points; no secret in the
    # environment or the ConfigMap.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
    assert mount["readOnly"] is True
    assert configmap_env[SECRETS_DIR_ENV] == mount["mountPath"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "infobip-push-poller"
    assert "env" not in container
    assert container["envFrom"] == [{"configMapRef": {"name": "infobip-push-poller"}}]
    secret = _env_file(K8S / "secret.env")
    assert "PLACEHOLDER" in secret["POLLER_INFOBIP__API_KEY"]
    assert not any(
        key.endswith(("API_KEY", "PASSWORD", "SECRET", "TOKEN")) for key in configmap_env
    )


def test_configmap_settings_are_valid_settings(
    configmap_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The Secret's keys as the volume shows them (one file each, behind Kubernetes' ..data
    # link), read through POLLER_SECRETS_DIR.
    secret = _env_file(K8S / "secret.env")
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    assert str(settings.spool.path) == configmap_env["POLLER_SPOOL__PATH"]
    assert settings.infobip.api_key is not None
    assert settings.infobip.api_key.get_secret_value() == secret["POLLER_INFOBIP__API_KEY"]


def test_services_and_servicemonitor_line_up(statefulset: dict[str, Any]) -> None:
    services = {doc["metadata"]["name"]: doc for doc in _docs("service.yaml")}
    headless = services[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (monitor,) = _docs("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in services.values() if wanted.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in scraped] == ["infobip-push-poller-metrics"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}


def _ingress() -> dict[str, Any]:
    (ingress,) = [doc for doc in _docs("forward.yaml") if doc["kind"] == "Ingress"]
    return ingress


def _nginx_size(text: str) -> int:
    """An nginx size (``4m``, ``512k``, ``1g``, bytes) in bytes."""
    match = re.fullmatch(r"(\d+)([kmg]?)", text.strip().lower())
    assert match, f"not an nginx size: {text!r}"
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def test_the_forward_ingress_writes_no_access_log() -> None:
    # With POLLER_FORWARD__TOKEN_IN=path (the default) the token is in the URL, and
    # ingress-nginx's default access log writes $request, the request line with the URL.
    annotations = _ingress()["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/enable-access-log"] == "false"
    paths = [p["path"] for rule in _ingress()["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/infobip/forward"]  # the only location of this Ingress: no log for any


def test_the_forward_ingress_limits_rate_connections_and_body_size(
    configmap_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    annotations = _ingress()["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/limit-connections"]) > 0
    # What nginx lets through is what the receiver takes: no body the receiver would refuse
    # with a 413 after nginx read it all, no body nginx refuses that the receiver takes.
    body = _nginx_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert body == settings.forward.max_body_bytes
    # A slow sender is held by nginx, which passes the body on once it is whole.
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"


def test_the_egress_policy_allows_exactly_dns_redis_and_https(
    statefulset: dict[str, Any],
    configmap_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    redis_port = urlparse(settings.redis.url).port or 6379
    policies = [
        doc for doc in _docs("networkpolicy.yaml") if "Egress" in doc["spec"]["policyTypes"]
    ]
    (egress,) = policies
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert egress["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed: set[tuple[int, str]] = set()
    for rule in egress["spec"]["egress"]:
        # A rule without ports would let every port through.
        assert rule.get("ports"), rule
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
        allowed |= ports
        if (53, "UDP") in ports:
            assert ports == {(53, "UDP"), (53, "TCP")}
            (peer,) = rule["to"]
            assert peer["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "kube-system"
            }
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert allowed == {(53, "UDP"), (53, "TCP"), (redis_port, "TCP"), (443, "TCP")}
    assert urlparse(settings.infobip.base_url).scheme == "https"


# Measured (deploy/OPERATIONS.md, Memory): the process at rest, the peak RSS a body costs per
# byte until its rows are in Redis, the flusher's read-back, one forward connection at the
# bounds the Ingress puts on what reaches the pod (headers, a body it has not read yet).
AT_REST_MIB = 66
PER_BODY_BYTE = 3
READ_BACK_MIB = 60
PER_CONNECTION_MIB = 0.2


def test_the_memory_limit_fits_the_worst_case_the_bounds_allow(
    container: dict[str, Any],
    configmap_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = _settings_from(configmap_env, monkeypatch, tmp_path)
    mib = 1024 * 1024
    pulls = settings.infobip.pulls_in_flight * settings.infobip.max_body_bytes * PER_BODY_BYTE
    # The receiver takes one body whatever its size, more while they fit the bytes in flight.
    forward = settings.forward
    bodies = max(forward.max_bytes_in_flight, forward.max_body_bytes) * PER_BODY_BYTE
    connections = forward.max_connections * PER_CONNECTION_MIB * mib
    worst = AT_REST_MIB * mib + READ_BACK_MIB * mib + pulls + bodies + connections
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert worst <= int(limit.removesuffix("Mi")) * mib, worst / mib


# --- systemd ------------------------------------------------------------------------------


def _unit_environment(unit: dict[str, list[str]]) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in unit["Service.Environment"])
    return {k: v.replace("%S", "/var/lib") for k, v in pairs.items()}


def test_env_example_names_only_real_settings() -> None:
    text = (DEPLOY / "systemd" / "env.example").read_text()
    mentioned = set(re.findall(r"^#?(POLLER_[A-Z_]+)=", text, flags=re.MULTILINE))
    assert mentioned
    assert mentioned <= _known_names(), mentioned - _known_names()


def test_unit_stop_timeout_covers_the_grace_period(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unit = systemd_unit(UNIT)
    env = {**_env_file(DEPLOY / "systemd" / "env.example"), **_unit_environment(unit)}
    settings = _settings_from(env, monkeypatch, tmp_path)
    (timeout,) = unit["Service.TimeoutStopSec"]
    assert _seconds(timeout) >= settings.schedule.grace_period + STOP_MARGIN
    assert unit["Service.KillSignal"] == ["SIGTERM"]


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    unit = systemd_unit(UNIT)
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    (watchdog,) = unit["Service.WatchdogSec"]
    assert _seconds(watchdog) > 0
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.ExecStart"][0].endswith("poller run")


def test_unit_spool_is_in_its_state_directory() -> None:
    unit = systemd_unit(UNIT)
    (state,) = unit["Service.StateDirectory"]
    spool = _unit_environment(unit)["POLLER_SPOOL__PATH"]
    assert Path(spool).parent == Path("/var/lib") / state
    assert unit["Service.DynamicUser"] == ["yes"]
    assert unit["Service.EnvironmentFile"] == ["-/etc/infobip-push-poller/env"]


def test_unit_is_hardened() -> None:
    unit = systemd_unit(UNIT)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert unit[f"Service.{key}"] == [value], key


# --- Docker -------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the runtime stage, continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _one(instructions: list[tuple[str, str]], word: str) -> str:
    values = [rest for w, rest in instructions if w == word]
    assert len(values) == 1, f"expected one {word}, found {values}"
    return values[0]


def test_image_runs_as_a_fixed_non_root_user() -> None:
    user = _one(_dockerfile(), "USER")
    assert user.split(":")[0] == str(UID)


def test_image_healthcheck_uses_poller_check() -> None:
    healthcheck = _one(_dockerfile(), "HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command == ["poller", "check"]


def test_image_entrypoint_signal_port_and_volume() -> None:
    instructions = _dockerfile()
    assert json.loads(_one(instructions, "ENTRYPOINT")) == ["poller"]
    assert json.loads(_one(instructions, "CMD")) == ["run"]
    assert _one(instructions, "STOPSIGNAL") == "SIGTERM"
    assert _one(instructions, "EXPOSE") == "9464 8088"  # health; the forward receiver
    assert json.loads(_one(instructions, "VOLUME")) == [SPOOL_DIR]
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert f"POLLER_SPOOL__PATH={SPOOL_DIR}/spool.db" in env
    assert "POLLER_HEALTH__HOST=0.0.0.0" in env


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!poller/"} <= set(lines)


# --- Compose ------------------------------------------------------------------------------


def test_compose_demo_wires_the_three_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compose = import_yaml().safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "simulator", "poller"}
    assert "--appendonly" in services["redis"]["command"]
    simulator = services["simulator"]
    assert simulator["command"][0] == "simulate"
    assert "--auto-configure" in simulator["command"]
    # The image's HEALTHCHECK probes the poller's health server, which the simulator lacks.
    assert simulator["healthcheck"] == {"disable": True}
    poller = services["poller"]
    assert poller["command"] == ["run"]
    settings = _settings_from(poller["environment"], monkeypatch, tmp_path)
    assert settings.infobip.base_url == "http://simulator:8089"
    assert settings.redis.url.startswith("redis://redis:")
    assert _seconds(poller["stop_grace_period"]) >= settings.schedule.grace_period + STOP_MARGIN
    assert any(v.endswith(f":{SPOOL_DIR}") for v in poller["volumes"])
    assert Path(settings.spool.path).parent == Path(SPOOL_DIR)


# --- Documentation ------------------------------------------------------------------------


def test_metrics_list_in_the_docs_is_the_generated_one() -> None:
    from poller import metrics

    table = metrics.markdown_table()
    docs = [ROOT / "README.md", DEPLOY / "REFERENCE.md", DEPLOY / "OPERATIONS.md"]
    listing = [
        path for path in docs if path.exists() and "<!-- metrics:start -->" in path.read_text()
    ]
    assert listing, "no document lists the metrics"
    for path in listing:
        assert table in path.read_text(), f"{path.name}: regenerate with metrics.markdown_table()"
