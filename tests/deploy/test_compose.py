"""deploy/compose.yaml: valid against the vendored Compose schema, and the topology the docs promise."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from edge.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
CHECK_JSONSCHEMA = ROOT / ".venv" / "bin" / "check-jsonschema"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--schemafile", str(SCHEMA), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_validates_against_the_compose_specification_schema():
    result = check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_the_schema_check_rejects_a_malformed_compose_file(tmp_path):
    broken = compose()
    broken["services"]["edge"]["replica"] = 2  # a misspelt setting Compose would ignore
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))

    result = check(path)

    assert result.returncode == 1
    assert (
        "$.services.edge: Unevaluated properties are not allowed ('replica' was unexpected)" in result.stdout
    )


def test_the_vendored_schema_names_its_source_and_version():
    readme = (DEPLOY / "schemas" / "README.md").read_text()
    requirements = (ROOT / "requirements-dev.txt").read_text().splitlines()
    [pin] = [line for line in requirements if line.startswith("check-jsonschema==")]
    assert f"`{pin}`" in readme


def test_redis_keeps_an_append_only_file_synced_every_second():
    command = compose()["services"]["redis"]["command"]
    assert command == ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"]
    assert "redis:/data" in compose()["services"]["redis"]["volumes"]


@pytest.mark.parametrize(("service", "replicas"), [("edge", 2), ("ingest", 2), ("beat", 1)])
def test_replicas(service, replicas):
    assert compose()["services"][service]["deploy"]["replicas"] == replicas


def test_every_procfile_process_is_a_service_running_that_process_of_the_image():
    services = compose()["services"]
    procfile = [
        line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    ]
    for process in [*procfile, "migrate"]:
        assert services[process]["image"] == "tollgate:latest"
        assert services[process]["command"] == [process]


def test_migrations_run_once_before_the_processes_that_use_the_database():
    services = compose()["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for process in ("web", "edge", "ingest", "worker", "beat"):
        assert services[process]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[process]["env_file"] == "tollgate.env"


def test_secrets_come_from_files_and_the_env_file_never_from_the_compose_file():
    document = compose()
    for name, service in document["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|TOKEN|KEY", variable):
                assert variable.endswith("__FILE") or variable.endswith("_FILE"), (name, variable)
                assert str(value).startswith("/run/secrets/")
    for secret in document["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert "/deploy/secrets/*" in (ROOT / ".gitignore").read_text().splitlines()
    assert "/deploy/tollgate.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_variable_of_the_example_env_file_is_a_setting_tollgate_reads():
    sources = "".join(
        path.read_text() for path in [ROOT / "portal" / "settings.py", ROOT / "edge" / "config.py"]
    )
    names = [
        line.split("=", 1)[0]
        for line in (DEPLOY / "tollgate.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "SECRET_KEY" in names
    for name in names:
        assert f'"{name}"' in sources, name


def test_the_monitoring_profile_mounts_files_that_exist():
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_dir(), source


def test_the_compose_edge_config_loads_and_routes_the_demo_models_to_the_mock_server():
    config = load_config(
        str(DEPLOY / "edge.compose.yaml"), env={"KEY_PEPPER": "p" * 32, "REDIS_URL": "redis://redis:6379/0"}
    )
    route = config.route_for("demo-chat")
    assert [upstream.url for upstream in route.upstreams] == ["http://mock:9001"]
    assert compose()["services"]["edge"]["environment"]["EDGE_CONFIG"] == "/app/deploy/edge.compose.yaml"
