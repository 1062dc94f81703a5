"""Search and duplicates over HTTP, on both engines: current versions and history, filters,
paging, attr= from stored bytes (never a sensitive value), scoping (an out-of-scope workspace
never appears, not even in a count), soft delete and restore, bad input, the index rebuild."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import ClientFactory

API = "/api/tofu"
ADMIN_SECRET = "test-admin-secret-search-0123456789"
AWS = 'provider["registry.terraform.io/hashicorp/aws"]'


def state(serial: int, resources: list[dict[str, Any]], lineage: str = "lin") -> bytes:
    return orjson.dumps(
        {"version": 4, "serial": serial, "lineage": lineage, "resources": resources}
    )


def bucket(name: str, ident: str, *, tags: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "mode": "managed",
        "type": "aws_s3_bucket",
        "name": name,
        "provider": AWS,
        "instances": [
            {
                "attributes": {
                    "id": ident,
                    "arn": f"arn:aws:s3:::{ident}",
                    "tags": tags or {},
                    "password": "hunter2",
                },
                "sensitive_attributes": [[{"type": "get_attr", "value": "password"}]],
            }
        ],
    }


def vpc(ident: str, module: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "mode": "managed",
        "type": "aws_vpc",
        "name": "main",
        "provider": AWS,
        "instances": [{"index_key": 0, "attributes": {"id": ident}}],
    }
    if module:
        resource["module"] = module
    return resource


def write(client: TestClient, ws: str, body: bytes, headers: dict[str, str]) -> None:
    response = client.post(f"{API}/state/{ws}", content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.fixture
def world(make_client: ClientFactory) -> tuple[TestClient, dict[str, dict[str, str]]]:
    """team-a-web (2 versions), team-a-db, team-b-web: keys for all, team-a-*, team-b-*."""
    client = make_client(admin_key=ADMIN_SECRET)
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    headers = {"admin": admin}
    for name, scopes in (("a", ["team-a-*"]), ("b", ["team-b-*"]), ("all", ["*"])):
        response = client.post(
            f"{API}/keys",
            json={"name": f"reader-{name}", "role": "reader", "workspaces": scopes},
            headers=admin,
        )
        assert response.status_code == 201, response.text
        headers[name] = {"Authorization": f"Bearer {response.json()['secret']}"}
    write(client, "team-a-web", state(1, [bucket("logs", "old-logs")]), admin)
    write(
        client,
        "team-a-web",
        state(2, [bucket("logs", "a-logs", tags={"Name": "web"}), vpc("vpc-shared")]),
        admin,
    )
    write(client, "team-a-db", state(1, [vpc("vpc-a-db", module='module.net["x"]')]), admin)
    write(
        client,
        "team-b-web",
        state(1, [bucket("logs", "b-logs", tags={"Name": "web"}), vpc("vpc-shared")]),
        admin,
    )
    return client, headers


def search(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get(f"{API}/search", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def found(client: TestClient, headers: dict[str, str], **params: Any) -> list[tuple[str, int, str]]:
    matches = search(client, headers, **params)["matches"]
    return [(m["workspace"], m["version"], m["address"]) for m in matches]


def test_search_current_versions_by_every_filter(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, keys = world
    everyone = keys["all"]
    assert found(client, everyone, type="aws_s3_bucket") == [
        ("team-a-web", 2, "aws_s3_bucket.logs"),
        ("team-b-web", 1, "aws_s3_bucket.logs"),
    ]
    assert found(client, everyone, id="old-logs") == []  # replaced by version 2
    assert found(client, everyone, id="arn:aws:s3:::a-logs") == [
        ("team-a-web", 2, "aws_s3_bucket.logs")
    ]
    assert found(client, everyone, module='module.net["x"]') == [
        ("team-a-db", 1, 'module.net["x"].aws_vpc.main[0]')
    ]
    assert found(client, everyone, address="module.*.aws_vpc.main[0]") == [
        ("team-a-db", 1, 'module.net["x"].aws_vpc.main[0]')
    ]
    assert found(client, everyone, address="aws_vpc.main[0]") == [
        ("team-a-web", 2, "aws_vpc.main[0]"),
        ("team-b-web", 1, "aws_vpc.main[0]"),
    ]
    assert len(found(client, everyone, provider="hashicorp/aws")) == 5
    assert found(client, everyone, name="main", module="") == [
        ("team-a-web", 2, "aws_vpc.main[0]"),
        ("team-b-web", 1, "aws_vpc.main[0]"),
    ]
    match = search(client, everyone, id="a-logs")["matches"][0]
    assert match["arn"] == "arn:aws:s3:::a-logs" and match["type"] == "aws_s3_bucket"
    assert match["provider"] == AWS and match["mode"] == "managed" and len(match["digest"]) == 16
    # attr= reads the stored state; a sensitive attribute never matches.
    assert found(client, everyone, type="aws_s3_bucket", attr="tags.Name=web") == [
        ("team-a-web", 2, "aws_s3_bucket.logs"),
        ("team-b-web", 1, "aws_s3_bucket.logs"),
    ]
    assert found(client, everyone, type="aws_s3_bucket", attr="password=hunter2") == []


def test_search_history_and_paging(world: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, keys = world
    assert found(client, keys["all"], type="aws_s3_bucket", history="true") == [
        ("team-a-web", 1, "aws_s3_bucket.logs"),
        ("team-a-web", 2, "aws_s3_bucket.logs"),
        ("team-b-web", 1, "aws_s3_bucket.logs"),
    ]
    assert found(client, keys["all"], id="old-logs", history="true") == [
        ("team-a-web", 1, "aws_s3_bucket.logs")
    ]
    for history in ("false", "true"):
        pages, after = [], None
        while True:
            params: dict[str, Any] = {"provider": "aws", "limit": 2, "history": history}
            if after:
                params["after"] = after
            page = search(client, keys["all"], **params)
            pages += [(m["workspace"], m["version"], m["address"]) for m in page["matches"]]
            after = page["next_after"]
            if after is None:
                break
        everything = found(client, keys["all"], provider="aws", history=history, limit=1000)
        assert pages == everything and len(set(pages)) == len(pages)
        assert len(everything) == (6 if history == "true" else 5)


def test_search_and_duplicates_are_scoped(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, keys = world
    for who, prefix in (("a", "team-a-"), ("b", "team-b-")):
        for params in (
            {"type": "aws_vpc"},
            {"provider": "aws", "history": "true"},
            {"id": "vpc-shared"},
            {"type": "aws_s3_bucket", "attr": "tags.Name=web"},
        ):
            matches = search(client, keys[who], **params)["matches"]
            assert matches and all(m["workspace"].startswith(prefix) for m in matches), params
        # Each team sees vpc-shared once: no duplicate, and no hint of the other team.
        response = client.get(f"{API}/search/duplicates", headers=keys[who])
        assert response.status_code == 200 and response.json() == {"duplicates": []}
        assert b"team-" + (b"b" if who == "a" else b"a") not in response.content
    everyone = client.get(f"{API}/search/duplicates", headers=keys["all"]).json()["duplicates"]
    assert [(d["kind"], d["value"], d["workspaces"]) for d in everyone] == [
        ("id", "vpc-shared", ["team-a-web", "team-b-web"])
    ]
    assert [i["address"] for i in everyone[0]["instances"]] == ["aws_vpc.main[0]"] * 2
    # No key, or a bad one: refused.
    assert client.get(f"{API}/search", params={"type": "x"}).status_code == 401
    assert client.get(f"{API}/search/duplicates").status_code == 401


def test_deleted_workspaces_drop_out_and_come_back(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, keys = world
    admin = keys["admin"]
    assert client.delete(f"{API}/workspaces/team-b-web", headers=admin).status_code == 200
    assert found(client, admin, id="vpc-shared") == [("team-a-web", 2, "aws_vpc.main[0]")]
    assert found(client, admin, id="vpc-shared", history="true") == [
        ("team-a-web", 2, "aws_vpc.main[0]")
    ]
    assert client.get(f"{API}/search/duplicates", headers=admin).json() == {"duplicates": []}
    restored = client.post(f"{API}/workspaces/team-b-web/restore", headers=admin)
    assert restored.status_code == 200
    assert found(client, admin, id="vpc-shared") == [
        ("team-a-web", 2, "aws_vpc.main[0]"),
        ("team-b-web", 1, "aws_vpc.main[0]"),
    ]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"history": "true"},
        {"attr": "tags.Name=web"},
        {"type": "x", "attr": "no-equals-sign"},
        {"type": "x", "attr": "=v"},
        {"type": "x", "attr": "a..b=v"},
        {"type": "x", "mode": "resource"},
        {"type": "x", "limit": 0},
        {"type": "x", "limit": 100_000},
        {"type": "x", "limit": "many"},
        {"type": "x", "after": "not-a-cursor"},
        {"type": "x", "history": "perhaps"},
        {"type": "x" * 2000},
    ],
)
def test_bad_search_input_is_400(
    world: tuple[TestClient, dict[str, dict[str, str]]], params: dict[str, Any]
) -> None:
    client, keys = world
    response = client.get(f"{API}/search", params=params, headers=keys["all"])
    assert response.status_code == 400, (params, response.text)
    assert response.json()["error"] == "invalid_request" and response.json()["message"]


def test_reindex_route_rebuilds_and_reports(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, keys = world
    assert client.post(f"{API}/admin/reindex", headers=keys["all"]).status_code == 403
    started = client.post(f"{API}/admin/reindex", headers=keys["admin"])
    assert started.status_code == 202 and started.json()["started"] is True
    status: dict[str, Any] = {}
    for _ in range(400):  # waits for a background task; asserts nothing about its duration
        status = client.get(f"{API}/admin/reindex", headers=keys["admin"]).json()
        if status["complete"] and not status["running"]:
            break
        time.sleep(0.05)
    # One document per workspace (its current version): 3 workspaces.
    assert status["complete"] and status["indexed"] == 3 and status["error"] is None
    assert len(found(client, keys["all"], provider="aws")) == 5
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined,union-attr]
    audit = client.get(f"{API}/audit", headers=keys["admin"]).json()["events"]
    assert any(e["detail"] == "resource index rebuild" for e in audit)


def test_search_routes_are_documented(make_client: ClientFactory) -> None:
    paths = make_client().get("/openapi.json").json()["paths"]
    for path in ("/search", "/search/duplicates", "/admin/reindex"):
        assert f"{API}{path}" in paths, path
