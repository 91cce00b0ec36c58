"""The OpenAPI document is a true description of the client API: every `/api/v1` JSON endpoint has a
response model and declares its error answers with the error envelope, and real answers (success and
error, made with the official clients' headers) validate against the schemas the document gives.
Nothing here touches the internet: the Swagger UI page loads its assets from this server."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx
import jsonschema
from fastapi.routing import APIRoute

from coordinator.runtime import Runtime
from coordinator.web.app import create_app
from coordinator.web.auth import require_admin, require_read, require_write
from tests.client_contract import cli_headers, py_headers, ts_headers
from tests.factories import make_consumer, seed_cargos
from tests.job_support import make_island

# Answers that are not JSON, exempt from the JSON checks (each stays documented with its media type):
EXEMPT = {
    # Server-Sent Events (client-api §7): `text/event-stream`, errors before the stream are envelopes.
    ("GET", "/api/v1/jobs/{job_id}/stream"),
}
ENVELOPE = "#/components/schemas/ErrorEnvelope"
AUTH_DEPENDENCIES = {require_read, require_write, require_admin}
PAID = {("POST", "/api/v1/jobs"), ("POST", "/api/v1/jobs/batch"), ("POST", "/api/v1/chat/completions")}


def _flat(routes: list[Any]) -> list[Any]:
    """The app's routes, including those of included routers (FastAPI ≥ 0.16x keeps them nested; our
    routers have no prefix)."""
    out = []
    for route in routes:
        nested = getattr(route, "original_router", None)
        out.extend(_flat(list(nested.routes)) if nested is not None else [route])
    return out


def api_routes(runtime: Runtime) -> list[tuple[str, APIRoute]]:
    app = create_app(runtime)
    routes = []
    for route in _flat(list(app.routes)):
        if isinstance(route, APIRoute) and route.path.startswith("/api/v1/") and route.include_in_schema:
            for method in sorted(route.methods):
                routes.append((method, route))
    return routes


def test_every_api_route_is_reached_by_its_own_paths(runtime: Runtime) -> None:
    """Routers are ordered hot paths first (`web/app.py`): no route may shadow a later one. Each route's
    path with an id in every parameter is matched, in the app's order, by that route first."""
    from starlette.routing import Match

    flat = [r for r in _flat(list(create_app(runtime).routes)) if isinstance(r, APIRoute)]
    shadowed = []
    for method, route in api_routes(runtime):
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000001", route.path)
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}}
        first = next(r for r in flat if r.matches(scope)[0] == Match.FULL)
        if (first.path, first.methods) != (route.path, route.methods):
            shadowed.append(f"{method} {route.path} is taken by {first.path}")
    assert shadowed == []


def _dependencies(route: APIRoute) -> set[Any]:
    calls, todo = set(), list(route.dependant.dependencies)
    while todo:
        dep = todo.pop()
        calls.add(dep.call)
        todo.extend(dep.dependencies)
    return calls


def test_every_api_endpoint_declares_a_response_model_and_its_errors_as_envelopes(runtime: Runtime) -> None:
    app = create_app(runtime)
    document = app.openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    problems: list[str] = []
    routes = api_routes(runtime)
    assert len(routes) > 30
    for method, route in routes:
        key = (method, route.path)
        operation = document["paths"][route.path][method.lower()]
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        if key not in EXEMPT:
            if route.response_model is None:
                problems.append(f"{method} {route.path}: no response_model")
            for code in success:
                schema = responses[code].get("content", {}).get("application/json", {}).get("schema")
                if not schema:
                    problems.append(f"{method} {route.path}: {code} has no JSON schema")
        for code, answer in responses.items():
            if code[0] in "45":
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref") != ENVELOPE:
                    problems.append(f"{method} {route.path}: {code} is not the error envelope")
        expected = set()
        if _dependencies(route) & AUTH_DEPENDENCIES:
            expected |= {"401", "403", "429"}
        if "{" in route.path:
            expected |= {"404"}
        if route.dependant.path_params or route.dependant.query_params or route.dependant.body_params:
            expected |= {"422"}
        if key in PAID:
            expected |= {"402"}
        if missing := expected - set(responses):
            problems.append(f"{method} {route.path}: undeclared {sorted(missing)}")
    assert problems == [], "\n".join(problems)


def _validator(document: dict[str, Any], path: str, method: str, status: int) -> jsonschema.Validator:
    answer = document["paths"][path][method]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


async def test_real_answers_validate_against_the_document(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    poor = await make_consumer(runtime, "poor@example.com", credits=Decimal(0))
    chat = {"workload": "llm-chat", "input": {"prompt": "x"}}
    document = (await http.get("/api/v1/openapi.json")).json()
    job = (await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=chat)).json()["data"]
    key = (await http.post("/api/v1/api-keys", headers=ts_headers(consumer.key), json={"name": "k"})).json()
    calls: list[tuple[str, str, str, dict[str, str], Any, int]] = [
        ("get", "/api/v1/account", "/api/v1/account", py_headers(consumer.key), None, 200),
        ("get", "/api/v1/jobs", "/api/v1/jobs?limit=20&offset=0", cli_headers(consumer.key), None, 200),
        ("get", "/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job['id']}", py_headers(consumer.key), None, 200),
        ("get", "/api/v1/jobs/{job_id}", "/api/v1/jobs/nope", py_headers(consumer.key), None, 404),
        ("get", "/api/v1/workloads", "/api/v1/workloads", py_headers(consumer.key), None, 200),
        (
            "get",
            "/api/v1/workloads/{slug}",
            "/api/v1/workloads/llm-chat",
            cli_headers(consumer.key),
            None,
            200,
        ),
        ("get", "/api/v1/api-keys", "/api/v1/api-keys", cli_headers(consumer.key), None, 200),
        ("get", "/api/v1/hosts", "/api/v1/hosts", cli_headers(consumer.key), None, 200),
        ("get", "/api/v1/market/rates", "/api/v1/market/rates", cli_headers(consumer.key), None, 200),
        ("get", "/api/v1/market/rates/{slug}", "/api/v1/market/rates/llm-chat", {}, None, 200),
        ("get", "/api/v1/models", "/api/v1/models", cli_headers(consumer.key), None, 200),
        ("get", "/api/v1/models", "/api/v1/models", cli_headers("ak_wrong"), None, 401),
        ("get", "/api/v1/network/stats", "/api/v1/network/stats", {}, None, 200),
        ("post", "/api/v1/jobs", "/api/v1/jobs", py_headers(consumer.key), {"workload": "llm-chat"}, 422),
        (
            "post",
            "/api/v1/jobs",
            "/api/v1/jobs",
            py_headers(poor.key),
            chat,
            402,
        ),
        ("delete", "/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job['id']}", py_headers(consumer.key), None, 200),
        (
            "delete",
            "/api/v1/api-keys/{key_id}",
            f"/api/v1/api-keys/{key['data']['id']}",
            ts_headers(consumer.key),
            None,
            200,
        ),
    ]
    assert _validator(document, "/api/v1/api-keys", "post", 201).is_valid(key)
    for method, template, url, headers, body, status in calls:
        response = await http.request(method.upper(), url, headers=headers, json=body)
        assert response.status_code == status, (url, response.text)
        errors = list(_validator(document, template, method, status).iter_errors(response.json()))
        assert errors == [], (url, [e.message for e in errors])


async def test_the_docs_page_loads_everything_from_this_server(http: httpx.AsyncClient) -> None:
    page = await http.get("/api/v1/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        response = await http.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 100
    assert "/api/v1/openapi.json" in page.text
