"""infra/ validated offline: the compose file against the compose spec, every Kubernetes
manifest (and the work pool's job template) against the Kubernetes 1.30 schemas, strictly,
and every REFIT_* variable they set is a real setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.settings import PROJECT_ROOT, Settings

INFRA = PROJECT_ROOT / "infra"
K8S = INFRA / "kubernetes"
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_compose_file_follows_the_compose_spec() -> None:
    done = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                str(INFRA / "compose.yaml"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_kubernetes_manifest_is_valid_and_listed() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    done = _run(str(BIN / "kubernetes-validate"), "-k", "1.30.0", "--strict",
                *[str(K8S / name) for name in sorted(listed)])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {
        doc["kind"]
        for name in listed
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    }
    assert {"Deployment", "Service", "Secret", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds


def test_the_work_pool_job_template_renders_a_valid_job(tmp_path: Path) -> None:
    template = json.loads((K8S / "work-pool-job-template.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    samples = {"{{ name }}": "refit-flow", "{{ namespace }}": "refit", "{{ image }}": "refit:1",
               "{{ service_account_name }}": "default", "{{ finished_job_ttl }}": 3600,
               "{{ command }}": ["prefect", "flow-run", "execute"], "{{ env }}": [],
               "{{ labels }}": {"app": "refit-flow"}}  # fmt: skip

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return samples.get(node, node)

    job = fill(template["job_configuration"]["job_manifest"])
    job["metadata"]["name"] = "refit-flow-1"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    done = _run(str(BIN / "kubernetes-validate"), "-k", "1.30.0", "--strict",
                str(tmp_path / "job.yaml"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _refit_variables() -> list[dict[str, str]]:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    config = yaml.safe_load((K8S / "config.yaml").read_text())
    kubernetes = dict(config["data"])
    for manifest in K8S.glob("*.yaml"):  # and what containers set beside the ConfigMap
        for doc in yaml.safe_load_all(manifest.read_text()):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                kubernetes |= {e["name"]: e.get("value", "") for e in container.get("env", [])}
    return [compose["x-refit"]["environment"], kubernetes]


@pytest.mark.parametrize("variables", _refit_variables(), ids=["compose", "kubernetes"])
def test_the_settings_they_set_exist(monkeypatch: pytest.MonkeyPatch, variables) -> None:
    for name, value in variables.items():
        if name.startswith("REFIT_"):
            field = name.removeprefix("REFIT_").split("__")[0].lower()
            assert field in Settings.model_fields, f"{name}: no setting {field!r}"
            monkeypatch.setenv(name, str(value))
    settings = Settings()  # and a misspelt key of a section fails here (extra="forbid")
    assert settings.store_url == "s3://refit/team" and not settings.local_mlflow
    assert not settings.local_prefect and not settings.local_serving


def test_containers_run_commands_that_exist() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    commands = [s.get("command") for s in compose["services"].values() if s.get("command")]
    modules = {c[2] for c in commands if c[:2] == ["python", "-m"]}
    for module in modules:
        assert (PROJECT_ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    refit = [c for c in commands if c[0] == "refit"]
    assert ["refit", "worker", "--foreground"] in refit and ["refit", "deploy"] in refit
