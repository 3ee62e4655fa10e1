"""deploy/prometheus: the scrape config and the alert rules pass promtool, the promtool unit
tests pass and cover every alert firing and not firing, every alert carries a severity
and a runbook, and deploy/README.md counts the rules and describes each."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
GUIDE = REPO_ROOT / "deploy" / "README.md"

REQUIRED_ALERTS = {
    "SessiondDown",
    "SessiondEvictingHotSessions",
    "SessiondConfigReloadFailed",
    "SessiondStoreErrors",
    "SessiondClientsNearLimit",
    "SessiondClientsRejected",
    "SessiondLatencyHigh",
    "SessiondWritesRefused",
    "SessiondStoreDiskGrowing",
    "SessiondSharedStoreNotListening",
    "SessiondSharedStoreListenFlapping",
}


def promtool_run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args],
        capture_output=True,
        text=True,
        cwd=PROM_DIR,
        timeout=120,
        check=False,
    )


def test_promtool_check_config(promtool: Path) -> None:
    proc = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def alert_severities() -> dict[str, str]:
    """alertname -> severity, from alerts.yml (line-based: no YAML parser)."""
    text = (PROM_DIR / "alerts.yml").read_text()
    return dict(
        re.findall(r"^\s+- alert: (\w+)\n(?:\s+(?!- alert:).*\n)*?\s+severity: (\w+)$", text, re.M)
    )


def test_promtool_check_rules(promtool: Path) -> None:
    proc = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_severities())} rules found" in proc.stdout


def test_the_guide_counts_and_describes_every_alert_rule() -> None:
    """deploy/README.md gives the number of rules in alerts.yml (its table of files, and
    what promtool prints for them), and has a row of its alert table and a section with
    the right severity for each."""
    alerts = alert_severities()
    text = (PROM_DIR / "alerts.yml").read_text()
    assert len(alerts) == len(re.findall(r"^\s+- alert: ", text, re.M))
    guide = GUIDE.read_text()
    count = str(len(alerts))
    files_row = r"^\| `deploy/prometheus/alerts\.yml` \| (\d+) alert rules"
    assert re.findall(files_row, guide, re.M) == [count]
    assert re.findall(r"# SUCCESS: (\d+) rules found", guide) == [count]
    rows = re.findall(r"^\| (Sessiond\w+) \| (critical|warning) \|", guide, re.M)
    assert sorted(rows) == sorted(alerts.items())
    sections = re.findall(r"^### (Sessiond\w+) \((critical|warning)\b", guide, re.M)
    assert sorted(sections) == sorted(alerts.items())


def test_promtool_test_rules(promtool: Path) -> None:
    proc = promtool_run(promtool, "test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_scrape_config_targets_sessiond() -> None:
    text = (PROM_DIR / "prometheus.yml").read_text()
    assert re.search(r"^  - job_name: sessiond$", text, re.M)
    assert '- targets: ["127.0.0.1:9477"]' in text
    assert re.search(r"^rule_files:\n  - alerts\.yml$", text, re.M)


def test_alerts_have_severity_summary_and_runbook(
    prometheus_api: Callable[..., dict[str, Any]],
) -> None:
    """Read the rules back from a real Prometheus that loaded alerts.yml."""
    body = prometheus_api("/api/v1/rules", type="alert")
    assert body["status"] == "success", body
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    names = {rule["name"] for rule in rules}
    assert names >= REQUIRED_ALERTS, REQUIRED_ALERTS - names
    for rule in rules:
        assert rule["labels"].get("severity") in {"critical", "warning", "info"}, rule["name"]
        annotations = rule["annotations"]
        assert "{{ $labels.instance }}" in annotations.get("summary", ""), rule["name"]
        description = annotations.get("description", "")
        # a runbook: numbered steps, or a pointer to another alert's steps
        has_steps = re.search(r"^1\. ", description, re.M) or "Follow " in description
        assert len(description) > 150 and has_steps, rule["name"]
        assert rule["health"] != "err", rule  # "unknown" until its first evaluation


def unit_test_cases(text: str) -> dict[str, set[bool]]:
    """alertname -> kinds of cases in alerts_test.yml: True (expects it to fire), False
    (expects no alert). Line-based, so the test needs no YAML parser."""
    cases: dict[str, set[bool]] = {}
    alert: str | None = None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"alertname: (\w+)", stripped):
            alert = match.group(1)
        elif alert and stripped.startswith("exp_alerts:"):
            cases.setdefault(alert, set()).add(stripped != "exp_alerts: []")
            alert = None
    return cases


def test_unit_tests_cover_every_alert_firing_and_not_firing(
    prometheus_api: Callable[..., dict[str, Any]],
) -> None:
    body = prometheus_api("/api/v1/rules", type="alert")
    names = {rule["name"] for group in body["data"]["groups"] for rule in group["rules"]}
    cases = unit_test_cases((PROM_DIR / "alerts_test.yml").read_text())
    for name in sorted(names):
        assert cases.get(name) == {True, False}, f"{name}: {cases.get(name)}"


def test_alerts_depend_on_no_job_name_but_the_shipped_ones() -> None:
    """The only job the rules name is the one prometheus.yml scrapes, in SessiondDown's arm
    for a sessiond that never came up; under any other job name every rule still works
    (alerts_test.yml uses other job names)."""
    rules = (PROM_DIR / "alerts.yml").read_text()
    shipped = re.findall(r"^  - job_name: (\S+)$", (PROM_DIR / "prometheus.yml").read_text(), re.M)
    assert re.findall(r'\bjob\s*=~?\s*"([^"]*)"', rules) == shipped == ["sessiond"]
    tests = (PROM_DIR / "alerts_test.yml").read_text()
    fired_under = set(re.findall(r"^\s+job: (\S+)$", tests, re.M))
    assert fired_under - set(shipped), "no test fires an alert under another job name"
