"""grafana/: the dashboard is importable (datasource, job and instance variables, every panel
queries ${datasource} filtered by $job and $instance, no job name written in), uses only
metrics the daemon exports, parses in a real Prometheus, and together with the alert rules
shows every contract metric (docs/operations.md). The live tests run the real daemon,
scraped by a real Prometheus under a job not called "sessiond", and check that every panel
shows data."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import LIVE_JOB

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "grafana" / "sessiond.json"
PROVISIONING = REPO_ROOT / "grafana" / "provisioning"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"

# docs/operations.md: the metric names are part of the contract.
SPEC_METRICS: dict[str, str] = {
    "sessiond_cache_hits_total": "counter",
    "sessiond_cache_misses_total": "counter",
    "sessiond_cache_evictions_total": "counter",
    "sessiond_cache_expirations_total": "counter",
    "sessiond_cache_sessions": "gauge",
    "sessiond_cache_max_sessions": "gauge",
    "sessiond_cache_memory_bytes": "gauge",
    "sessiond_store_loads_total": "counter",
    "sessiond_store_writes_total": "counter",
    "sessiond_store_errors_total": "counter",
    "sessiond_store_commit_duration_seconds": "histogram",
    "sessiond_commands_total": "counter",
    "sessiond_command_errors_total": "counter",
    "sessiond_command_duration_seconds": "histogram",
    "sessiond_connected_clients": "gauge",
    "sessiond_connections_total": "counter",
    "sessiond_rejected_connections_total": "counter",
    "sessiond_config_reloads_total": "counter",
    "sessiond_config_last_reload_successful": "gauge",
    "sessiond_config_last_reload_success_timestamp_seconds": "gauge",
    "sessiond_build_info": "gauge",
    "sessiond_command_latency_seconds": "histogram",
    "sessiond_event_loop_lag_seconds": "histogram",
    "sessiond_net_input_bytes_total": "counter",
    "sessiond_net_output_bytes_total": "counter",
    "sessiond_keyspace_sessions": "gauge",
    "sessiond_cache_max_memory_bytes": "gauge",
    "sessiond_store_disk_bytes": "gauge",
    "sessiond_writes_refused": "gauge",
    "sessiond_error_replies_total": "counter",
    "sessiond_slowlog_entries_total": "counter",
    "sessiond_store_live_bytes": "gauge",
}
# Exported by the daemon beyond the original metric list: the dashboard and the
# alert rules may use these, but nothing may depend on them alone.
EXTENSION_METRICS: dict[str, str] = {
    "sessiond_max_clients": "gauge",  # limits.max_clients, for SessiondClientsNearLimit
}
# docs/operations.md, "The PostgreSQL store": exported only with persistence.backend:
# postgresql (a SQLite host has no LISTEN connection to report as down). Checked live
# against a daemon on that store (live_pg_stack).
SHARED_STORE_METRICS: dict[str, str] = {
    "sessiond_store_round_trip_seconds": "histogram",
    "sessiond_store_pool_connections": "gauge",
    "sessiond_store_pool_connections_in_use": "gauge",
    "sessiond_store_pool_connections_max": "gauge",
    "sessiond_store_listening": "gauge",
    "sessiond_store_memory_flushes_total": "counter",
    "sessiond_store_reconnects_total": "counter",
    "sessiond_store_invalidations_sent_total": "counter",
    "sessiond_store_invalidations_received_total": "counter",
    "sessiond_store_notifications_sent_total": "counter",
    "sessiond_store_notifications_received_total": "counter",
    "sessiond_store_invalidation_lag_seconds": "histogram",
    "sessiond_store_decisions_total": "counter",
    "sessiond_store_decision_transactions_total": "counter",
    "sessiond_store_decision_errors_total": "counter",
    "sessiond_store_renewals_total": "counter",
    "sessiond_store_expired_rows_total": "counter",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus itself writes: per target, and per pending or firing alert.
PROMETHEUS_SERIES = {"up", "ALERTS"}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
JOB_QUERY = "label_values(sessiond_build_info, job)"
INSTANCE_QUERY = 'label_values(sessiond_build_info{job=~"$job"}, instance)'

# How Grafana expands the variables, for sending the expressions to Prometheus: a multi-value
# $instance becomes a regex alternation of escaped values.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$instance": r"(127\\.0\\.0\\.1:9477|127\\.0\\.0\\.2:9477)",
    "$job": r"(sessiond|session\\-cache)",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregations,
    keywords, label names (in {…}, by (…), on (…), …) or inside strings and ranges."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, call = match.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def spec_metric(name: str, spec: dict[str, str] = SPEC_METRICS) -> str | None:
    """The contract metric a series name belongs to (histogram series map to the histogram)."""
    if name in spec:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and spec.get(base) == "histogram":
            return base
    return None


def shared_store_metric(name: str) -> bool:
    return spec_metric(name, SHARED_STORE_METRICS) is not None


def allowed(name: str) -> bool:
    return (
        spec_metric(name) is not None
        or shared_store_metric(name)
        or name in EXTENSION_METRICS
        or name in PROMETHEUS_SERIES
        or name.startswith(("process_", "python_"))
    )


def test_metric_names_extractor() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (instance, le) (rate(sessiond_command_duration_seconds"
        '_bucket{instance=~"$instance", le!="x"}[$__rate_interval]))) > 1e3 and on (instance) '
        'up{job="sessiond"} == bool 1 or sum(x_total) without (le) / ignoring(a) group_left(b) '
        "y offset 5m"
    )
    assert metric_names(expr) == {"sessiond_command_duration_seconds_bucket", "up", "x_total", "y"}
    assert spec_metric("sessiond_store_commit_duration_seconds_count") == (
        "sessiond_store_commit_duration_seconds"
    )
    assert spec_metric("sessiond_commands_total_bucket") is None


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]


def alert_exprs() -> list[str]:
    """`expr:` values of alerts.yml, inline or block scalars (stdlib only, no YAML parser)."""
    found: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value not in ("|", ">", "|-", ">-"):
            found.append(value)
            continue
        body = []
        for follow in lines[i + 1 :]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            body.append(follow.strip())
        found.append("\n".join(body))
    return found


def test_dashboard_is_current_format(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "sessiond"
    assert dashboard["title"]
    assert dashboard["id"] is None, "an importable dashboard has no database id"
    assert "__inputs" not in dashboard, "data source comes from the variable, not an import input"


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name, definition in (("job", JOB_QUERY), ("instance", INSTANCE_QUERY)):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DS_REF
        assert var["definition"] == definition
        query = var["query"]
        assert (query["query"] if isinstance(query, dict) else query) == definition
        assert var["multi"] and var["includeAll"]
        # "All" is the values the query found (the jobs with a sessiond), not ".*" (every job)
        assert not var.get("allValue"), name
    assert variables["job"]["current"]["value"] == ["$__all"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names.index("job") < names.index("instance"), "instance depends on job"


def test_every_panel_queries_datasource_variable_job_and_instance(
    dashboard: dict[str, Any],
) -> None:
    panels = query_panels(dashboard)
    assert len(panels) >= 20
    for panel in panels:
        title = panel["title"]
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, title
        assert panel["datasource"] == DS_REF, title
        assert panel["targets"], f"{title}: no targets"
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, title
            assert target["refId"], title
            expr = target["expr"]
            selectors = re.findall(r"\{([^}]*)\}", expr)
            assert selectors, f"{title}: {expr}"
            for selector in selectors:
                assert 'job=~"$job"' in selector, f"{title}: {expr}"
                assert 'instance=~"$instance"' in selector, f"{title}: {expr}"
            assert not re.search(r"\bjob\s*=\s*\"", expr), f"{title}: a job name in {expr}"


def test_panel_ids_unique_and_layout_does_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_uses_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    for expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        unknown = {n for n in names if not allowed(n)}
        assert not unknown, f"not exported by the daemon (docs/operations.md): {unknown} in {expr}"


def test_alert_rules_use_only_exported_metrics() -> None:
    found = alert_exprs()
    assert len(found) >= 6
    for expr in found:
        unknown = {n for n in metric_names(expr) if not allowed(n)}
        assert not unknown, f"not exported by the daemon (docs/operations.md): {unknown} in {expr}"


def test_every_spec_metric_is_on_dashboard_or_in_an_alert(dashboard: dict[str, Any]) -> None:
    names = {n for e in exprs(dashboard) + alert_exprs() for n in metric_names(e)}
    used = {spec_metric(n) for n in names} | {spec_metric(n, SHARED_STORE_METRICS) for n in names}
    missing = (set(SPEC_METRICS) | set(SHARED_STORE_METRICS)) - used
    assert not missing, f"docs/operations.md metrics shown nowhere: {sorted(missing)}"


def test_dashboard_covers_the_required_panels(dashboard: dict[str, Any]) -> None:
    text = "\n".join(exprs(dashboard))
    for needle in (
        "sessiond_commands_total",
        "sessiond_cache_hits_total",
        "sessiond_store_loads_total",
        "sessiond_cache_evictions_total",
        "sessiond_cache_expirations_total",
        "sessiond_cache_max_sessions",
        "sessiond_cache_memory_bytes",
        "histogram_quantile(0.5, sum by (instance, le) (rate(sessiond_command_duration",
        "histogram_quantile(0.99, sum by (instance, le) (rate(sessiond_command_duration",
        "sessiond_rejected_connections_total",
        "histogram_quantile(0.99, sum by (instance, le) (rate(sessiond_store_commit_duration",
        "sessiond_store_errors_total",
        "sessiond_config_last_reload_successful",
        "sessiond_config_last_reload_success_timestamp_seconds",
        "rate(process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "sessiond_store_writes_total",
        "sessiond_command_errors_total",
        "sessiond_connections_total",
        "histogram_quantile(0.99, sum by (command, le) (rate(sessiond_command_latency_seconds",
        "histogram_quantile(0.5, sum by (command, le) (rate(sessiond_command_latency_seconds",
        "sessiond_event_loop_lag_seconds_bucket",
        "rate(sessiond_net_input_bytes_total",
        "rate(sessiond_net_output_bytes_total",
        "sessiond_keyspace_sessions",
        "sessiond_cache_max_memory_bytes",
        "sessiond_store_disk_bytes",
        "sessiond_writes_refused",
    ):
        assert needle in text, needle


def expand(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_dashboard_queries_parse_in_prometheus(
    dashboard: dict[str, Any], prometheus_api: Callable[..., dict[str, Any]]
) -> None:
    failures = []
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            query = expand(target["expr"])
            body = prometheus_api("/api/v1/query", query=query)
            if body.get("status") != "success":
                failures.append(f"{panel['title']}: {body.get('error')}\n  {query}")
    assert not failures, "\n".join(failures)
    # The variables' label_values(selector, label) is Grafana's; their selectors must parse.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            selector, label = match.groups()
            body = prometheus_api(f"/api/v1/label/{label}/values", **{"match[]": expand(selector)})
            assert body["status"] == "success", (variable["name"], body)


def test_prometheus_rejects_a_broken_query(prometheus_api: Callable[..., dict[str, Any]]) -> None:
    """The parse check is not vacuous."""
    body = prometheus_api("/api/v1/query", query="sum by (le (rate(x[1m]))")
    assert body["status"] == "error"


def test_provisioning_files() -> None:
    datasource = (PROVISIONING / "datasources" / "sessiond.yml").read_text()
    assert "apiVersion: 1" in datasource
    assert re.search(r"^\s+type: prometheus$", datasource, re.M)
    assert re.search(r"^\s+url: http://127\.0\.0\.1:9090$", datasource, re.M)
    dashboards = (PROVISIONING / "dashboards" / "sessiond.yml").read_text()
    assert "apiVersion: 1" in dashboards
    assert re.search(r"^\s+type: file$", dashboards, re.M)
    path = re.search(r"^\s+path: (\S+)$", dashboards, re.M)
    assert path, "file provider needs options.path"
    assert f"{path.group(1)}/sessiond.json" in dashboards, "say where to copy sessiond.json"


# --- live: the real daemon scraped by a real Prometheus (tests/deploy/conftest.py) ---------


def exported(metrics_text: str) -> tuple[set[str], dict[str, str]]:
    """Sample names and family types (# TYPE) of a Prometheus text exposition."""
    samples: set[str] = set()
    types: dict[str, str] = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            types[family] = kind
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, types


def test_live_daemon_exports_spec_metrics_with_their_types(live_stack: Any) -> None:
    samples, types = exported(live_stack.daemon.scrape())
    for name, kind in SPEC_METRICS.items():
        # prometheus-client names a counter's family with or without _total, by version
        declared = types.get(name) or types.get(name.removesuffix("_total"))
        assert declared == kind, f"{name}: # TYPE says {declared}"
        wanted = {name} if kind != "histogram" else {name + s for s in HISTOGRAM_SUFFIXES}
        assert wanted <= samples, f"{name}: no samples"


def test_live_daemon_exports_every_metric_the_dashboard_and_alerts_use(
    dashboard: dict[str, Any], live_stack: Any
) -> None:
    samples, _types = exported(live_stack.daemon.scrape())
    used = {n for e in exprs(dashboard) + alert_exprs() for n in metric_names(e)}
    used -= PROMETHEUS_SERIES
    used = {n for n in used if not shared_store_metric(n)}
    assert not used - samples, f"used but not exported: {sorted(used - samples)}"
    assert not {n for n in samples if shared_store_metric(n)}, "only with postgresql"


def test_live_postgresql_daemon_exports_the_shared_store_s_metrics(
    dashboard: dict[str, Any], live_pg_stack: Any
) -> None:
    samples, types = exported(live_pg_stack.daemon.scrape())
    for name, kind in SHARED_STORE_METRICS.items():
        declared = types.get(name) or types.get(name.removesuffix("_total"))
        assert declared == kind, f"{name}: # TYPE says {declared}"
        wanted = {name} if kind != "histogram" else {name + s for s in HISTOGRAM_SUFFIXES}
        assert wanted <= samples, f"{name}: no samples"
    used = {n for e in exprs(dashboard) + alert_exprs() for n in metric_names(e)}
    # (the store's disk files are SQLite's: a PostgreSQL host has none)
    used = {n for n in used if shared_store_metric(n)}
    assert not used - samples, f"used but not exported: {sorted(used - samples)}"


def grafana_all(api: Any, label: str, match: str) -> str:
    """A variable's "All" as Grafana sends it to Prometheus: the values its label_values()
    query finds, regex-escaped, as an alternation (escaped again for a PromQL string)."""
    body = api(f"/api/v1/label/{label}/values", **{"match[]": match})
    assert body["status"] == "success", body
    return "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in body["data"]) + ")"


