"""The explorer routes in-process on every engine: roles, scopes, reveal and its audit, bad
input, paging and version selection. Sensitive-value checks use states written by real
Terraform (the embedded 1.15 and, when on PATH, a terraform binary) with a local backend."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import ClientFactory, snapshot, tfstate
from tests.explorer.tfconfig import CONFIG_V1, SECRET, V1_ADDRESSES, write_config

API = "/api/tofu"
ADMIN = "explorer-admin-secret-0123456789"
WS = "team-x"


def _flavours() -> list[str]:
    return ["embedded"] + (["binary"] if shutil.which("terraform") else [])


@pytest.fixture(scope="session")
def real_states(
    tmp_path_factory: pytest.TempPathFactory, tf_env: dict[str, str]
) -> dict[str, bytes]:
    """CONFIG_V1 applied with a local backend by each Terraform available: flavour -> state."""
    states = {}
    for flavour in _flavours():
        workdir = tmp_path_factory.mktemp(f"tf-{flavour}")
        write_config(workdir, CONFIG_V1)
        command = "terraform" if flavour == "embedded" else str(shutil.which("terraform"))
        for args in (["init"], ["apply", "-auto-approve"]):
            done = subprocess.run(
                [command, *args],
                cwd=workdir,
                env=tf_env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        states[flavour] = (workdir / "terraform.tfstate").read_bytes()
    return states


Secured = tuple[TestClient, Callable[[str], dict[str, str]]]


@pytest.fixture
def secured(make_client: ClientFactory) -> Secured:
    """A server requiring keys: admin (bootstrap), reader, writer, operator, and `other`
    (an operator scoped to other-*)."""
    client = make_client(admin_key=ADMIN)
    secrets = {"admin": ADMIN}
    for name, role, scopes in (
        ("reader", "reader", ["*"]),
        ("writer", "writer", ["*"]),
        ("operator", "operator", ["*"]),
        ("other", "operator", ["other-*"]),
    ):
        created = client.post(
            f"{API}/keys",
            json={"name": name, "role": role, "workspaces": scopes},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert created.status_code == 201, created.text
        secrets[name] = created.json()["secret"]

    def headers(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secrets[who]}"}

    return client, headers


def audit_events(client: TestClient, action: str, expected: int) -> list[dict[str, Any]]:
    """The audit events of `action`, once `expected` are there (refusals are written in
    batches, off the request path)."""
    deadline = time.monotonic() + 10
    while True:
        page = client.get(
            f"{API}/audit", params={"action": action}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert page.status_code == 200, page.text
        events: list[dict[str, Any]] = page.json()["events"]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.mark.parametrize("flavour", _flavours())
def test_sensitive_values_are_revealed_only_to_operators_and_every_reveal_is_audited(
    secured: Secured, real_states: dict[str, bytes], flavour: str
) -> None:
    client, headers = secured
    body = real_states[flavour]
    assert SECRET.encode() in body, "control: the stored state holds the secret"
    assert (
        client.post(f"{API}/state/{WS}", content=body, headers=headers("writer")).status_code == 200
    )

    for who in ("reader", "writer"):
        refused = client.get(f"{API}/outputs/{WS}", params={"reveal": "true"}, headers=headers(who))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "forbidden"
        assert SECRET not in refused.text
        masked = client.get(f"{API}/outputs/{WS}", headers=headers(who))
        assert masked.status_code == 200
        outputs = {o["name"]: o for o in masked.json()["outputs"]}
        assert outputs["secret"]["value"] == "(sensitive)" and outputs["secret"]["sensitive"]
        assert masked.json()["revealed"] is False
    for who in ("operator", "admin"):
        shown = client.get(f"{API}/outputs/{WS}", params={"reveal": "true"}, headers=headers(who))
        assert shown.status_code == 200, shown.text
        outputs = {o["name"]: o for o in shown.json()["outputs"]}
        assert outputs["secret"]["value"] == SECRET and shown.json()["revealed"] is True

    reveals = audit_events(client, "sensitive.reveal", 4)
    granted = sorted((e["key"], e["outcome"]) for e in reveals if e["outcome"] == "ok")
    assert granted == [("admin", "ok"), ("operator", "ok")]
    assert all(e["workspace"] == WS and e["version"] == 1 for e in reveals if e["outcome"] == "ok")
    assert all(e["detail"] == "outputs revealed: secret" for e in reveals if e["outcome"] == "ok")
    denied = sorted(e["key"] for e in reveals if e["outcome"] == "denied")
    assert denied == ["reader", "writer"]
    assert all(SECRET not in orjson.dumps(e).decode() for e in reveals)

    # Everything a reader can read about this state, none of it unmasked.
    answers = []
    listed = client.get(f"{API}/resources/{WS}", headers=headers("reader")).json()
    assert {r["address"] for r in listed["resources"]} == V1_ADDRESSES
    for item in listed["resources"]:
        detail = client.get(f"{API}/resources/{WS}/{item['address']}", headers=headers("reader"))
        assert detail.status_code == 200, detail.text
        answers.append(detail.text)
        answers.append(
            client.get(
                f"{API}/resources/{WS}/{item['address']}/history", headers=headers("reader")
            ).text
        )
    answers.append(client.get(f"{API}/diff/{WS}", headers=headers("reader")).text)
    assert all(SECRET not in answer for answer in answers)
    holder = client.get(
        f"{API}/resources/{WS}/terraform_data.secret_holder", headers=headers("reader")
    ).json()
    assert holder["resource"]["attributes"]["triggers_replace"] == "(sensitive)"
    assert holder["resource"]["sensitive_attributes"] == ["triggers_replace"]


EXPLORER_ROUTES = [
    "/resources/{ws}",
    "/resources/{ws}/terraform_data.r0",
    "/resources/{ws}/terraform_data.r0/history",
    "/outputs/{ws}",
    "/diff/{ws}",
]


def test_out_of_scope_workspaces_answer_like_missing_ones(secured: Secured) -> None:
    client, headers = secured
    for ws in (WS, "other-1"):
        assert (
            client.post(
                f"{API}/state/{ws}", content=tfstate(1), headers=headers("admin")
            ).status_code
            == 200
        )
    for route in EXPLORER_ROUTES:
        hidden = client.get(API + route.format(ws=WS), headers=headers("other"))
        missing = client.get(API + route.format(ws="other-missing"), headers=headers("other"))
        assert hidden.status_code == missing.status_code == 404, (route, hidden.text)
        assert hidden.json()["error"] == missing.json()["error"] == "not_found"
        assert WS not in hidden.text.replace(f"'{WS}'", "")
        assert client.get(API + route.format(ws=WS)).status_code == 401
        assert client.get(API + route.format(ws=WS), headers=headers("reader")).status_code == 200
    assert client.get(f"{API}/resources/other-1", headers=headers("other")).status_code == 200
    across = client.get(
        f"{API}/diff/other-1", params={"from_workspace": WS}, headers=headers("other")
    )
    assert across.status_code == 404, across.text
    reveal = client.get(f"{API}/outputs/{WS}", params={"reveal": "true"}, headers=headers("other"))
    assert reveal.status_code == 404


def test_bad_input_is_refused_with_json_and_changes_nothing(make_client: ClientFactory) -> None:
    client = make_client()
    for serial in (1, 2):
        assert (
            client.post(f"{API}/state/ws", content=tfstate(serial, salt=str(serial))).status_code
            == 200
        )
    before = snapshot(client, "ws")
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/resources/ws", {"version": "0"}, 400),
        ("/resources/ws", {"version": "-1"}, 400),
        ("/resources/ws", {"version": "abc"}, 400),
        ("/resources/ws", {"version": str(10**30)}, 400),
        ("/resources/ws", {"version": "3"}, 404),
        ("/resources/ws", {"version": "1", "as_of": "2026-01-01T00:00:00Z"}, 400),
        ("/resources/ws", {"as_of": "yesterday"}, 400),
        ("/resources/ws", {"as_of": "2026-12-05T18:00:00"}, 400),
        ("/resources/ws", {"as_of": "2000-01-01T00:00:00Z"}, 404),
        ("/resources/ws", {"as_of": "x" * 5000}, 400),
        ("/resources/ws", {"mode": "weird"}, 400),
        ("/resources/ws", {"limit": "0"}, 400),
        ("/resources/ws", {"limit": "100000"}, 400),
        ("/resources/missing", {}, 404),
        ("/resources/.hidden", {}, 400),
        ("/resources/ws/terraform_data.nope", {}, 404),
        ("/resources/ws/" + "a" * 5000, {}, 400),
        ("/resources/ws/bad%01address", {}, 400),
        ("/resources/ws/terraform_data.r0/history", {"before": "0"}, 400),
        ("/resources/ws/terraform_data.r0/history", {"limit": "501"}, 400),
        ("/resources/ws/terraform_data.r0/history", {"before": str(10**30)}, 400),
        ("/resources/ws/terraform_data.nope/history", {}, 200),  # it never existed: no events
        ("/outputs/ws", {"reveal": "maybe"}, 400),
        ("/outputs/ws", {"version": "99"}, 404),
        ("/diff/ws", {"from": "99"}, 404),
        ("/diff/ws", {"to": str(2**64)}, 400),
        ("/diff/ws", {"from_as_of": "2026-99-01T00:00:00Z"}, 400),
        ("/diff/ws", {"from_workspace": "missing"}, 404),
        ("/diff/ws", {"from_workspace": "bad/name"}, 400),
        ("/state/ws", {"as_of": "soon"}, 400),
        ("/state/ws", {"as_of": "2000-01-01T00:00:00Z"}, 404),
        ("/state/ws", {"as_of": "0001-01-01T00:00:00-23:59"}, 404),
        ("/state/ws", {"as_of": "9999-12-31T23:59:59.999999999+23:59"}, 200),
        ("/state/ws", {"as_of": "2026-01-01T00:00:00Z", "version": "1"}, 400),
    ]
    for path, params, status in cases:
        answer = client.get(API + path, params=params)
        assert answer.status_code == status, (path, params, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/json", (path, params)
        body = answer.json()
        if status >= 400:
            assert body["error"] and body["message"], (path, params, body)
    assert snapshot(client, "ws") == before


def test_paging_versions_and_comparisons(make_client: ClientFactory) -> None:
    client = make_client()
    assert client.post(f"{API}/state/ws", content=tfstate(1, resources=5)).status_code == 200
    first = client.get(f"{API}/diff/ws").json()
    assert first["from"] is None and first["to"]["version"] == 1
    assert first["summary"] == {"added": 5, "removed": 0, "changed": 0, "moved": 0, "unchanged": 0}

    assert (
        client.post(f"{API}/state/ws", content=tfstate(2, resources=3, salt="x")).status_code == 200
    )
    seen: list[str] = []
    after = None
    while True:
        page = client.get(
            f"{API}/resources/ws", params={"version": 1, "limit": 2, "after": after}
        ).json()
        assert len(page["resources"]) <= 2
        seen.extend(r["address"] for r in page["resources"])
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"terraform_data.r{i}" for i in range(5)]
    current = client.get(f"{API}/resources/ws").json()
    assert current["version"]["version"] == 2 and len(current["resources"]) == 3

    diff = client.get(f"{API}/diff/ws").json()
    assert (diff["from"]["version"], diff["to"]["version"]) == (1, 2)
    assert diff["summary"] == {"added": 0, "removed": 2, "changed": 3, "moved": 0, "unchanged": 0}
    backwards = client.get(f"{API}/diff/ws", params={"from": 2, "to": 1}).json()
    assert backwards["summary"]["added"] == 2

    assert (
        client.post(
            f"{API}/state/copy", content=tfstate(7, lineage="other", resources=5)
        ).status_code
        == 200
    )
    across = client.get(f"{API}/diff/ws", params={"from_workspace": "copy", "to": 1}).json()
    assert across["from"]["workspace"] == "copy" and across["to"]["workspace"] == "ws"
    assert across["summary"]["unchanged"] == 5 and across["resources"] == []
    assert across["top_level"] == {
        "lineage": {"before": "other", "after": "lin-1"},
        "serial": {"before": 7, "after": 1},
    }


def test_a_client_encrypted_state_is_described_not_refused(make_client: ClientFactory) -> None:
    client = make_client()
    envelope = orjson.dumps(
        {
            "serial": 1,
            "lineage": "l",
            "meta": {"key_provider": "x"},
            "encrypted_data": "QUJD",
            "encryption_version": "v0",
        }
    )
    assert client.post(f"{API}/state/enc", content=envelope).status_code == 200
    listed = client.get(f"{API}/resources/enc").json()
    assert listed["readable"] is False and listed["resources"] == []
    diff = client.get(f"{API}/diff/enc").json()
    assert diff["readable"] == {"from": True, "to": False}


def test_routes_are_in_the_openapi_schema(make_client: ClientFactory) -> None:
    schema = make_client().get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        f"{API}/resources/{{workspace}}": {
            "version",
            "as_of",
            "type",
            "module",
            "mode",
            "q",
            "limit",
            "after",
        },
        f"{API}/resources/{{workspace}}/{{address}}": {"version", "as_of"},
        f"{API}/resources/{{workspace}}/{{address}}/history": {"before", "limit"},
        f"{API}/outputs/{{workspace}}": {"version", "as_of", "reveal"},
        f"{API}/diff/{{workspace}}": {"from", "to", "from_as_of", "to_as_of", "from_workspace"},
        f"{API}/state/{{workspace}}": {"version", "as_of"},
    }
    for path, params in expected.items():
        operation = paths[path]["get"]
        names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert params <= names, (path, names)
        assert {"200", "400", "404"} <= set(operation["responses"]), (path, operation["responses"])
    assert "403" in paths[f"{API}/outputs/{{workspace}}"]["get"]["responses"]
