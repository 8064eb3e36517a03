"""deploy/: every manifest is valid Kubernetes, and it lines up with what jetlane exposes.

Validation is offline (kubernetes-validate's bundled schemas, strict: unknown
fields fail). The KEDA ScaledObject is a CRD the validator lacks, so its
structure is checked by hand. Ports, probe paths, names and env vars are
compared with the real runner ops server, the real API app and the CLI.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from jetlane import Client, ConnectError, ConnectOptions, Names, RunnerConfig
from jetlane._metrics import RunnerMetrics, serve_ops
from jetlane.api import OPEN_PATHS, create_app
from jetlane.embedded import free_port

from . import nats_chart

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

# The one list of settings the manifests may pass: the runner CLI's and the API CLI's
# env vars (checked against their --help once those flags exist), and the setup script's.
CONNECTION_ENV = frozenset(
    {"JETLANE_NATS_URL", "JETLANE_NATS_USER", "JETLANE_NATS_PASSWORD", "JETLANE_NATS_TLS_CA"}
)
RUNNER_ENV = CONNECTION_ENV | frozenset(
    {
        "JETLANE_JOBS",
        "JETLANE_CONCURRENCY",
        "JETLANE_ACK_WAIT",
        "JETLANE_DRAIN_TIMEOUT",
        "JETLANE_METRICS_PORT",
        "JETLANE_LOG_JSON",
        "JETLANE_LOG_LEVEL",
    }
)
API_ENV = CONNECTION_ENV | frozenset(
    {"JETLANE_API_TOKEN", "JETLANE_API_HOST", "JETLANE_JS_API_PREFIX"}
)
SETUP_ENV = CONNECTION_ENV | frozenset({"JETLANE_REPLICAS", "JETLANE_PREFIX", "JETLANE_STREAM"})
USERS_SECRET = "jetlane-nats-users"
METRICS_PORT = 9090  # the runner's --metrics-port default
API_PORT = 8080  # `jetlane api --port 8080`
NATS_MONITOR_PORT = 8222

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build() -> list[Doc]:
    """``kustomize build deploy/k8s`` for the features the base uses (no kustomize needed)."""
    kustomization = _load(K8S / "kustomization.yaml")[0]
    docs = [doc for name in kustomization["resources"] for doc in _load(K8S / name)]
    for gen in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] != "Namespace":
            meta["namespace"] = kustomization["namespace"]
        meta["labels"] = {**meta.get("labels", {}), **labels}
        for container in _containers(doc):
            container["image"] = images.get(container["image"], container["image"])
    return docs


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    containers: list[Doc] = pod.get("containers", [])
    return containers


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return build()


def test_every_manifest_is_valid_kubernetes(docs: list[Doc]) -> None:
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Namespace", "ConfigMap", "Job", "Deployment", "Deployment", "Service"]
    expected += ["PodDisruptionBudget", "PodDisruptionBudget", "ScaledObject"]
    assert kinds == sorted(expected)
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            continue  # a CRD: test_scaled_object_targets_the_runner_consumer checks it
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_same_objects(docs: list[Doc]) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    built = [d for d in yaml.safe_load_all(out) if d]

    def key(d: Doc) -> tuple[str, str, str]:
        # the generator adds a content hash to the ConfigMap's name
        name = re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])
        return d["kind"], name, d["metadata"].get("namespace", "")

    assert sorted(map(key, built)) == sorted(map(key, docs))


async def _get(port: int, path: str) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}{path}")).status_code


async def test_runner_probes_ports_and_drain_match_the_runner(docs: list[Doc]) -> None:
    runner = _find(docs, "Deployment", "jetlane-runner")
    pod = runner["spec"]["template"]
    (container,) = _containers(runner)
    env = _env(container)
    assert set(env) <= RUNNER_ENV, set(env) - RUNNER_ENV
    assert {"JETLANE_NATS_URL", "JETLANE_JOBS", "JETLANE_METRICS_PORT"} <= set(env)
    assert container["args"][0] == "runner"
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["JETLANE_METRICS_PORT"]) == METRICS_PORT
    probes = {k: container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert all(p["port"] == port["name"] for p in probes.values())
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == METRICS_PORT

    # The paths are what the runner's ops server really answers.
    free = free_port()
    ready = True
    server = await serve_ops("127.0.0.1", free, metrics=RunnerMetrics(), ready=lambda: ready)
    try:
        for path in (probes["readinessProbe"]["path"], probes["livenessProbe"]["path"]):
            assert await _get(free, path) == 200, path
        assert await _get(free, annotations["prometheus.io/path"]) == 200
        ready = False  # draining: out of the Service, but alive
        assert await _get(free, probes["readinessProbe"]["path"]) == 503
        assert await _get(free, probes["livenessProbe"]["path"]) == 200
    finally:
        server.close()
        await server.wait_closed()

    drain = float(env.get("JETLANE_DRAIN_TIMEOUT", RunnerConfig().drain_timeout))
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    pdb = _find(docs, "PodDisruptionBudget", "jetlane-runner")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert runner["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]


def test_scaled_object_targets_the_runner_consumer(docs: list[Doc]) -> None:
    scaled = _find(docs, "ScaledObject", "jetlane-runner")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "jetlane-runner")
    _find(docs, "Deployment", target["name"])
    # The API refuses starts for jobs no runner serves: never scale to zero.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values())  # KEDA metadata is string-valued
    names = Names()
    assert (meta["stream"], meta["consumer"], meta["account"]) == (
        names.stream,
        names.consumer,
        nats_chart.ACCOUNT,  # the account the values declare, not the global $G
    )
    assert int(meta["lagThreshold"]) > 0
    host, _, port = meta["natsServerMonitoringEndpoint"].rpartition(":")
    assert host == f"nats-headless.{scaled['metadata']['namespace']}.svc.cluster.local"
    values = yaml.safe_load((DEPLOY / "nats-values.yaml").read_text())
    assert int(port) == values["config"]["monitor"]["port"] == NATS_MONITOR_PORT


async def test_api_deployment_and_service_match_the_app(docs: list[Doc], client: Client) -> None:
    api = _find(docs, "Deployment", "jetlane-api")
    (container,) = _containers(api)
    env = _env(container)
    assert set(env) <= API_ENV, set(env) - API_ENV
    assert env["JETLANE_API_TOKEN"]["secretKeyRef"]["optional"] is True
    args = container["args"]
    assert args[0] == "api" and int(args[args.index("--port") + 1]) == API_PORT
    (port,) = container["ports"]
    assert port["containerPort"] == API_PORT
    probes = [container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")]
    assert {p["path"] for p in probes} == {"/readyz", "/healthz"}
    assert all(p["port"] == port["name"] for p in probes)

    # Probes carry no token: the paths must be open, and answer 200, with one configured.
    app = create_app(client, token="secret")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for probe in probes:
            assert probe["path"] in OPEN_PATHS
            assert (await http.get(probe["path"])).status_code == 200

    service = _find(docs, "Service", "jetlane-api")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = _find(docs, "PodDisruptionBudget", "jetlane-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _help(*command: str) -> str | None:
    result = subprocess.run(
        [sys.executable, "-m", "jetlane.cli", *command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    return result.stdout if result.returncode == 0 else None


def test_env_vars_are_the_clis() -> None:
    runner = _help("runner")
    assert runner is not None
    assert {v for v in RUNNER_ENV if v not in runner} == set()
    api = _help("api")
    assert api is not None
    assert {v for v in API_ENV if v not in api} == set()


def test_stream_setup_job_and_nats_values(docs: list[Doc]) -> None:
    values = yaml.safe_load((DEPLOY / "nats-values.yaml").read_text())
    cluster, jetstream = values["config"]["cluster"], values["config"]["jetstream"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    assert jetstream["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert values["podDisruptionBudget"]["enabled"] is True

    job = _find(docs, "Job", "jetlane-stream-setup")
    (container,) = _containers(job)
    env = _env(container)
    assert set(env) <= SETUP_ENV
    assert int(env["JETLANE_REPLICAS"]) == cluster["replicas"]
    script = Path(container["command"][-1])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == script.parent]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    config_map = _find(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert script.name in config_map["data"]
    runner = _find(docs, "Deployment", "jetlane-runner")
    for deployment in (job, runner, _find(docs, "Deployment", "jetlane-api")):
        (c,) = _containers(deployment)
        assert c["image"] == _containers(runner)[0]["image"]
        assert _env(c)["JETLANE_NATS_URL"] == "tls://nats:4222"  # the chart's client Service


async def test_stream_setup_script_creates_the_streams(
    options: ConnectOptions, names: Names, client: Client
) -> None:
    env = {
        **os.environ,
        "JETLANE_NATS_URL": options.url,
        "JETLANE_REPLICAS": "1",  # the test server is one node
        "JETLANE_PREFIX": f"{names.prefix}s",
        "JETLANE_STREAM": f"{names.stream}S",
    }
    for _ in range(2):  # idempotent
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(K8S / "stream-setup.py"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().count("1 replica(s)") == 5
    js = client.log.js
    for stream in (
        f"{names.stream}S",
        f"{names.stream}S_TIMERS",
        f"{names.stream}S_INDEX",
        f"{names.stream}S_LEASES",
        f"{names.stream}S_WAITING",
    ):
        info = await js.stream_info(stream)
        assert info.config.num_replicas == 1
        await js.delete_stream(stream)


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages and all(re.match(r"FROM python:\$\{PYTHON\}-slim\b", s) for s in stages)
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["jetlane"]' in lines
    assert any(re.fullmatch(r"COPY jobs/ \S+", line) for line in lines)
    (expose,) = [line for line in lines if line.startswith("EXPOSE ")]
    assert {int(p) for p in expose.split()[1:]} == {API_PORT, METRICS_PORT}


# -- secured by default: credentials from Secrets, TLS -------------------------------

CERT_MANAGER = DEPLOY / "cert-manager"
COMPONENTS = (
    ("Job", "jetlane-stream-setup"),
    ("Deployment", "jetlane-runner"),
    ("Deployment", "jetlane-api"),
)


def _certificates() -> dict[str, Doc]:
    docs = _load(CERT_MANAGER / "certificates.yaml")
    kustomization = _load(CERT_MANAGER / "kustomization.yaml")[0]
    assert kustomization["resources"] == ["certificates.yaml"]
    for doc in docs:
        assert doc["apiVersion"] == "cert-manager.io/v1" and doc["kind"] in (
            "Issuer",
            "Certificate",
        )
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}


def test_every_component_connects_with_credentials_and_tls(docs: list[Doc]) -> None:
    values = yaml.safe_load((DEPLOY / "nats-values.yaml").read_text())
    users = nats_chart.users(values)
    tls_secret = values["config"]["nats"]["tls"]["secretName"]
    assert values["config"]["nats"]["tls"]["enabled"] is True
    assert values["tlsCA"] == {"enabled": True, "secretName": tls_secret, "key": "ca.crt"}
    server_cert = _certificates()[tls_secret]["spec"]
    assert server_cert["secretName"] == tls_secret
    # The server reads each password from its environment, filled from the users Secret.
    server_env = values["container"]["env"]
    for name, user in users.items():
        ref = server_env[nats_chart.password_variable(user)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": USERS_SECRET, "key": name}
    seen = set()
    for kind, name in COMPONENTS:
        workload = _find(docs, kind, name)
        (container,) = _containers(workload)
        env = _env(container)
        url = env["JETLANE_NATS_URL"]
        assert url.startswith("tls://"), (name, url)
        assert url.removeprefix("tls://").split(":")[0] in server_cert["dnsNames"]
        user = env["JETLANE_NATS_USER"]
        assert user in users, (name, user)
        # A user of account CLIENTS reaches the JetStream API under the prefix its account
        # imports it with; the runner's account (and the setup Job) under the default.
        if nats_chart.account_of(values, user) == nats_chart.CLIENTS:
            assert env["JETLANE_JS_API_PREFIX"] == nats_chart.api_prefix(values), name
        else:
            assert "JETLANE_JS_API_PREFIX" not in env, name
        assert env["JETLANE_NATS_PASSWORD"]["secretKeyRef"] == {"name": USERS_SECRET, "key": user}
        ca = Path(env["JETLANE_NATS_TLS_CA"])
        (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == ca.parent]
        assert mount["readOnly"] is True
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == tls_secret
        assert secret["items"] == [{"key": "ca.crt", "path": ca.name}]  # never the key
        seen.add(user)
    assert seen == {"runner", "api"}


def _manifest_env(
    docs: list[Doc], kind: str, name: str, *, url: str, passwords: dict[str, str], ca: Path
) -> dict[str, str]:
    """What the container's environment would be, pointed at the test server."""
    (container,) = _containers(_find(docs, kind, name))
    out: dict[str, str] = {}
    for key, value in _env(container).items():
        if isinstance(value, dict):
            ref = value["secretKeyRef"]
            if ref["name"] != USERS_SECRET:
                continue  # the API token: optional
            value = passwords[ref["key"]]
        out[key] = value
    out["JETLANE_NATS_URL"] = url
    out["JETLANE_NATS_TLS_CA"] = str(ca)
    return out