def live_variables(api: Any) -> dict[str, str]:
    """$job and $instance at their defaults ("All"), computed like Grafana does from the
    variables' queries against the live Prometheus."""
    job = grafana_all(api, "job", "sessiond_build_info")
    # INSTANCE_QUERY's selector, with $job expanded
    instance = grafana_all(api, "instance", f'sessiond_build_info{{job=~"{job}"}}')
    return {**GRAFANA_VARIABLES, "$job": job, "$instance": instance}


def shared_store_panel(panel: dict[str, Any]) -> bool:
    """A panel of the PostgreSQL store's metrics only (empty for a SQLite host)."""
    names = {n for t in panel["targets"] for n in metric_names(t["expr"])}
    return bool(names) and all(shared_store_metric(n) for n in names)


def empty_panels(panels: list[dict[str, Any]], api: Any) -> list[str]:
    variables = live_variables(api)
    empty = []
    for panel in panels:
        series = 0
        for target in panel["targets"]:
            query = target["expr"]
            for variable, value in variables.items():
                query = query.replace(variable, value)
            body = api("/api/v1/query", query=query)
            assert body["status"] == "success", (panel["title"], body)
            series += len(body["data"]["result"])
        if not series:
            empty.append(panel["title"])
    return empty


def test_live_every_panel_shows_data(dashboard: dict[str, Any], live_stack: Any) -> None:
    panels = [p for p in query_panels(dashboard) if not shared_store_panel(p)]
    empty = empty_panels(panels, live_stack.api)
    assert not empty, f"panels without data from a live daemon: {empty}"


