"""Prometheus rules and config, Grafana dashboards and the runbook links, checked offline."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args) -> subprocess.CompletedProcess:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: `make promtool` installs Debian's prometheus package"
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def rules() -> list[dict]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def heading_anchors(markdown: str) -> set[str]:
    """Return the anchors GitHub gives the headings of a Markdown document."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            text = match.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_the_alert_rules_pass_promtool_check_rules():
    result = promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 19 rules found" in result.stdout  # tollgate-slo.yml
    assert "SUCCESS: 1 rules found" in result.stdout  # tollgate-upstream.yml


def test_every_rule_file_has_unit_tests():
    tested = {
        Path(rule_file).name
        for path in RULE_TESTS
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]
    }
    assert tested == {path.name for path in RULES}


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda path: path.stem)
def test_the_alerts_fire_as_their_unit_tests_expect(path):
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    result = promtool("check", "rules", str(broken))
    assert result.returncode == 1
    assert "FAILED" in result.stdout + result.stderr


def test_the_compose_prometheus_config_is_valid_and_loads_the_rules():
    result = promtool("check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"web", "edge", "ingest", "worker"}


def test_the_burn_rate_alerts_use_the_sre_workbook_windows_and_factors():
    by_name = {rule["alert"]: rule["expr"] for rule in alerts()}
    for slo, budget in (("edge_error_ratio", "0.0005"), ("edge_overhead_slow_ratio", "0.01")):
        name = "EdgeAvailability" if slo == "edge_error_ratio" else "EdgeLatency"
        fast, slow = by_name[f"{name}FastBurn"], by_name[f"{name}SlowBurn"]
        assert f"tollgate:{slo}:rate1h > (14.4 * {budget})" in fast
        assert f"tollgate:{slo}:rate5m > (14.4 * {budget})" in fast
        assert f"tollgate:{slo}:rate6h > (6 * {budget})" in slow
        assert f"tollgate:{slo}:rate30m > (6 * {budget})" in slow
    assert by_name["IngestLagHigh"] == "tollgate:ingest_lag_seconds:max > 60"


def test_every_alert_links_a_runbook_section_that_exists():
    anchors = heading_anchors(OPERATIONS.read_text())
    assert alerts()
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: no heading for #{anchor}"
        assert anchor == alert["alert"].lower()


def test_the_dashboards_are_the_four_the_operations_guide_names():
    assert [path.stem for path in DASHBOARDS] == ["metering", "money", "overview", "portal"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_each_dashboard_is_grafana_json_with_panels_that_query_the_provisioned_datasource(path):
    dashboard = json.loads(path.read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]

    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == f"tollgate-{path.stem}"
    assert dashboard["title"].startswith("Tollgate / ")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and ids
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries"
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["expr"].strip()


def test_the_dashboard_uids_are_unique():
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_grafana_provisions_the_dashboards_folder_compose_mounts():
    provider = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "tollgate.yaml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert (
        f"./grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    )
