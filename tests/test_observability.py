"""deploy/observability: the alert rules and the Grafana dashboard, checked offline.

Every expression is parsed as PromQL (promql-parser, the Prometheus parser's Rust port),
the rule file has the structure `promtool check rules` wants, the dashboard fits a
schema of the parts we rely on, and every metric an expression names is one a real
runner exports (scraped from its /metrics) or one of the documented NATS-exporter and
kube-state-metrics series. The metrics the alerts needed (blocked runs, timer lateness)
are measured on real runs here too.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest

from jetlane import (
    Client,
    ConnectOptions,
    Context,
    Log,
    Names,
    Runner,
    RunnerConfig,
    define_job,
    step,
)
from jetlane._metrics import RunnerMetrics, serve_ops
from jetlane.embedded import free_port

from .helpers import StartRunner, eventually
from .test_metrics import get

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"

# Series from outside jetlane that the rules and the dashboard may use (docs/deploy.md):
# the NATS chart's exporter sidecar (prometheus-nats-exporter -prefix=nats -jsz=all) and
# kube-state-metrics.
NATS_EXPORTER = frozenset(
    {
        "nats_consumer_num_pending",
        "nats_consumer_num_ack_pending",
        "nats_stream_total_messages",
        "nats_stream_total_bytes",
    }
)
KUBE_STATE = frozenset(
    {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}
)
# The series each family of the text format exposes (a counter's TYPE line already ends
# in _total; its _created series is a gauge family of its own).
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}
# Grafana replaces these before it sends a query; we do the same before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="module")
def rules() -> Any:
    return yaml.safe_load(RULES.read_text())


@pytest.fixture(scope="module")
def dashboard() -> Any:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture
async def exported(start_runner: StartRunner) -> frozenset[str]:
    """Every series name a real runner exports, read from its /metrics over HTTP."""
    runner = await start_runner([])
    port = free_port()
    server = await serve_ops("127.0.0.1", port, metrics=runner.metrics, ready=runner.ready.is_set)
    try:
        status, text = await get(port, "/metrics")
    finally:
        server.close()
        await server.wait_closed()
    assert status == 200
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.update(family + suffix for suffix in SUFFIXES[kind])
    assert "jetlane_consumer_pending" in names  # the scrape really read the runner's families
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects; parsing fails loudly on bad PromQL."""
    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                unnamed.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert not unnamed, f"selectors without a metric name: {unnamed} in {expr!r}"
    return names


def kept_labels(node: Any) -> set[str] | None:
    """The labels an expression's result keeps: a set, or None for "all of its series'"."""
    if isinstance(node, promql_parser.AggregateExpr):
        modifier = node.modifier
        if modifier is None:
            return set()
        if modifier.type == promql_parser.AggModifierType.By:
            return set(modifier.labels)
        return None
    if isinstance(node, promql_parser.BinaryExpr):
        return kept_labels(node.lhs)  # a filter or comparison keeps its left side's labels
    if isinstance(node, promql_parser.ParenExpr):
        return kept_labels(node.expr)
    if isinstance(node, promql_parser.Call):
        if node.func.name == "absent":
            return set()
        inner = [a for a in node.args if not isinstance(a, promql_parser.NumberLiteral)]
        return kept_labels(inner[0]) if inner else set()
    return None


# -- alert rules ---------------------------------------------------------------

GROUP_KEYS = {"name", "interval", "limit", "rules", "query_offset", "labels"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"critical", "warning", "info"}


