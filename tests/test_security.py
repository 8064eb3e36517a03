"""Locked-down NATS: TLS (certificates made here), mutual TLS, accounts, users and permissions.

One server requires TLS with client certificates (mutual TLS) and has the account
and users of deploy/nats-values.yaml, read as the Helm chart renders them: a
runner, the API, a publisher and an auditor (user/password, narrow permissions),
plus an nkey runner and a user with a permission typo. A second server uses a
token. So the permissions proven here are the ones the deployment ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import ipaddress
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nkeys  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jetlane import (
    Client,
    ConnectError,
    ConnectOptions,
    Context,
    JetlaneError,
    Log,
    Names,
    Runner,
    RunnerConfig,
    define_job,
    step,
)
from jetlane import wire as h
from jetlane._core.durations import format_time
from jetlane._nats.connection import connect_nats
from jetlane.api import create_app
from jetlane.embedded import EmbeddedNats

from . import nats_chart
from .helpers import eventually

# Refused TLS/auth connects leave nats-py transports behind (see the module fixture below);
# their ResourceWarnings surface in whichever later test the garbage collector runs.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

# The deployment's names: its permission blocks name jetlane.> and JETLANE.
NAMES = Names()
PREFIX, STREAM = NAMES.prefix, NAMES.stream


# -- certificates ---------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("jetlane test CA", ca_key, None, ca_key, ca=True)
    _write(directory / "ca", ca_key, ca)
    server_key = _key()
    _write(
        directory / "server",
        server_key,
        _cert("127.0.0.1", server_key, ca.subject, ca_key, server=True),
    )
    client_key = _key()
    _write(directory / "client", client_key, _cert("runner", client_key, ca.subject, ca_key))
    other_key = _key()
    other = _cert("other CA", other_key, None, other_key, ca=True)
    rogue_key = _key()
    _write(directory / "rogue", rogue_key, _cert("rogue", rogue_key, other.subject, other_key))
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        rogue_cert=directory / "rogue.pem",
        rogue_key=directory / "rogue.key",
    )


# -- the locked-down server -------------------------------------------------------

# The accounts, users and permissions of deploy/nats-values.yaml, rendered as the chart
# renders them (the one source of the permission blocks); the test adds a user with a
# password of its own per role, an nkey runner and one with a typo in its permissions.
DEPLOYED = nats_chart.load_values()
ROLES = nats_chart.users(DEPLOYED)
PASSWORDS = {name: f"{name}-pw" for name in ROLES}
# The roles of account CLIENTS reach the JetStream API under this prefix (the runner's
# account, JETLANE, under the default $JS.API).
CLIENT_ROLES = ("publisher", "auditor", "api")
CLIENT_API = nats_chart.api_prefix(DEPLOYED)
assert {nats_chart.account_of(DEPLOYED, r) for r in CLIENT_ROLES} == {nats_chart.CLIENTS}
assert nats_chart.account_of(DEPLOYED, "runner") == nats_chart.ACCOUNT
# May publish inputs but not read stream info: what a typo in a permission list does.
LIMITED_PERMISSIONS = {"publish": ["jetlane.run.*.in"], "subscribe": ["_INBOX.>"]}


@dataclass(frozen=True)
class Locked:
    server: EmbeddedNats
    pki: Pki
    nkey_seed: Path

    @property
    def tls_url(self) -> str:
        return f"tls://127.0.0.1:{self.server.port}"

    def options(self, **auth: Any) -> ConnectOptions:
        """Options for ``auth``; a role of account CLIENTS gets its JetStream API prefix."""
        base = ConnectOptions(
            url=self.tls_url,
            tls_ca=str(self.pki.ca),
            tls_cert=str(self.pki.client_cert),
            tls_key=str(self.pki.client_key),
            connect_timeout=2.0,
            reconnect=False,
            js_api_prefix=CLIENT_API if auth.get("user") in CLIENT_ROLES else None,
        )
        return replace(base, **auth)


@pytest.fixture(scope="module", autouse=True)
def _collect_leaked_transports() -> Iterator[None]:
    """Collect what refused connects left behind before other modules run."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    base = tmp_path_factory.mktemp("locked")
    pki = make_pki(base / "pki")
    user = nkeys.from_seed(nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER))
    seed_file = base / "user.nk"
    seed_file.write_bytes(user.seed)
    accounts = copy.deepcopy(DEPLOYED["config"]["merge"]["accounts"])
    users = accounts[nats_chart.ACCOUNT]["users"]
    users.append({"nkey": user.public_key.decode(), "permissions": ROLES["runner"]["permissions"]})
    users.append({"user": "limited", "password": "limited-pw", "permissions": LIMITED_PERMISSIONS})
    config = f"""
tls {{
  cert_file: "{pki.server_cert}"
  key_file: "{pki.server_key}"
  ca_file: "{pki.ca}"
  verify: true
  timeout: 2
}}
""" + nats_chart.render({"accounts": accounts})
    with pytest.MonkeyPatch.context() as env:  # as the chart's container.env would
        for name, value in nats_chart.server_environment(PASSWORDS, DEPLOYED).items():
            env.setenv(name, value)
        server = EmbeddedNats(base / "nats", config=config).start()
    yield Locked(server, pki, seed_file)
    server.cleanup()


