"""The OpenAPI document says what the server answers: every status a route gave is documented,
400 (never 422) for bad input, the workspace-name rule, and every method a 405 allows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from blixard.domain.errors import InvalidWorkspaceName
from blixard.domain.parsing import check_workspace_name
from tests.api.conftest import ClientFactory, tfstate

API = "/api/tofu"
ADMIN_SECRET = "openapi-admin-secret-0123456789"
SAMPLES = {
    "workspace": "w",
    "version": "1",
    "plan_id": "no-such-plan",
    "name": "nobody",
    "address": "terraform_data.a",
}


@pytest.fixture
def secured(make_client: ClientFactory) -> tuple[TestClient, dict[str, dict[str, str]]]:
    client = make_client(admin_key=ADMIN_SECRET)
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    reader = client.post(f"{API}/keys", json={"name": "r", "role": "reader"}, headers=admin)
    assert reader.status_code == 201
    assert client.post(f"{API}/state/w", content=tfstate(1), headers=admin).status_code == 200
    who = {
        "none": {},
        "reader": {"Authorization": f"Bearer {reader.json()['secret']}"},
        "admin": admin,
    }
    return client, who


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def fill(path: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], SAMPLES[m[1]]), path)


def test_no_422_and_the_error_schema(secured: tuple[TestClient, Any]) -> None:
    client, _ = secured
    schema = client.get("/openapi.json").json()
    for path, method, operation in operations(schema):
        assert "422" not in operation["responses"], (method, path)
        if path.startswith(f"{API}/"):
            for status in ("400", "401", "403", "503"):
                assert status in operation["responses"], (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"error", "message"}


def test_the_workspace_parameter_documents_the_name_rule(secured: tuple[TestClient, Any]) -> None:
    client, _ = secured
    schema = client.get("/openapi.json").json()
    patterns = {
        parameter["schema"]["pattern"]
        for _, _, operation in operations(schema)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "workspace" and parameter["in"] == "path"
    }
    assert len(patterns) == 1
    pattern = re.compile(patterns.pop())
    for name in ("default", "a", "team-a_b.c", "_x", "-x", "9" * 128, ".x", "a/b", "", "9" * 129):
        try:
            check_workspace_name(name)
            valid = True
        except InvalidWorkspaceName:
            valid = False
        assert bool(pattern.search(name)) == valid, name


def test_405_allows_exactly_the_documented_methods(secured: tuple[TestClient, Any]) -> None:
    client, who = secured
    schema = client.get("/openapi.json").json()
    for path, methods in schema["paths"].items():
        documented = {method.upper() for method in methods}
        assert "PATCH" not in documented
        response = client.request("PATCH", fill(path), headers=who["admin"])
        assert response.status_code == 405, path
        assert response.json()["error"] == "method_not_allowed"
        allowed = {method.strip() for method in response.headers["allow"].split(",")}
        assert allowed == documented, path


@pytest.mark.parametrize("caller", ["none", "reader", "admin"])
def test_every_status_a_route_answers_is_documented(
    secured: tuple[TestClient, Any], caller: str
) -> None:
    """Each documented operation, sent by each kind of caller with ordinary values, a
    malformed workspace name and malformed query numbers: whatever it answers is documented."""
    client, who = secured
    schema = client.get("/openapi.json").json()
    seen: set[int] = set()
    for path, method, operation in operations(schema):
        content = operation["responses"].get("200", {}).get("content", {})
        if "text/event-stream" in content and caller != "none":
            continue  # a live stream never ends; its refusals are checked by tests/ui
        body = b"{}" if "requestBody" in operation else None
        variants = [
            (fill(path), {}),
            (fill(path), {"limit": "x", "before": "\u0663", "version": str(2**63)}),
        ]
        if "{workspace}" in path:
            variants.append((fill(path, workspace=".hidden"), {}))
        for url, params in variants:
            response = client.request(method, url, params=params, content=body, headers=who[caller])
            documented = operation["responses"]
            assert str(response.status_code) in documented, (
                caller,
                method,
                url,
                params,
                response.status_code,
                response.text,
                sorted(documented),
            )
            seen.add(response.status_code)
    expected = {"none": {401}, "reader": {403}, "admin": {400, 404}}[caller]
    assert expected <= seen, seen
