"""deploy/k8s: every manifest valid offline (kubernetes-validate), kustomizations complete, and
the properties the operations guide promises."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from edge.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
SECRET_NAMES = re.compile(r"SECRET|PASSWORD|TOKEN|PEPPER|_KEY$|DATABASE_URL|REDIS_URL")


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def generator_sources(document: dict) -> list[str]:
    sources = []
    for generator in document.get("configMapGenerator", []) + document.get("secretGenerator", []):
        sources += [entry.split("=")[-1] for entry in generator.get("files", [])]
        sources += generator.get("envs", [])
    return sources


def manifest_files() -> list[Path]:
    """Every file a kustomization lists as a resource, and the examples beside them."""
    files = []
    for path in KUSTOMIZATIONS:
        folder = path.parent
        files += [
            folder / entry for entry in kustomization(folder)["resources"] if (folder / entry).is_file()
        ]
        files += sorted(folder.glob("*.example.yaml"))
    return files


def documents() -> list[dict]:
    return [
        document
        for path in manifest_files()
        if not path.name.endswith(".example.yaml")
        for document in yaml.safe_load_all(path.read_text())
    ]


def resource(kind: str, name: str) -> dict:
    [found] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(deployment: dict) -> dict:
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return main


def test_every_manifest_is_valid_against_the_kubernetes_schemas_offline():
    files = manifest_files()
    expected = sum(len(list(yaml.safe_load_all(path.read_text()))) for path in files)

    result = subprocess.run(
        [str(VALIDATE), "--strict", *map(str, files)], capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert output.count(" passed for resource ") == expected
    assert "failed" not in output


def test_kubernetes_validate_rejects_a_misspelt_field(tmp_path):
    deployment = yaml.safe_load_all((K8S / "base" / "beat.yaml").read_text())
    broken = next(deployment)
    broken["spec"]["replica"] = 1
    path = tmp_path / "beat.yaml"
    path.write_text(yaml.safe_dump(broken))

    result = subprocess.run(
        [str(VALIDATE), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 1
    assert "replica" in result.stdout + result.stderr


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda path: str(path.parent.relative_to(K8S)))
def test_each_kustomization_lists_every_file_in_its_folder(path):
    folder = path.parent
    document = kustomization(folder)
    listed = {entry for entry in document["resources"] if (folder / entry).is_file()}
    listed |= set(generator_sources(document))
    present = {
        file.name
        for file in folder.iterdir()
        if file.is_file() and file.name != "kustomization.yaml" and not file.name.endswith(".example.yaml")
    }
    assert listed == present
    for entry in document["resources"]:
        assert (folder / entry).is_file() or (folder / entry / "kustomization.yaml").is_file(), entry


def test_the_example_overlay_builds_on_the_base_and_pins_an_image():
    document = kustomization(K8S / "overlays" / "example")
    assert document["resources"][0] == "../../base"
    assert document["namespace"] == "tollgate"
    [image] = document["images"]
    assert image["name"] == "tollgate" and image["newTag"] not in ("", "latest")


@pytest.mark.parametrize(
    ("name", "port"), [("web", 8000), ("edge", 8080), ("ingest", 9100), ("worker", 9101)]
)
def test_each_long_running_process_has_readiness_on_readyz_liveness_on_healthz_and_resources(name, port):
    main = container(resource("Deployment", name))
    assert main["args"] == [name]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert [entry["containerPort"] for entry in main["ports"]] == [port]
    assert set(main["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in main["resources"]["limits"]
    assert resource("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": name
    }


@pytest.mark.parametrize("name", ["web", "edge"])
def test_the_web_and_the_edge_scale_with_a_horizontal_pod_autoscaler(name):
    target = resource("HorizontalPodAutoscaler", name)["spec"]
    assert target["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert target["minReplicas"] >= 2
    assert "replicas" not in resource("Deployment", name)["spec"]  # the autoscaler owns it


def test_beat_runs_as_exactly_one_replica_replaced_not_rolled():
    spec = resource("Deployment", "beat")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert not any(
        d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "beat" for d in documents()
    )


def test_migrations_run_as_a_job_and_the_processes_wait_for_them():
    job = resource("Job", "migrate")
    assert container_args(job["spec"]["template"]["spec"]) == ["migrate"]
    for name in ("web", "ingest", "worker", "beat"):
        [init] = resource("Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert "manage.py migrate --check" in init["command"][-1]


def container_args(pod: dict) -> list[str]:
    [main] = pod["containers"]
    return main["args"]


def test_secrets_are_referenced_never_inlined():
    assert not [d for d in documents() if d["kind"] == "Secret"]
    example = yaml.safe_load((K8S / "overlays" / "example" / "secret.example.yaml").read_text())
    referenced = set()
    for document in documents():
        pod = document.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for entry in pod.get("initContainers", []) + pod["containers"]:
            for variable in entry.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] == "tollgate-secrets"
                    referenced.add(reference["key"])
                else:
                    assert not SECRET_NAMES.search(variable["name"]), (
                        document["metadata"]["name"],
                        variable["name"],
                    )
    assert referenced == set(example["stringData"])
    config = (K8S / "overlays" / "example" / "config.env").read_text()
    assert not SECRET_NAMES.search("\n".join(line.split("=")[0] for line in config.splitlines()))


def test_metrics_without_a_token_are_open_only_to_the_monitoring_namespace():
    policy = resource("NetworkPolicy", "internal-metrics")["spec"]
    assert policy["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["ingest", "worker"]}
    ]
    [rule] = policy["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"tollgate.io/monitoring": "true"}}}]
    assert rule["ports"] == [{"port": "probes"}]
    for name in ("ingest", "worker"):
        assert [entry["name"] for entry in container(resource("Deployment", name))["ports"]] == ["probes"]
    default = resource("NetworkPolicy", "default-deny-ingress")["spec"]
    assert default == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "tollgate"}},
        "policyTypes": ["Ingress"],
    }


def test_the_web_and_edge_metrics_need_the_token_from_the_secret():
    web_env = {variable["name"]: variable for variable in container(resource("Deployment", "web"))["env"]}
    edge_env = {variable["name"]: variable for variable in container(resource("Deployment", "edge"))["env"]}
    assert web_env["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "METRICS_TOKEN"
    assert edge_env["EDGE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "METRICS_TOKEN"
    # Probes and scrapes reach the web by its pod IP: Django must accept it as a host.
    assert web_env["ALLOWED_HOSTS"]["value"] == "$(TOLLGATE_PUBLIC_HOSTS),localhost,$(POD_IP)"


def test_the_edge_routes_config_map_holds_a_valid_edge_config_mounted_where_the_edge_reads_it():
    overlay = K8S / "overlays" / "example"
    [routes] = [
        g for g in kustomization(overlay)["configMapGenerator"] if g["name"] == "tollgate-edge-routes"
    ]
    assert routes["files"] == ["edge.yaml"]
    config = load_config(
        str(overlay / "edge.yaml"), env={"KEY_PEPPER": "p" * 32, "REDIS_URL": "redis://r:6379/0"}
    )
    assert [upstream.url for upstream in config.route_for("demo-chat").upstreams] == ["http://mock:9001"]

    edge = resource("Deployment", "edge")["spec"]["template"]["spec"]
    [main] = edge["containers"]
    env = {variable["name"]: variable.get("value") for variable in main["env"]}
    [volume] = [v for v in edge["volumes"] if "configMap" in v]
    [mount] = [m for m in main["volumeMounts"] if m["name"] == volume["name"]]
    assert volume["configMap"]["name"] == "tollgate-edge-routes"
    assert env["EDGE_CONFIG"] == f"{mount['mountPath']}/edge.yaml"