async def test_components_connect_to_the_deployed_accounts_over_tls(
    docs: list[Doc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server with the values' accounts (rendered as the chart does) and TLS: the
    setup Job, a runner and the API, each with exactly its manifest's environment, connect
    and run a workflow; without the password the server refuses."""
    from jetlane import Log, Runner, define_job
    from jetlane.cli import build_parser, connect_options
    from jetlane.embedded import EmbeddedNats

    from .test_security import make_pki

    values = nats_chart.load_values()
    pki = make_pki(tmp_path / "pki")
    passwords = {name: f"{name}-secret" for name in nats_chart.users(values)}
    config = (
        f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n'
        f'  ca_file: "{pki.ca}"\n}}\n' + nats_chart.render(values["config"]["merge"])
    )
    with monkeypatch.context() as server_env:
        for key, value in nats_chart.server_environment(passwords, values).items():
            server_env.setenv(key, value)
        server = EmbeddedNats(tmp_path / "nats", config=config).start()
    try:
        url = f"tls://127.0.0.1:{server.port}"

        def env_of(kind: str, name: str) -> dict[str, str]:
            return _manifest_env(docs, kind, name, url=url, passwords=passwords, ca=pki.ca)

        setup = env_of("Job", "jetlane-stream-setup") | {"JETLANE_REPLICAS": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(K8S / "stream-setup.py"),
            env={**os.environ, **setup},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().count("1 replica(s)") == 5

        def options_of(kind: str, name: str, command: list[str]) -> ConnectOptions:
            with monkeypatch.context() as env:
                for key, value in env_of(kind, name).items():
                    env.setenv(key, value)
                return connect_options(build_parser().parse_args(command))

        runner_options = options_of("Deployment", "jetlane-runner", ["runner"])
        api_options = options_of("Deployment", "jetlane-api", ["api"])
        assert (runner_options.user, api_options.user) == ("runner", "api")
        assert runner_options.js_api_prefix is None
        assert api_options.js_api_prefix == nats_chart.api_prefix(values)
        with pytest.raises(ConnectError):
            await Log.open(replace(api_options, password=None, reconnect=False), Names())

        async def hello(ctx: Any, name: str) -> str:
            return f"hello {name}"

        job = define_job(name="deploy-hello", handler=hello, register=False)
        runner_log = await Log.open(runner_options, Names(), lease_ttl=5)
        runner = Runner(runner_log, {job.name: job}, config=RunnerConfig(drain_timeout=5))
        task = asyncio.create_task(runner.run())
        api_log = await Log.open(api_options, Names())
        try:
            await asyncio.wait_for(runner.ready.wait(), 10)
            app = create_app(Client(api_log))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                body = {"job": job.name, "input": "k8s", "id": "deployed1"}
                assert (await http.post("/runs", json=body)).status_code == 201
            assert await Client(api_log).result("deployed1", timeout=20) == "hello k8s"
        finally:
            runner.stop()
            await asyncio.wait_for(task, 15)
            await runner_log.close()
            await api_log.close()
    finally:
        server.cleanup()
