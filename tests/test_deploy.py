"""deploy/: the Prometheus scrape config, alert rules and Grafana dashboard name only metrics and
labels that `lingbot_rt.services.metrics` exports, and promtool (Debian's `prometheus` package)
accepts them and runs the alerts' unit tests where it is installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from lingbot_rt.cli import build_parser
from lingbot_rt.services.metrics import ServingMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "lingbot-rt.json"
TARGET_LABELS = {"job", "instance"}        # Prometheus adds these to every scraped series
SCRAPE_SERIES = {"up"}                     # ... and writes this one itself, per target
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created")}

GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*(?:,|$)')
IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name ServingMetrics exports -> (its metric's name, its label names)."""
    metrics = ServingMetrics(CollectorRegistry())
    series = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                for suffix in SUFFIXES[family.type]:
                    labels = set(collector._labelnames) | ({"le"} if suffix == "_bucket" else set())
                    series[family.name + suffix] = (family.name, labels)
    return series


def references(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to."""
    labels = {name.strip() for group in GROUPING.findall(expr) for name in group.split(",") if name.strip()}
    expr = GROUPING.sub(" ", expr)
    for selector in SELECTOR.findall(expr):
        assert not MATCHER.sub("", selector).strip(), f"cannot read the label matchers {{{selector}}}"
        labels |= set(MATCHER.findall(selector))
    expr = re.sub(r"\[[^\]]*\]", " ", SELECTOR.sub(" ", expr))           # range selectors
    names = {name for name, call in IDENTIFIER.findall(expr) if not call and name not in KEYWORDS}
    return names, labels


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {f'{panel["title"]} / {target["refId"]}': target["expr"]
            for panel in dashboard["panels"] for target in panel.get("targets", [])}


def unknown_references(expressions: dict[str, str]) -> list[str]:
    series = exported()
    problems = []
    for where, expr in expressions.items():
        names, labels = references(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        if unknown := names - series.keys() - SCRAPE_SERIES:
            problems.append(f"{where}: unknown metrics {sorted(unknown)}")
        if unknown := labels - TARGET_LABELS - set().union(*(series.get(name, ("", set()))[1] for name in names)):
            problems.append(f"{where}: labels {sorted(unknown)} are not on {sorted(names)}")
    return problems


def test_references_reads_promql():
    expr = ('histogram_quantile(0.99, sum by (stage, le) (rate(lingbot_stage_seconds_bucket{stage!="jpeg", '
            'job=~"a|b"}[$__rate_interval]))) > 1e3 and on (instance) up offset 5m')
    assert references(expr) == ({"lingbot_stage_seconds_bucket", "up"}, {"stage", "le", "job", "instance"})
    assert unknown_references({"typo": 'sum by (stages) (rate(lingbot_stage_second_bucket[1m]))'}) == [
        "typo: unknown metrics ['lingbot_stage_second_bucket']",
        "typo: labels ['stages'] are not on ['lingbot_stage_second_bucket']"]


def test_alert_rules_use_exported_metrics():
    expressions = alert_expressions()
    assert {"LingbotRtDeliveredFpsLow", "LingbotRtActionLatencyHigh", "LingbotRtSessionsRefused",
            "LingbotRtErrorRate"} <= expressions.keys()
    assert unknown_references(expressions) == []


def test_dashboard_uses_and_shows_every_exported_metric():
    expressions = dashboard_expressions()
    assert unknown_references(expressions) == []
    series = exported()
    shown = {series[name][0] for expr in expressions.values() for name in references(expr)[0] if name in series}
    assert {metric for metric, _ in series.values()} - shown == set()


def test_scrape_config_targets_the_serve_metrics_port():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    serve = build_parser().parse_args(["serve"])
    assert job["job_name"] == "lingbot-rt" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{serve.host}:{serve.metrics_port}"]
    assert all('job="lingbot-rt"' in expr for expr in alert_expressions().values() if "up" in references(expr)[0])
    assert config["rule_files"] == ["alerts.yml"]


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y --no-install-recommends prometheus)")
    done = subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_config_and_rules_and_the_alerts_fire_as_tested():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")       # checks alerts.yml too
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_promtool_parses_the_dashboard_queries(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(dashboard_expressions().values())]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    assert "SUCCESS" in promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