def test_live_shared_store_panels_show_data_for_a_postgresql_daemon(
    dashboard: dict[str, Any], live_pg_stack: Any
) -> None:
    panels = [p for p in query_panels(dashboard) if shared_store_panel(p)]
    assert len(panels) >= 6, [p["title"] for p in panels]
    empty = empty_panels(panels, live_pg_stack.api)
    assert not empty, f"panels without data from a live PostgreSQL daemon: {empty}"


def test_live_rules_stay_quiet_for_a_healthy_postgresql_daemon(live_pg_stack: Any) -> None:
    deadline = time.monotonic() + 10
    while True:
        body = live_pg_stack.api("/api/v1/rules", type="alert")
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    states = {r["name"]: (r["health"], r["state"]) for r in rules}
    for name in ("SessiondSharedStoreNotListening", "SessiondSharedStoreListenFlapping"):
        assert states[name] == ("ok", "inactive"), (name, states[name])


def test_live_variables_list_the_daemons_job_and_instance(live_stack: Any) -> None:
    body = live_stack.api("/api/v1/label/job/values", **{"match[]": "sessiond_build_info"})
    assert body["data"] == [LIVE_JOB]
    variables = live_variables(live_stack.api)
    assert variables["$job"] == r"(session\\-cache)"
    instance = live_stack.daemon.metrics_url.split("/")[2]
    assert variables["$instance"] == "(" + re.escape(instance).replace("\\", "\\\\") + ")"


def test_live_rules_evaluate_and_none_fires_for_a_healthy_daemon(live_stack: Any) -> None:
    deadline = time.monotonic() + 10
    while True:
        body = live_stack.api("/api/v1/rules", type="alert")
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ] == []
    states = {r["name"]: r["state"] for r in rules}
    firing = [name for name, state in states.items() if state == "firing"]
    assert firing == [], f"alerts firing for a healthy daemon: {firing}"
    # These have no business even pending. (A slow first fsync on a busy CI disk may leave
    # SessiondLatencyHigh pending for a moment: its for: 10m is what keeps it quiet.)
    for name in (
        "SessiondDown",
        "SessiondConfigReloadFailed",
        "SessiondStoreErrors",
        "SessiondClientsNearLimit",
        "SessiondClientsRejected",
    ):
        assert states[name] == "inactive", (name, states[name])
