"""The image recipe and its entrypoint, checked without building (no base images here)."""

import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
PROCESSES = ("web", "edge", "ingest", "worker", "beat", "mock", "migrate")


def stages() -> list[dict]:
    """Split the Dockerfile into stages: base image, name and instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            image, *rest = arguments.split()
            result.append({"image": image, "name": rest[-1] if rest else None, "lines": []})
        elif result:
            result[-1]["lines"].append((instruction, arguments.strip()))
    return result


def instructions(stage: dict, name: str) -> list[str]:
    return [arguments for instruction, arguments in stage["lines"] if instruction == name]


def procfile() -> dict[str, str]:
    entries = (line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    return {name.strip(): command.strip() for name, command in entries}


def entrypoint(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_both_stages_start_from_python_3_11_slim():
    assert [(stage["image"], stage["name"]) for stage in stages()] == [
        ("python:3.11-slim", "build"),
        ("python:3.11-slim", "final"),
    ]


def test_the_final_stage_runs_as_a_non_root_user():
    final = stages()[-1]
    [user] = instructions(final, "USER")
    name = user.split(":")[0]
    assert name not in ("root", "0")
    assert int(name) >= 1000
    assert f"--uid {name}" in " ".join(instructions(final, "RUN"))


def test_the_final_stage_installs_no_build_tools():
    final_runs = " ".join(instructions(stages()[-1], "RUN"))
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "make"):
        assert tool not in final_runs
    assert "build-essential" in " ".join(instructions(stages()[0], "RUN"))


def test_static_files_are_collected_at_build_time_with_build_only_settings():
    [collect] = [run for run in instructions(stages()[0], "RUN") if "collectstatic" in run]
    assert "SECRET_KEY=collectstatic-build-only" in collect
    assert "--noinput" in collect
    # The final stage takes the collected files with the code, and sets no secret of its own.
    assert "--from=build /app /app" in instructions(stages()[-1], "COPY")
    assert "SECRET_KEY" not in " ".join(instructions(stages()[-1], "ENV"))


def test_the_build_stage_collectstatic_command_loads_the_settings_it_is_given():
    [collect] = [run for run in instructions(stages()[0], "RUN") if "collectstatic" in run]
    words = collect.split()
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"[A-Z_]+=\S+", word))
    command = [word for word in words if "=" not in word]
    assert command[:3] == ["/opt/venv/bin/python", "manage.py", "collectstatic"]

    # Only the environment the build stage has; --dry-run writes nothing into this checkout.
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), *command[1:], "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], **env},
    )

    assert result.returncode == 0, result.stderr
    assert "static files copied" in result.stdout


def test_the_final_stage_has_a_healthcheck_through_the_entrypoint():
    final = stages()[-1]
    [healthcheck] = instructions(final, "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["/app/deploy/entrypoint.sh", "healthcheck"]')
    assert instructions(final, "ENTRYPOINT") == ['["/app/deploy/entrypoint.sh"]']
    assert instructions(final, "CMD") == ['["web"]']


def test_the_entrypoint_is_valid_bash_and_executable():
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK)


def test_the_entrypoint_knows_every_procfile_process_and_migrate():
    assert set(procfile()) | {"migrate"} == set(PROCESSES)


@pytest.mark.parametrize("process", sorted(procfile()))
def test_each_process_runs_the_program_the_procfile_runs(process):
    result = entrypoint(process, TOLLGATE_DRY_RUN="1")

    assert result.returncode == 0, result.stderr
    image_command = result.stdout.split()
    local_command = procfile()[process].split()
    assert image_command[:3] == local_command[:3]


def test_the_processes_listen_beyond_loopback_in_the_image():
    commands = {process: entrypoint(process, TOLLGATE_DRY_RUN="1").stdout.strip() for process in PROCESSES}
    assert commands == {
        "web": "gunicorn portal.wsgi -b 0.0.0.0:8000 --workers 2 --threads 4",
        "edge": "python -m edge --config deploy/edge.example.yaml --host 0.0.0.0 --port 8080",
        "ingest": "python manage.py ingest_usage --metrics-port 9100 --metrics-host 0.0.0.0",
        "worker": "celery -A portal worker -l info --concurrency 2",
        "beat": "celery -A portal beat -l info --schedule /tmp/celerybeat-schedule",
        "mock": "python -m edge.mock_upstream --host 0.0.0.0 --port 9001 --models demo-chat,demo-embed",
        "migrate": "python manage.py migrate --noinput",
    }


def test_settings_and_extra_arguments_reach_the_command():
    result = entrypoint(
        "edge",
        "--workers",
        "4",
        TOLLGATE_DRY_RUN="1",
        EDGE_PORT="9999",
        EDGE_CONFIG="/etc/tollgate/edge.yaml",
    )
    assert result.stdout.strip() == (
        "python -m edge --config /etc/tollgate/edge.yaml --host 0.0.0.0 --port 9999 --workers 4"
    )


@pytest.mark.parametrize("args", [(), ("shell",)])
def test_an_unknown_or_missing_process_is_a_usage_error(args):
    result = entrypoint(*args, TOLLGATE_DRY_RUN="1")
    assert result.returncode == 64
    assert result.stdout == ""
    assert "usage: entrypoint.sh web|edge|ingest|worker|beat|mock|migrate|healthcheck" in result.stderr


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_the_healthcheck_probes_the_process_this_container_started(tmp_path, health_server, status, code):
    _Health.status = status
    state = tmp_path / "process"
    state.write_text("edge\n")

    result = entrypoint(
        "healthcheck", TOLLGATE_STATE_FILE=str(state), EDGE_PORT=str(health_server.server_port)
    )

    assert result.returncode == code


def test_the_healthcheck_fails_before_any_process_started(tmp_path):
    result = entrypoint("healthcheck", TOLLGATE_STATE_FILE=str(tmp_path / "missing"))
    assert result.returncode == 1
    assert result.stderr == "healthcheck: no process started in this container\n"


def test_the_build_context_leaves_out_local_state_and_secrets():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".venv", ".run", "deploy/tollgate.env", "*.env", "!deploy/tollgate.env.example"):
        assert entry in ignored
