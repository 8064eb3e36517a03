"""The HTTP API: every route and error against a real nats-server and in-process runners."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import hypothesis
import msgspec
import pytest
import schemathesis
import structlog
from schemathesis import GenerationMode
from starlette.routing import Route

from jetlane import Client, ConnectOptions, Context, Log, Names, RunStatus, define_job, step
from jetlane.api import OPEN_PATHS, api_server, create_app
from jetlane.embedded import free_port

from .helpers import StartRunner, eventually


class Name(msgspec.Struct):
    name: str


async def greet(ctx: Context, input: Name) -> str:
    return await step.do("greet", lambda: f"hi {input.name}")


async def approval(ctx: Context, input: Any) -> Any:
    return await step.wait_for_event("approval", type="approve", timeout="1h")


GREET = define_job(name="api-greet", handler=greet, register=False)
APPROVAL = define_job(name="api-approval", handler=approval, register=False)

Api = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    """HTTP clients of apps over the test's ``client`` (create_app's options as kwargs)."""
    opened: list[httpx.AsyncClient] = []

    async def make(**options: Any) -> httpx.AsyncClient:
        app = create_app(client, **options)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        opened.append(http)
        return http

    yield make
    for http in opened:
        await http.aclose()


@asynccontextmanager
async def served(app_client: Client, **options: Any) -> AsyncIterator[str]:
    """The API on a real uvicorn server on a free loopback port; yields its base URL."""
    port = free_port()
    server = api_server(app_client, "127.0.0.1", port, **options)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # surface a failed start
        return server.started

    try:
        await eventually(started, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"type", "message"} <= set(body["error"]), body
    result: dict[str, Any] = body["error"]
    return result


async def status_of(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await http.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_start_status_history_and_list(
    api: Api, client: Client, start_runner: StartRunner
) -> None:
    await start_runner([GREET])
    http = await api()
    response = await http.post(
        "/runs", json={"job": "api-greet", "input": {"name": "ada"}, "run_id": "g1"}
    )
    assert response.status_code == 201
    assert response.json() == {"run_id": "g1", "id": "g1", "status": "queued"}
    assert await client.result("g1", timeout=10) == "hi ada"

    status = await status_of(http, "g1")
    assert status["status"] == "completed" and status["output"] == "hi ada"
    assert status["run_id"] == "g1" and status["job"] == "api-greet" and status["error"] is None
    assert msgspec.convert(status, RunStatus).done

    response = await http.get("/runs/g1/history")
    assert response.status_code == 200
    entries = response.json()
    assert [e["kind"] for e in entries] == ["start", "step_completed", "run_completed"]
    assert entries == [m.to_json() async for m in client.history("g1")]

    anonymous = await http.post("/runs", json={"job": "api-greet", "input": {"name": "bo"}})
    assert anonymous.status_code == 201
    run_id = anonymous.json()["run_id"]
    assert anonymous.json()["id"] == run_id  # the old name, kept
    assert await client.result(run_id, timeout=10) == "hi bo"

    old_name = await http.post(
        "/runs", json={"job": "api-greet", "input": {"name": "cy"}, "id": "g2"}
    )
    assert old_name.status_code == 201 and old_name.json()["run_id"] == "g2"
    both = {"job": "api-greet", "input": {"name": "cy"}, "id": "g3", "run_id": "g4"}
    differ = await http.post("/runs", json=both)
    assert differ.status_code == 422 and differ.json()["error"]["field"] == "run_id"

    async def listed() -> bool:
        page = (await http.get("/runs", params={"job": "api-greet", "status": "completed"})).json()
        return {r["run_id"] for r in page["runs"]} == {"g1", run_id}

    await eventually(listed, what="both runs in the index")
    page = (await http.get("/runs", params={"job": "api-greet"})).json()
    assert [r["run_id"] for r in page["runs"]] == [run_id, "g1"]  # newest first
    assert page["next_cursor"] is None


async def test_jobs_lists_what_runners_serve_with_input_schemas(
    api: Api, start_runner: StartRunner
) -> None:
    http = await api()
    assert (await http.get("/jobs")).json() == {"jobs": []}
    await start_runner([GREET])
    [job] = (await http.get("/jobs")).json()["jobs"]
    assert job["name"] == "api-greet" and job["takes_input"] is True
    assert "name" in job["input_schema"]["$defs"]["Name"]["properties"]
    assert (await http.get("/jobs/api-greet")).json() == job
    typo = await http.get("/jobs/api-gret")
    assert typo.status_code == 404 and "did you mean 'api-greet'" in error(typo)["message"]


async def test_start_errors(api: Api, client: Client, start_runner: StartRunner) -> None:
    await start_runner([GREET])
    http = await api()
    ok = {"job": "api-greet", "input": {"name": "ada"}, "id": "dup"}
    assert (await http.post("/runs", json=ok)).status_code == 201
    response = await http.post("/runs", json=ok)
    assert response.status_code == 409 and error(response)["type"] == "RunAlreadyExists"

    response = await http.post("/runs", json={"job": "api-greet", "input": {"name": 3}})
    assert response.status_code == 422
    assert error(response) | {"message": ""} == {
        "type": "InputError",
        "message": "",
        "field": "input",
    }
    assert "str" in error(response)["message"]

    cases = [
        ({"job": "no spaces allowed"}, "job"),
        ({"job": 7}, "job"),
        ({"job": "api-greet", "id": "a.b"}, "id"),
        ({"job": "api-greet", "id": "x" * 129}, "id"),
        ({"job": "api-greet", "run_id": "a b"}, "run_id"),
        ({"input": 1}, "job"),
        ({"job": "api-greet", "idd": "typo"}, "idd"),
    ]
    for body, field in cases:
        response = await http.post("/runs", json=body)
        assert response.status_code == 422, (body, response.text)
        assert error(response)["field"] == field, (body, response.text)

    response = await http.post("/runs", content=b"{not json")
    assert response.status_code == 400 and error(response)["type"] == "MalformedJSON"
    response = await http.post("/runs", content=b"")
    assert response.status_code == 400

    response = await http.post("/runs", json={"job": "nobody-serves-this", "id": "orphan"})
    assert response.status_code == 404
    assert error(response) == {
        "type": "JobNotServed",
        "message": "no runner serves job 'nobody-serves-this'",
        "field": "job",
    }
    assert not await client.log.exists("orphan")  # refused before any run exists

    queueing = await api(queue_unserved=True)
    response = await queueing.post("/runs", json={"job": "nobody-serves-this", "id": "orphan"})
    assert response.status_code == 201 and response.json()["status"] == "queued"
    status = await status_of(queueing, "orphan")
    assert status["status"] == "queued" and "no runner serves" in status["detail"]


async def test_events_cancel_and_unknown_runs(
    api: Api, client: Client, start_runner: StartRunner
) -> None:
    await start_runner([APPROVAL])
    http = await api()
    for run_id in ("a1", "a2"):
        response = await http.post("/runs", json={"job": "api-approval", "id": run_id})
        assert response.status_code == 201

    async def waiting() -> bool:
        statuses = [await status_of(http, r) for r in ("a1", "a2")]
        return all(s["status"] == "waiting" for s in statuses)

    await eventually(waiting, what="both runs to wait")
    status = await status_of(http, "a1")
    assert status["waiting_for"] == "approve" and status["until"] and status["step"] == "approval"

    event = {"run_id": "a1", "type": "approve", "payload": {"by": "ops"}, "event_id": "e-1"}
    response = await http.post("/runs/events", json=event)
    accepted = {"run_id": "a1", "type": "approve", "after_end": False}
    assert response.status_code == 202 and response.json() == accepted
    assert await client.result("a1", timeout=10) == {"by": "ops"}

    response = await http.post("/runs/a2/pause", json={"reason": "freeze"})
    assert response.status_code == 202 and response.json() == {"run_id": "a2", "paused": True}
    assert (await status_of(http, "a2"))["paused"] is True
    response = await http.post("/runs/a2/resume")
    assert response.status_code == 202 and response.json() == {"run_id": "a2", "paused": False}
    assert (await status_of(http, "a2"))["paused"] is False
    response = await http.post("/runs/a2/cancel", json={"reason": "not needed"})
    assert response.status_code == 202 and response.json() == {"run_id": "a2", "cancelled": True}
    await eventually(lambda: _has_status(http, "a2", "cancelled"), what="the cancel to land")
    assert (await status_of(http, "a2"))["error"]["message"] == "not needed"
    response = await http.post("/runs/a2/cancel")  # no body: the reason is optional
    assert response.status_code == 409 and error(response)["type"] == "RunEnded"
    for control in ("pause", "resume"):
        response = await http.post(f"/runs/a2/{control}")
        assert response.status_code == 409 and error(response)["type"] == "RunEnded"

    missing = {"run_id": "ghost", "type": "approve"}
    assert (await http.post("/runs/events", json=missing)).status_code == 404
    for method, path in [
        ("GET", "/runs/ghost"),
        ("GET", "/runs/ghost/history"),
        ("POST", "/runs/ghost/cancel"),
        ("POST", "/runs/ghost/pause"),
        ("POST", "/runs/ghost/resume"),
    ]:
        response = await http.request(method, path)
        assert response.status_code == 404 and error(response)["type"] == "RunNotFound"
    response = await http.get("/runs/ghost/history", headers={"Accept": "text/event-stream"})
    assert response.status_code == 404 and error(response)["type"] == "RunNotFound"

    for bad in [
        {"run_id": "a.1", "type": "approve"},
        {"run_id": "a1", "type": ""},
        {"run_id": "a1", "type": "approve", "event_id": "line\r\nbreak"},
        {"run_id": "a1"},
    ]:
        response = await http.post("/runs/events", json=bad)
        assert response.status_code == 422, (bad, response.text)
    response = await http.get("/runs/bad.id")
    assert response.status_code == 422 and error(response)["field"] == "run_id"


async def test_ended_runs_refuse_events_unless_forced_and_pauses_say_who(
    api: Api, client: Client, start_runner: StartRunner
) -> None:
    await start_runner([APPROVAL])
    http = await api()
    for run_id in ("e1", "e2"):
        assert (await http.post("/runs", json={"job": "api-approval", "id": run_id})).status_code
    await eventually(lambda: _has_status(http, "e1", "waiting"), what="e1 to wait")
    await eventually(lambda: _has_status(http, "e2", "waiting"), what="e2 to wait")
    assert (await http.post("/runs/events", json={"run_id": "e1", "type": "approve"})).is_success
    assert await client.result("e1", timeout=10) is None

    late = {"run_id": "e1", "type": "approve", "payload": "late"}
    response = await http.post("/runs/events", json=late)
    assert response.status_code == 409 and error(response)["type"] == "RunEnded"
    assert "has already ended (completed)" in error(response)["message"]
    kinds = [m["kind"] for m in (await http.get("/runs/e1/history")).json()]
    assert kinds[-1] == "run_completed"  # refused: nothing stored
    response = await http.post("/runs/events", json={**late, "force": True})
    assert response.status_code == 202 and response.json()["after_end"] is True
    history = (await http.get("/runs/e1/history")).json()
    assert [m["kind"] for m in history[-2:]] == ["run_completed", "event"]
    assert history[-1]["body"]["payload"] == "late"
    status = await status_of(http, "e1")
    assert status["status"] == "completed" and status["events_after_end"] == 1

    response = await http.post("/runs/e2/pause", json={"reason": "freeze", "by": "ada"})
    assert response.status_code == 202
    status = await status_of(http, "e2")
    assert status["paused"] and status["paused_by"] == "ada"
    assert status["paused_reason"] == "freeze" and status["paused_at"]

    async def listed_paused() -> bool:
        page = (await http.get("/runs", params={"status": "paused"})).json()
        return [r["run_id"] for r in page["runs"]] == ["e2"]

    await eventually(listed_paused, what="the paused run in the index")
    response = await http.get("/runs", params={"status": "sleepy"})
    assert response.status_code == 422 and error(response)["field"] == "status"
    assert "did you mean 'sleeping'" in error(response)["message"]
    assert "paused" in error(response)["message"]


async def _has_status(http: httpx.AsyncClient, run_id: str, status: str) -> bool:
    current: str = (await status_of(http, run_id))["status"]
    return current == status


async def test_list_pages_and_query_errors(api: Api, client: Client) -> None:
    http = await api(queue_unserved=True)
    for i in range(5):
        response = await http.post("/runs", json={"job": "listed", "id": f"l{i}"})
        assert response.status_code == 201
    # Nothing serves "listed", so no runner writes its index: rebuild it from the histories.
    assert await client.rebuild_index() == 5

    async def indexed() -> bool:  # index writes are not awaited: wait until all have landed
        page = (await http.get("/runs", params={"job": "listed"})).json()
        return len(page["runs"]) == 5

    await eventually(indexed, what="the rebuilt index")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/runs", params=params)).json()
        assert len(page["runs"]) <= 2
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"l{i}" for i in reversed(range(5))]
    queued = (await http.get("/runs", params={"status": "queued", "job": "listed"})).json()
    assert len(queued["runs"]) == 5
    assert (await http.get("/runs", params={"status": "failed"})).json()["runs"] == []

    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "sleepy"}, "status"),
        ({"job": "a b"}, "job"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
    ]:
        response = await http.get("/runs", params=params)
        assert response.status_code == 422, (params, response.text)
        assert error(response)["field"] == field


async def test_bearer_token(api: Api, client: Client) -> None:
    http = await api(token="s3cret", queue_unserved=True)
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}]:
        response = await http.get("/runs", headers=headers)
        assert response.status_code == 401, headers
        assert error(response)["type"] == "Unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    response = await http.post("/runs", json={"job": "j", "id": "t1"})
    assert response.status_code == 401
    assert not await client.log.exists("t1")  # refused before the client was called
    non_ascii = await http.get("/runs", headers={b"Authorization": "Bearer \u00e9".encode()})
    assert non_ascii.status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert (await http.get("/runs", headers=good)).status_code == 200
    assert (await http.get("/runs", headers={"Authorization": "bearer s3cret"})).status_code == 200
    for path in sorted(OPEN_PATHS):
        assert (await http.get(path)).status_code == 200, path
    doc = (await http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}


async def test_body_limit(api: Api, client: Client) -> None:
    http = await api(max_body=1024, queue_unserved=True)
    big = {"job": "j", "input": "x" * 2000}
    response = await http.post("/runs", json=big)
    assert response.status_code == 413 and error(response)["type"] == "PayloadTooLarge"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"job": "j", "input": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}'

    response = await http.post("/runs", content=chunks())
    assert response.status_code == 413
    event = {"run_id": "r", "type": "t", "payload": "z" * 2000}
    assert (await http.post("/runs/events", json=event)).status_code == 413
    assert (await http.post("/runs", json={"job": "j", "input": "small"})).status_code == 201

    # The client's own payload limit (smaller than the HTTP one here) is a 413 too.
    client.max_payload = 64
    wide = await api(queue_unserved=True)
    response = await wide.post("/runs", json={"job": "j", "input": "w" * 100})
    assert response.status_code == 413 and error(response)["field"] == "input"


async def test_routing_errors_are_json(api: Api) -> None:
    http = await api()
    response = await http.get("/nowhere")
    assert response.status_code == 404 and error(response)["type"] == "NotFound"
    response = await http.delete("/runs")
    assert response.status_code == 405 and error(response)["type"] == "MethodNotAllowed"
    assert "GET" in response.headers["allow"]


class _Broken(Client):
    async def status(self, run_id: str) -> RunStatus:
        raise RuntimeError("secret internal detail")


async def test_internal_errors_hide_details(log: Log) -> None:
    app = create_app(_Broken(log))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.get("/runs/r1")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"type": "InternalError", "message": "internal error (logged by the server)"}
    }
    assert "secret" not in response.text and "Traceback" not in response.text
    assert [entry["event"] for entry in logs] == ["unhandled error"]


async def test_health_and_readiness(options: ConnectOptions, names: Names) -> None:
    own = await Log.open(options, names)
    app = create_app(Client(own))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).json() == {"status": "ready"}
        await own.close()
        response = await c.get("/readyz")
        assert response.status_code == 503 and error(response)["type"] == "NotReady"
        assert (await c.get("/healthz")).status_code == 200
        response = await c.get("/runs/r1")  # NATS is gone: a clear 503, not a 500
        assert response.status_code == 503 and error(response)["type"] == "Unavailable"


async def test_openapi_describes_every_route(api: Api, client: Client) -> None:
    doc = (await (await api()).get("/openapi.json")).json()
    app = create_app(client)
    assert "securitySchemes" not in doc["components"]
    routes = {
        (r.path, m.lower()) for r in app.routes if isinstance(r, Route) for m in r.methods or ()
    }
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert {(p, m) for p, m in routes if m != "head"} == documented
    assert doc["openapi"].startswith("3.1")
    for ops in doc["paths"].values():
        for op in ops.values():
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}


async def _sse(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE frames of ``response``, as dicts of their fields (comments skipped)."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")


async def test_history_follows_live_over_sse(client: Client, start_runner: StartRunner) -> None:
    await start_runner([APPROVAL])
    await client.start("api-approval", run_id="live")
    async with served(client) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        kinds: list[str] = []
        headers = {"Accept": "text/event-stream"}
        async with http.stream("GET", "/runs/live/history", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for frame in _sse(response):
                entry = json.loads(frame["data"])
                assert frame["event"] == entry["kind"] and frame["id"] == str(entry["seq"])
                kinds.append(entry["kind"])
                if entry["kind"] == "wait_started":
                    # The run is parked and the stream is open: what follows is live.
                    sent = await http.post(
                        "/runs/events", json={"run_id": "live", "type": "approve", "payload": 1}
                    )
                    assert sent.status_code == 202
        # The stream ended by itself after the terminal entry.
        assert kinds[0] == "start" and kinds[-1] == "run_completed"
        assert kinds.index("wait_started") < kinds.index("event") < kinds.index("event_received")
        history = [m async for m in client.history("live")]
        assert kinds == [m.kind for m in history]

        # Resuming after an id replays only what came later, then ends (the run is over).
        resume = {**headers, "Last-Event-ID": str(history[-3].seq)}
        async with http.stream("GET", "/runs/live/history", headers=resume) as response:
            later = [json.loads(f["data"])["seq"] async for f in _sse(response)]
        assert later == [m.seq for m in history[-2:]]


async def test_schemathesis_finds_no_server_errors(
    client: Client, start_runner: StartRunner
) -> None:
    """Fuzz every operation of the published document over real HTTP: no response is a 5xx."""
    await start_runner([GREET, APPROVAL])
    await client.start("api-approval", run_id="fuzzed")  # a live run for ids the fuzzer may hit
    token = "fuzz-token"
    # Queueing unserved jobs lets random job names through to real starts (201).
    async with (
        served(client, token=token, queue_unserved=True) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        doc = (await http.get("/openapi.json")).json()
        # The fuzzer is synchronous (requests + hypothesis): it runs in a thread while
        # this loop serves it.
        auth = {"Authorization": f"Bearer {token}"}
        failures, seen = await asyncio.to_thread(_fuzz, doc, url, auth)
    assert failures == [], "\n".join(failures)
    # The fuzzer reached the handlers, not only the validation in front of them.
    assert {200, 201, 202, 404, 422} <= seen, seen


def _fuzz(doc: dict[str, Any], url: str, auth: dict[str, str]) -> tuple[list[str], set[int]]:
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    seen: set[int] = set()
    strategies = [
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        # Random ids almost never name a run: also aim every {id} at the live one.
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters={"run_id": "fuzzed"}),
    ]
    for strategy in strategies:

        @hypothesis.settings(
            max_examples=100,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, headers=auth, timeout=10)
            seen.add(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{response.status_code}: {case.as_curl_command()}")

        check()
    return failures, seen