async def _echo(ctx: Context, input: Any) -> Any:
    got = await step.wait_for_event("go", type="go", timeout="5m")
    return await step.do("echo", lambda: {"input": input, "event": got})


ECHO = define_job(name="echo-sec", handler=_echo, register=False)


@pytest.fixture
async def runner(locked: Locked) -> AsyncIterator[Runner]:
    log = await Log.open(locked.options(user="runner", password="runner-pw"), NAMES, lease_ttl=5)
    runner = Runner(log, {ECHO.name: ECHO}, config=RunnerConfig(ack_wait=5, drain_timeout=5))
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.ready.wait(), 10)
    yield runner
    runner.stop()
    await asyncio.wait_for(task, 15)
    await log.close()


@contextlib.asynccontextmanager
async def client_as(locked: Locked, **auth: Any) -> AsyncIterator[Client]:
    log = await Log.open(locked.options(**auth), NAMES)
    try:
        yield Client(log)
    finally:
        await log.close()


async def raw_log(locked: Locked, timeout: float = 1.0, **auth: Any) -> Log:
    """A log on a fresh connection with a short request timeout (denied publishes time out)."""
    options = locked.options(**auth)
    api = options.js_api_prefix or "$JS.API"
    return Log(await connect_nats(options), NAMES, timeout=timeout, api=api)


def api_subjects(subject: str) -> list[str]:
    """``subject`` (under ``$JS.API``) as a role of account CLIENTS could try it: under the
    default prefix and under the one its account imports the API with."""
    return [subject, CLIENT_API + subject.removeprefix("$JS.API")]


# -- authentication -------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param({"user": "runner", "password": "wrong"}, id="wrong-password"),
        pytest.param({"token": "guess"}, id="token-on-a-user-server"),
    ],
)
async def test_connection_without_valid_credentials_is_refused(
    locked: Locked, auth: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ConnectError, match=r"(?i)cannot connect to NATS at tls://.*authori"):
        await Log.open(locked.options(**auth), NAMES)
    assert loop.time() - began < 10


async def test_connection_without_a_client_certificate_is_refused(locked: Locked) -> None:
    options = locked.options(user="runner", password="runner-pw", tls_cert=None, tls_key=None)
    with pytest.raises(ConnectError, match="cannot connect to NATS"):
        await Log.open(options, NAMES)


async def test_client_certificate_from_another_ca_is_refused(locked: Locked) -> None:
    options = locked.options(
        user="runner",
        password="runner-pw",
        tls_cert=str(locked.pki.rogue_cert),
        tls_key=str(locked.pki.rogue_key),
    )
    with pytest.raises(ConnectError, match="cannot connect to NATS"):
        await Log.open(options, NAMES)


async def test_server_certificate_not_trusted_without_the_ca(locked: Locked) -> None:
    options = locked.options(user="runner", password="runner-pw", tls_ca=str(locked.pki.rogue_cert))
    with pytest.raises(ConnectError, match=r"(?i)certificate"):
        await Log.open(options, NAMES)


async def test_mutual_tls_user_password_and_nkey_run_a_workflow(
    locked: Locked, runner: Runner
) -> None:
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        handle = await publisher.start("echo-sec", {"n": 1}, run_id="ok1")

        async def waiting() -> bool:
            return (await publisher.status("ok1")).status == "waiting"

        await eventually(waiting, what="the run to wait")
        await handle.send_event("go", "yes")
        assert await handle.result(timeout=20) == {"input": {"n": 1}, "event": "yes"}
    async with client_as(locked, nkey_seed=str(locked.nkey_seed)) as by_nkey:
        assert (await by_nkey.status("ok1")).status == "completed"