def test_rule_file_has_the_structure_promtool_checks(rules: Any) -> None:
    assert set(rules) == {"groups"}
    assert rules["groups"], "no rule groups"
    seen: set[str] = set()
    for group in rules["groups"]:
        assert set(group) <= GROUP_KEYS, set(group) - GROUP_KEYS
        assert isinstance(group["name"], str) and group["name"]
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= ALERT_KEYS, set(rule) - ALERT_KEYS
            name = rule["alert"]
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
            assert name not in seen, f"duplicate alert {name}"
            seen.add(name)
            promql_parser.parse(rule["expr"])
            if "for" in rule:
                assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
            assert rule["labels"]["severity"] in SEVERITIES
            assert all(isinstance(v, str) for v in rule["labels"].values())
            annotations = rule["annotations"]
            assert {"summary", "description"} <= set(annotations)
            for text in annotations.values():
                # Go templates may name only labels the expression's result keeps.
                labels = set(re.findall(r"\$labels\.(\w+)", text))
                kept = kept_labels(promql_parser.parse(rule["expr"]))
                assert kept is None or labels <= kept, (name, labels - (kept or set()))
                assert text.count("{{") == text.count("}}"), (name, text)


def test_every_rule_metric_is_exported(rules: Any, exported: frozenset[str]) -> None:
    known = exported | NATS_EXPORTER | KUBE_STATE
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names <= known, (rule["alert"], names - known)
            used |= names
    # The alerts the operator asked for: runner down, blocked runs, dead letters,
    # consumer backlog, timer lateness.
    assert {
        "jetlane_sessions_active",
        "jetlane_runs_blocked_total",
        "jetlane_dead_letters_total",
        "jetlane_consumer_pending",
        "jetlane_timer_lateness_seconds_bucket",
    } <= used


def test_a_broken_expression_is_caught() -> None:
    """The checks above would notice a typo: the parser refuses bad PromQL."""
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(jetlane_dead_letters_total[15m])")
    with pytest.raises(AssertionError):
        metric_names('{__name__=~"jetlane_.*"}')


# -- Grafana dashboard -----------------------------------------------------------

TARGET = {
    "type": "object",
    "required": ["refId", "expr"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "legendFormat": {"type": "string"},
    },
}
PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "datasource", "gridPos", "targets"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge"]},
        "title": {"type": "string", "minLength": 1},
        "datasource": {
            "type": "object",
            "required": ["type", "uid"],
            "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
        },
        "gridPos": {
            "type": "object",
            "required": ["h", "w", "x", "y"],
            "properties": {
                "h": {"type": "integer", "minimum": 1},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
            },
        },
        "targets": {"type": "array", "minItems": 1, "items": TARGET},
    },
}
DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "panels": {"type": "array", "minItems": 1, "items": PANEL},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["name", "type", "query"],
                        "properties": {
                            "name": {"const": "datasource"},
                            "type": {"const": "datasource"},
                            "query": {"const": "prometheus"},
                        },
                    },
                }
            },
        },
    },
}