async def test_missing_permission_is_a_clear_jetlane_error(locked: Locked) -> None:
    with pytest.raises(JetlaneError, match=r"(?i)permission"):
        await Log.open(locked.options(user="limited", password="limited-pw"), NAMES)


async def test_token_authentication(tmp_path: Path) -> None:
    config = 'authorization { token: "s3cret-token" }\n'
    with EmbeddedNats(tmp_path / "token", config=config) as server:
        with pytest.raises(ConnectError, match=r"(?i)authori"):
            await Log.open(
                ConnectOptions(url=server.url, reconnect=False, connect_timeout=2), NAMES
            )
        log = await Log.open(ConnectOptions(url=server.url, token="s3cret-token"), NAMES)
        try:
            await Client(log).start("anything", None, run_id="t1")
            assert (await Client(log).status("t1")).status == "queued"
        finally:
            await log.close()


# -- permissions as a security boundary -------------------------------------------


async def _forged_result_json() -> bytes:
    return msgspec.json.encode(
        {
            "step": "echo",
            "attempt": 1,
            "result": "forged",
            "started_at": format_time(datetime.now(UTC)),
            "duration_ms": 1,
        }
    )


async def test_publisher_cannot_write_the_journal(locked: Locked, runner: Runner) -> None:
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.start("echo-sec", "p", run_id="forge1")

        async def waiting() -> bool:
            return (await publisher.status("forge1")).status == "waiting"

        await eventually(waiting, what="the run to wait")
        before = [m.seq for m in await publisher.log.read("forge1") if m.direction == "out"]
        forged = await _forged_result_json()
        raw = await raw_log(locked, user="publisher", password="publisher-pw")
        try:
            headers = {h.KIND_HEADER: "step_completed", "Nats-Expected-Last-Subject-Sequence": "0"}
            with pytest.raises(JetlaneError):
                await raw._publish(NAMES.journal("forge1"), forged, headers)
            for subject in (
                *api_subjects(f"$JS.API.STREAM.PURGE.{STREAM}"),
                *api_subjects(f"$JS.API.STREAM.DELETE.{STREAM}"),
                *api_subjects(f"$JS.API.CONSUMER.DELETE.{STREAM}.{NAMES.consumer}"),
                NAMES.timer("forge1", "t"),
                NAMES.lease("forge1"),
            ):
                with pytest.raises(JetlaneError):
                    await raw._publish(subject, b"{}", {})
        finally:
            await raw.close()
        # A journal kind sent where the publisher may write (.in) is dead-lettered, not applied.
        reply = await publisher.log.nc.request(
            NAMES.inbox("forge1"), forged, headers={h.KIND_HEADER: "step_completed"}, timeout=5
        )
        seq = msgspec.json.decode(reply.data)["seq"]

        async def dead_lettered() -> bool:
            async for raw_msg in publisher.log.read_raw(f"{PREFIX}.dlq.forge1"):
                if msgspec.json.decode(raw_msg.data)["seq"] == seq:
                    return True
            return False

        await eventually(dead_lettered, what="the forged entry on .in to be dead-lettered")
        after = await publisher.log.read("forge1")
        assert [m.seq for m in after if m.direction == "out"] == before
        await publisher.send_event("forge1", "go", "real")
        assert await publisher.result("forge1", timeout=20) == {"input": "p", "event": "real"}


async def test_publisher_cannot_forge_a_journal_entry_through_a_schedule(
    locked: Locked, runner: Runner
) -> None:
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.start("echo-sec", "s", run_id="forge2")
        await eventually(lambda: _status_is(publisher, "forge2", "waiting"), what="a wait")
        fire_at = format_time(datetime.now(UTC) + timedelta(milliseconds=300))
        headers = {
            h.KIND_HEADER: "run_completed",
            "Nats-Schedule": f"@at {fire_at}",
            "Nats-Schedule-Target": NAMES.journal("forge2"),
        }
        forged = msgspec.json.encode({"output": "forged"})
        try:  # on another run's inbox, which the publisher may write
            await publisher.log._publish(NAMES.inbox("decoy"), forged, headers)
        except JetlaneError:
            return  # refused: nothing can be forged this way

        async def fired() -> bool:
            async for raw in publisher.log.read_raw(NAMES.journal("forge2")):
                if "Nats-Scheduler" in (raw.headers or {}):
                    return True
            return False

        await eventually(fired, timeout=10, what="the schedule to fire")
        status = await publisher.status("forge2")
        assert (status.status, status.output) == ("waiting", None), status
        await publisher.send_event("forge2", "go", "real")
        assert await publisher.result("forge2", timeout=20) == {"input": "s", "event": "real"}


async def test_publisher_cannot_erase_a_runs_inputs_with_a_schedule(
    locked: Locked, runner: Runner
) -> None:
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.start("echo-sec", "e", run_id="erase1")
        await eventually(lambda: _status_is(publisher, "erase1", "waiting"), what="a wait")
        inputs = [m.seq for m in await publisher.log.read("erase1") if m.direction == "in"]
        fire_at = format_time(datetime.now(UTC) + timedelta(hours=1))
        headers = {
            h.KIND_HEADER: "event",
            "Nats-Schedule": f"@at {fire_at}",
            "Nats-Schedule-Target": NAMES.inbox("other"),
        }
        with contextlib.suppress(JetlaneError):  # refused would be fine too
            await publisher.log._publish(NAMES.inbox("erase1"), b'{"type": "x"}', headers)
        after = [m.seq for m in await publisher.log.read("erase1") if m.direction == "in"]
        assert after[: len(inputs)] == inputs, "the run's inputs were erased"
        assert (await publisher.status("erase1")).status == "waiting"


async def test_publisher_cannot_roll_up_or_expire_a_runs_inputs(
    locked: Locked, runner: Runner
) -> None:
    """Headers no permission filters: a rollup would erase a run's inputs, a per-message TTL
    would make them vanish; the runs stream refuses both."""
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.start("echo-sec", "r", run_id="rollup1")
        await eventually(lambda: _status_is(publisher, "rollup1", "waiting"), what="a wait")
        before = [m.seq for m in await publisher.log.read("rollup1")]
        for extra in ({"Nats-Rollup": "sub"}, {"Nats-Rollup": "all"}, {"Nats-TTL": "1s"}):
            with pytest.raises(JetlaneError, match=r"rollup not permitted|TTL is disabled"):
                await publisher.log._publish(
                    NAMES.inbox("rollup1"), b'{"type": "x"}', {h.KIND_HEADER: "event", **extra}
                )
        assert [m.seq for m in await publisher.log.read("rollup1")] == before
        assert (await publisher.status("rollup1")).status == "waiting"


async def test_auditor_may_only_read(locked: Locked, runner: Runner) -> None:
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.start("echo-sec", "a", run_id="audit1")
        await eventually(lambda: _status_is(publisher, "audit1", "waiting"), what="the run to wait")
        await publisher.send_event("audit1", "go", "e")
    async with client_as(locked, user="auditor", password="auditor-pw") as auditor:
        assert await auditor.result("audit1", timeout=20) == {"input": "a", "event": "e"}
        kinds = [m.kind async for m in auditor.history("audit1")]
        assert kinds[0] == "start" and kinds[-1] == "run_completed"
        raw = await raw_log(locked, user="auditor", password="auditor-pw")
        try:
            with pytest.raises(JetlaneError):
                await raw.publish_input("audit2", h.Start(job="echo-sec"), create_once=True)
            with pytest.raises(JetlaneError):
                await raw.publish_input("audit1", h.Event(type="go", payload="x"))
            with pytest.raises(JetlaneError):
                await raw._publish(NAMES.journal("audit1"), b"{}", {h.KIND_HEADER: "run_failed"})
        finally:
            await raw.close()
        assert not await auditor.log.exists("audit2")


async def _status_is(client: Client, run_id: str, status: str) -> bool:
    return (await client.status(run_id)).status == status