def _expand(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_dashboard_fits_the_schema_and_its_layout(dashboard: Any) -> None:
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_schema_rejects_what_grafana_would(dashboard: Any) -> None:
    broken = json.loads(json.dumps(dashboard))
    del broken["panels"][0]["targets"][0]["expr"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, DASHBOARD_SCHEMA)


def test_every_dashboard_query_parses_and_uses_exported_metrics(
    dashboard: Any, exported: frozenset[str]
) -> None:
    known = exported | NATS_EXPORTER | KUBE_STATE
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = metric_names(_expand(target["expr"]))
            assert names <= known, (panel["title"], names - known)
            used |= names
    shown = {
        n
        for n in exported
        if n.startswith("jetlane_") and not n.endswith(("_created", "_count", "_sum"))
    }
    assert not shown - used, f"runner metrics no panel shows: {sorted(shown - used)}"


# -- the metrics the alerts needed ---------------------------------------------------


async def test_blocked_runs_are_counted(client: Client, start_runner: StartRunner) -> None:
    async def v1(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", 0.5)
        return "v1"

    async def v2_bad(ctx: Context) -> str:
        await step.do("renamed", lambda: 1)
        return "bad"

    first = await start_runner([define_job(name="evolving", handler=v1, register=False)])
    await client.start("evolving", run_id="ob1")
    await eventually(lambda: _status(client, "ob1", "sleeping"), what="the run to sleep")
    first.stop()
    bad = await start_runner([define_job(name="evolving", handler=v2_bad, register=False)])
    await eventually(lambda: _status(client, "ob1", "blocked"), what="the run to block")

    async def counted() -> bool:
        return bad.metrics.value("jetlane_runs_blocked_total", job="evolving") >= 1

    await eventually(counted, what="the blocked run to be counted")
    assert first.metrics.value("jetlane_runs_blocked_total", job="evolving") == 0


async def test_alerted_counters_start_at_zero_for_every_served_job(
    start_runner: StartRunner,
) -> None:
    """increase() needs a sample before the first event: a labelled counter that first
    appears at 1 has increased by nothing, so the first blocked run (or failed run) of a
    job on a runner would never fire JetlaneRunsBlocked (JetlaneRunsFailing)."""

    async def idle(ctx: Context) -> None:
        return None

    runner = await start_runner([define_job(name="quiet", handler=idle, register=False)])
    text = generate_latest(runner.metrics.registry).decode()
    assert 'jetlane_runs_blocked_total{job="quiet"} 0.0' in text, text
    for status in ("completed", "failed", "cancelled"):
        assert f'jetlane_runs_ended_total{{job="quiet",status="{status}"}} 0.0' in text, text


async def test_timer_lateness_is_measured(
    client: Client, start_runner: StartRunner, options: ConnectOptions, names: Names
) -> None:
    async def napper(ctx: Context) -> str:
        await step.sleep("nap", 0.5)
        return "rested"

    job = define_job(name="napper", handler=napper, register=False)
    # A runner of our own, whose connection closes with it (no pull request outlives it):
    # once it is gone no in-process timer is left, and the durable one must wake the run.
    first_log = await Log.open(options, names, lease_ttl=5.0)
    first = Runner(first_log, {job.name: job}, config=RunnerConfig(ack_wait=5, drain_timeout=5))
    task = asyncio.create_task(first.run())
    try:
        await asyncio.wait_for(first.ready.wait(), 10)
        await client.start("napper", run_id="late1")
        await eventually(lambda: _status(client, "late1", "sleeping"), what="the run to sleep")
    finally:
        first.stop()
        await asyncio.wait_for(task, 15)
        await first_log.close()

    async def fired() -> bool:  # due while no runner runs: the fired copy waits for one
        return any(m.kind == "timer" for m in await client.log.read("late1"))

    await eventually(fired, what="the durable timer to fire")
    second = await start_runner([job])
    assert await client.result("late1", timeout=20) == "rested"

    async def measured() -> bool:
        return second.metrics.value("jetlane_timer_lateness_seconds_count") >= 1

    await eventually(measured, what="the fired timer's lateness to be observed")
    assert second.metrics.value("jetlane_timer_lateness_seconds_sum") >= 0
    assert first.metrics.value("jetlane_timer_lateness_seconds_count") == 0


async def _status(client: Client, run_id: str, status: str) -> bool:
    return (await client.status(run_id)).status == status


def test_timer_lateness_ignores_what_is_not_a_fired_timer() -> None:
    metrics = RunnerMetrics()
    due = "2020-01-01T00:00:00.000Z"
    metrics.timer_received({"Jetlane-Fire-At": due})  # no Nats-Scheduler: not fired by NATS
    metrics.timer_received({"Jetlane-Fire-At": "soon", "Nats-Scheduler": "x"})  # garbled
    metrics.timer_received({"Nats-Scheduler": "x"})  # a schedule from before the header
    assert metrics.value("jetlane_timer_lateness_seconds_count") == 0
    metrics.timer_received({"Jetlane-Fire-At": due, "Nats-Scheduler": "x"})
    assert metrics.value("jetlane_timer_lateness_seconds_count") == 1
    assert metrics.value("jetlane_timer_lateness_seconds_sum") > 0