async def test_api_role_serves_every_route_and_cannot_write_the_journal(
    locked: Locked, runner: Runner
) -> None:
    """The HTTP API logged in as the deployment's ``api`` user: starts, events, statuses,
    histories, listings, the jobs runners serve and cancels all work; the journal does not."""
    async with client_as(locked, user="api", password="api-pw") as api:
        app = create_app(api)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            jobs = (await http.get("/jobs")).json()["jobs"]
            assert "echo-sec" in [j["name"] for j in jobs]
            started = await http.post("/runs", json={"job": "echo-sec", "input": 1, "id": "api1"})
            assert started.status_code == 201, started.text
            await eventually(lambda: _status_is(api, "api1", "waiting"), what="the run to wait")
            sent = await http.post(
                "/runs/events", json={"run_id": "api1", "type": "go", "payload": 2}
            )
            assert sent.status_code == 202, sent.text
            assert await api.result("api1", timeout=20) == {"input": 1, "event": 2}
            history = (await http.get("/runs/api1/history")).json()
            assert history[0]["kind"] == "start" and history[-1]["kind"] == "run_completed"

            async def listed() -> bool:
                page = await http.get("/runs", params={"job": "echo-sec"})
                assert page.status_code == 200, page.text
                return "api1" in [r["run_id"] for r in page.json()["runs"]]

            await eventually(listed, what="the run in the index listing")
            await http.post("/runs", json={"job": "echo-sec", "input": 3, "id": "api2"})
            cancelled = await http.post("/runs/api2/cancel", json={})
            assert cancelled.status_code == 202, cancelled.text
            await eventually(lambda: _status_is(api, "api2", "cancelled"), what="the cancel")
        raw = await raw_log(locked, user="api", password="api-pw")
        try:
            with pytest.raises(JetlaneError):
                await raw._publish(NAMES.journal("api1"), b"{}", {h.KIND_HEADER: "run_failed"})
            for subject in api_subjects(f"$JS.API.STREAM.PURGE.{STREAM}"):
                with pytest.raises(JetlaneError):
                    await raw._publish(subject, b"{}", {})
        finally:
            await raw.close()


@pytest.mark.parametrize("role", ["publisher", "auditor", "api"])
async def test_no_role_but_the_runner_can_rewrite_the_runners_consumer(
    locked: Locked, runner: Runner, role: str
) -> None:
    async with client_as(locked, user="runner", password="runner-pw") as by_runner:
        before = await by_runner.log.js.consumer_info(STREAM, NAMES.consumer)
    nc = await connect_nats(locked.options(user=role, password=f"{role}-pw"))
    try:
        request = {
            "stream_name": STREAM,
            "config": {
                "name": NAMES.consumer,  # a name in the body, none in the subject
                "filter_subject": f"{PREFIX}.run.*.in",
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "max_deliver": -1,
                "ack_wait": 30_000_000_000,
                "max_ack_pending": 1,  # the whole pool: one delivery in flight
            },
        }
        for subject in api_subjects(f"$JS.API.CONSUMER.CREATE.{STREAM}"):
            with contextlib.suppress(Exception):  # refused, or no answer: both fine
                await nc.request(subject, msgspec.json.encode(request), timeout=2)
    finally:
        await nc.close()
    async with client_as(locked, user="runner", password="runner-pw") as by_runner:
        after = await by_runner.log.js.consumer_info(STREAM, NAMES.consumer)
    assert (after.config.max_ack_pending, after.config.ack_wait) == (
        before.config.max_ack_pending,
        before.config.ack_wait,
    )


async def _refused(nc: Any, subject: str, body: dict[str, Any]) -> bool:
    """Whether JetStream refused a request: no answer (a permission violation is never
    answered) or an error."""
    try:
        reply = await nc.request(subject, msgspec.json.encode(body), timeout=1.5)
    except Exception:  # nats-py's timeout: refused by a permission
        return True
    answer = msgspec.json.decode(reply.data) if reply.data else {}
    return "error" in answer or (reply.headers or {}).get("Status") is not None


@pytest.mark.parametrize("role", CLIENT_ROLES)
async def test_other_roles_tail_and_cannot_make_or_reach_any_consumer(
    locked: Locked, runner: Runner, role: str
) -> None:
    """Tails work for every role (by direct gets: account CLIENTS imports no consumer API);
    every consumer create, pull and delete is refused, under either API prefix."""
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        await publisher.log.publish_input("tailsec", h.Event(type="e"))
    async with client_as(locked, user=role, password=f"{role}-pw") as reader:
        tail = reader.log.tail(NAMES.run("tailsec"), 1)
        try:
            assert (await anext(tail)).run_id == "tailsec"
        finally:
            await tail.aclose()
    pull = {"ack_policy": "explicit", "filter_subject": f"{PREFIX}.run.*.in"}
    runners = {**pull, "name": NAMES.consumer, "max_ack_pending": 1}
    tail_cfg = {"name": "tail-x", "ack_policy": "none", "filter_subject": f"{PREFIX}.run.>"}
    consumer_api = "$JS.API.CONSUMER"
    attempts = [
        (f"{consumer_api}.CREATE.{STREAM}", runners),
        (f"{consumer_api}.CREATE.{STREAM}.{NAMES.consumer}.{PREFIX}.run.*.in", runners),
        (f"{consumer_api}.DURABLE.CREATE.{STREAM}.{NAMES.consumer}", runners),
        (f"{consumer_api}.CREATE.{STREAM}.tail-x.{PREFIX}.run.>", tail_cfg),
        (f"{consumer_api}.MSG.NEXT.{STREAM}.{NAMES.consumer}", {"batch": 1, "expires": 10**9}),
        (f"{consumer_api}.DELETE.{STREAM}.{NAMES.consumer}", {}),
        (f"{consumer_api}.INFO.{STREAM}.{NAMES.consumer}", {}),
    ]
    tried = [(subject, body) for plain, body in attempts for subject in api_subjects(plain)]
    nc = await connect_nats(locked.options(user=role, password=f"{role}-pw"))
    try:
        outcomes = await asyncio.gather(
            *(
                _refused(nc, subject, {"stream_name": STREAM, "config": body})
                for subject, body in tried
            )
        )
    finally:
        await nc.close()
    assert [
        subject for (subject, _), refused in zip(tried, outcomes, strict=True) if not refused
    ] == []
    async with client_as(locked, user="runner", password="runner-pw") as by_runner:
        info = await by_runner.log.js.consumer_info(STREAM, NAMES.consumer)
        names = [c.name for c in await by_runner.log.js.consumers_info(STREAM)]
    assert info.config.max_ack_pending != 1 and info.num_ack_pending == 0
    assert names == [NAMES.consumer]


@pytest.mark.parametrize("role", CLIENT_ROLES)
async def test_no_role_but_the_runner_can_create_a_push_consumer(
    locked: Locked, runner: Runner, role: str
) -> None:
    """A push consumer delivers in the stream's account, onto any subject there (nats-server
    checks no permission on its deliver_subject): the roles' account has no way to make one."""
    deliver = f"{PREFIX}.api.wake.echo-sec"
    async with client_as(locked, user="runner", password="runner-pw") as by_runner:
        heard = await by_runner.log.nc.subscribe(deliver)  # what a delivery would reach
        nc = await connect_nats(locked.options(user=role, password=f"{role}-pw"))
        try:
            config = {
                "name": "tail-push",
                "deliver_subject": deliver,
                "ack_policy": "none",
                "filter_subject": f"{PREFIX}.run.>",
            }
            body = {"stream_name": STREAM, "config": config}
            for plain in (
                f"$JS.API.CONSUMER.CREATE.{STREAM}.tail-push.{PREFIX}.run.>",
                f"$JS.API.CONSUMER.CREATE.{STREAM}.tail-push",
                f"$JS.API.CONSUMER.CREATE.{STREAM}",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.tail-push",
            ):
                for subject in api_subjects(plain):
                    assert await _refused(nc, subject, body), subject
        finally:
            await nc.close()
        names = [c.name for c in await by_runner.log.js.consumers_info(STREAM)]
        assert "tail-push" not in names
        with pytest.raises(TimeoutError):  # nats-py's timeout is one: nothing was delivered
            await heard.next_msg(timeout=0.5)


@pytest.mark.parametrize("role", CLIENT_ROLES)
async def test_no_role_but_the_runner_can_write_a_journal_through_a_reply_subject(
    locked: Locked, runner: Runner, role: str
) -> None:
    """A direct get's answer goes to the request's reply subject, which NATS checks against no
    permission: across the account boundary it is routed back into CLIENTS, never stored."""
    async with client_as(locked, user="publisher", password="publisher-pw") as publisher:
        bait = await publisher.log._publish(
            NAMES.inbox("bait"),
            msgspec.json.encode({"output": "forged"}),
            {h.KIND_HEADER: "run_completed"},
        )
    async with client_as(locked, user=role, password=f"{role}-pw") as client:
        victims = {"journal": NAMES.journal("victim"), "inbox": NAMES.inbox("victim-in")}
        for reply in victims.values():
            for subject in api_subjects(f"$JS.API.DIRECT.GET.{STREAM}"):
                await client.log.nc.publish(
                    subject, msgspec.json.encode({"seq": bait.seq}), reply=reply
                )
        # Known-good request after the attempts, on the same connection: they were processed.
        assert (await client.log.read_raw(NAMES.inbox("bait")).__anext__()).data
        await client.log.flush()
    async with client_as(locked, user="runner", password="runner-pw") as by_runner:
        # An answer stored as an entry would be there by now: the runner's read comes after
        # the server answered the request above on the same connection (in order).
        assert await by_runner.log.last_entry("victim") is None
        assert not await by_runner.log.exists("victim-in")
