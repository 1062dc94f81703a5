"""`blixard keys` and `blixard audit` against a real server with authentication on, and directly
on a data directory (--data-dir) before the server's first start."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from blixard import cli
from tests.harness import ServerProcess

runner = CliRunner()

ADMIN_SECRET = "blx_cli-tests-admin-" + uuid.uuid4().hex
ONCE_WARNING = "Store it now; it cannot be shown again"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blixard-cli-keys")
    srv = ServerProcess(
        root / "data", env={"BLIXARD_ADMIN_KEY": ADMIN_SECRET}, log_path=root / "server.log"
    ).start()
    try:
        yield srv
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"
    assert ADMIN_SECRET not in log


def invoke(url: str | None, *args: str, key: str | None = None) -> Result:
    env = {"BLIXARD_URL": url, "BLIXARD_API_KEY": key}
    return runner.invoke(cli.app, list(args), env=env)


def admin(server: ServerProcess, *args: str) -> Result:
    return invoke(server.url, *args, key=ADMIN_SECRET)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def secret_from(result: Result) -> str:
    """The secret from `keys create` output: the one line that is nothing but a blx_ token."""
    (secret,) = [s for s in (ln.strip() for ln in result.stdout.splitlines()) if s[:4] == "blx_"]
    return secret


def api_get(server: ServerProcess, path: str, secret: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.get(server.url + "/api/tofu" + path, headers=headers, timeout=15)


def key_row(stdout: str, name: str) -> list[str]:
    (line,) = [ln for ln in stdout.splitlines() if ln.split()[:1] == [name]]
    return line.split()


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def wait_for_audit(
    server: ServerProcess, match: dict[str, Any], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Audit events (newest first) once one matches: refusals are written in batches."""
    deadline = time.monotonic() + timeout
    while True:
        resp = api_get(server, "/audit?limit=1000", ADMIN_SECRET)
        assert resp.status_code == 200, resp.text
        events: list[dict[str, Any]] = resp.json()["events"]
        if any(all(e.get(k) == v for k, v in match.items()) for e in events):
            return events
        assert time.monotonic() < deadline, f"no audit event matching {match}: {events[:10]}"
        time.sleep(0.1)


# --------------------------------------------------------------------------- keys via the API


def test_create_list_revoke_via_api(server: ServerProcess) -> None:
    name = unique("ci-team-a")
    created = admin(
        server, "keys", "create", name, "--role", "writer", "--workspaces", "team-a-*,shared"
    )
    assert created.exit_code == 0, created.output
    secret = secret_from(created)
    assert secret.startswith("blx_") and len(secret) >= 40
    assert ONCE_WARNING in created.stdout
    assert name in created.stdout and "writer" in created.stdout
    assert "team-a-*,shared" in created.stdout
    assert "admin" in created.stdout  # created by the bootstrap admin key

    # The secret works at once, within its scope only.
    assert api_get(server, "/workspaces", secret).status_code == 200
    assert api_get(server, "/history/team-b-app", secret).status_code == 404

    listed = admin(server, "keys", "list")
    assert listed.exit_code == 0, listed.output
    row = key_row(listed.stdout, name)
    assert row[1] == "writer"
    assert row[2] == "team-a-*,shared"
    assert "CREATED BY" in listed.stdout and "LAST USED" in listed.stdout
    assert secret not in listed.stdout and "blx_" not in listed.stdout

    as_json = admin(server, "keys", "list", "--json")
    assert as_json.exit_code == 0, as_json.output
    (entry,) = [k for k in json.loads(as_json.stdout)["keys"] if k["name"] == name]
    assert entry["role"] == "writer"
    assert entry["workspaces"] == ["team-a-*", "shared"]
    assert entry["created_by"] == "admin"
    assert entry["revoked_at"] is None
    assert "secret" not in as_json.stdout and "hash" not in as_json.stdout

    revoked = admin(server, "keys", "revoke", name)
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked API key {name}" in revoked.stdout
    assert api_get(server, "/workspaces", secret).status_code == 401

    active = admin(server, "keys", "list")
    assert name not in active.stdout
    everything = admin(server, "keys", "list", "--all")
    assert everything.exit_code == 0, everything.output
    assert "REVOKED" in everything.stdout
    assert key_row(everything.stdout, name)[-2].startswith("20")  # the revocation date
    again = one_error_line(admin(server, "keys", "revoke", name))
    assert f"No active key is named '{name}'" in again and "HTTP 404" in again


def test_create_json_prints_the_secret_once(server: ServerProcess) -> None:
    name = unique("reader")
    created = admin(
        server, "keys", "create", name, "--role", "reader", "--workspaces", "*", "--json"
    )
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["key"]["name"] == name and body["key"]["role"] == "reader"
    assert body["key"]["workspaces"] == ["*"]
    assert body["secret"].startswith("blx_")
    assert api_get(server, "/workspaces", body["secret"]).status_code == 200
    listed = admin(server, "keys", "list", "--all", "--json")
    assert body["secret"] not in listed.stdout


def test_create_refusals(server: ServerProcess) -> None:
    name = unique("dup")
    assert (
        admin(server, "keys", "create", name, "--role", "reader", "--workspaces", "*").exit_code
        == 0
    )
    dup = one_error_line(
        admin(server, "keys", "create", name, "--role", "reader", "--workspaces", "*")
    )
    assert "already exists" in dup and "HTTP 409" in dup
    bad_name = one_error_line(
        admin(server, "keys", "create", "no spaces", "--role", "reader", "--workspaces", "*")
    )
    assert "HTTP 400" in bad_name
    bad_role = admin(server, "keys", "create", unique("x"), "--role", "root", "--workspaces", "*")
    assert bad_role.exit_code == 2 and "--role" in bad_role.output
    no_globs = one_error_line(
        admin(server, "keys", "create", unique("x"), "--role", "reader", "--workspaces", " , ")
    )
    assert "--workspaces" in no_globs


def test_keys_need_an_admin_key(server: ServerProcess) -> None:
    name = unique("op")
    created = admin(server, "keys", "create", name, "--role", "operator", "--workspaces", "*")
    operator_secret = secret_from(created)

    anonymous = one_error_line(invoke(server.url, "keys", "list"))
    assert "HTTP 401" in anonymous and "--api-key" in anonymous
    wrong = one_error_line(invoke(server.url, "keys", "list", key="blx_not-a-real-key"))
    assert "HTTP 401" in wrong
    escalate = unique("escalate")
    forbidden = one_error_line(
        invoke(
            server.url,
            "keys",
            "create",
            escalate,
            "--role",
            "admin",
            "--workspaces",
            "*",
            key=operator_secret,
        )
    )
    assert "HTTP 403" in forbidden and "operator" in forbidden
    assert escalate not in admin(server, "keys", "list").stdout


# --------------------------------------------------------------------------- audit


def test_audit_shows_key_creation_and_a_denied_request(server: ServerProcess) -> None:
    name = unique("audited")
    created = admin(server, "keys", "create", name, "--role", "reader", "--workspaces", "aud-*")
    reader_secret = secret_from(created)
    ws = unique("aud")
    # A reader may not write state: 403, recorded as denied with the key's name.
    denied = httpx.post(
        f"{server.url}/api/tofu/state/{ws}",
        content=b'{"version":4,"serial":1,"lineage":"x","resources":[]}',
        auth=("api", reader_secret),
        timeout=15,
    )
    assert denied.status_code == 403, denied.text
    wait_for_audit(server, {"key": name, "outcome": "denied"})

    table = admin(server, "audit")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "KEY"]
    created_line = next(ln for ln in lines if f"created key '{name}'" in ln)
    assert "keys.manage" in created_line and " ok " in created_line
    denied_line = next(ln for ln in lines if name in ln.split() and "denied" in ln)
    assert "state.write" in denied_line and ws in denied_line and "403" in denied_line
    assert lines.index(denied_line) < lines.index(created_line), "newest first"

    by_key = admin(server, "audit", "--key", name, "--json")
    assert by_key.exit_code == 0, by_key.output
    events = json.loads(by_key.stdout)["events"]
    assert events and {e["key"] for e in events} == {name}
    (event,) = events
    assert event["action"] == "state.write" and event["workspace"] == ws
    assert event["outcome"] == "denied" and event["status"] == 403
    assert event["role"] == "reader" and event["source"] == "127.0.0.1"

    by_action = admin(server, "audit", "--action", "keys.manage", "--workspace", ws, "--json")
    assert json.loads(by_action.stdout)["events"] == []
    since_future = admin(server, "audit", "--since", "2999-01-01T00:00:00Z")
    assert since_future.exit_code == 0 and "No audit events match." in since_future.stdout


def test_audit_paging_and_bad_input(server: ServerProcess) -> None:
    for _ in range(2):
        admin(server, "keys", "create", unique("page"), "--role", "reader", "--workspaces", "*")
    first = admin(server, "audit", "--limit", "1", "--json")
    page = json.loads(first.stdout)
    (newest,) = page["events"]
    assert page["next_before"] == newest["id"]
    table = admin(server, "audit", "--limit", "1")
    assert f"(older events: --before {newest['id']})" in table.stdout
    older = json.loads(
        admin(server, "audit", "--limit", "1", "--before", str(newest["id"]), "--json").stdout
    )
    assert older["events"][0]["id"] < newest["id"]

    bad = one_error_line(admin(server, "audit", "--since", "yesterday"))
    assert "ISO 8601" in bad and "HTTP 400" in bad
    reader = secret_from(
        admin(server, "keys", "create", unique("nosy"), "--role", "reader", "--workspaces", "*")
    )
    forbidden = one_error_line(invoke(server.url, "audit", key=reader))
    assert "HTTP 403" in forbidden


# --------------------------------------------------------------------------- --data-dir


def test_offline_bootstrap_before_first_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = invoke(
        None,
        "keys",
        "create",
        "admin",
        "--role",
        "admin",
        "--workspaces",
        "*",
        "--data-dir",
        str(data),
    )
    assert created.exit_code == 0, created.output
    assert ONCE_WARNING in created.stdout
    admin_secret = secret_from(created)
    writer = invoke(
        None,
        "keys",
        "create",
        "ci",
        "--role",
        "writer",
        "--workspaces",
        "app-*",
        "--data-dir",
        str(data),
        "--json",
    )
    assert writer.exit_code == 0, writer.output
    writer_secret = json.loads(writer.stdout)["secret"]

    offline = invoke(None, "keys", "list", "--data-dir", str(data))
    assert offline.exit_code == 0, offline.output
    assert key_row(offline.stdout, "admin")[1:3] == ["admin", "*"]
    assert key_row(offline.stdout, "ci")[1:3] == ["writer", "app-*"]

    srv = ServerProcess(data, log_path=tmp_path / "server.log").start()
    try:
        # Keys exist, so authentication is on from the first request.
        assert api_get(srv, "/workspaces", None).status_code == 401
        body = b'{"version":4,"serial":1,"lineage":"l","resources":[]}'
        wrote = httpx.post(
            f"{srv.url}/api/tofu/state/app-web", content=body, auth=("api", writer_secret)
        )
        assert wrote.status_code == 200, wrote.text
        listed = invoke(srv.url, "keys", "list", key=admin_secret)
        assert listed.exit_code == 0, listed.output
        assert {"admin", "ci"} <= {ln.split()[0] for ln in listed.stdout.splitlines()[1:]}

        # While the server runs, the data directory is its alone: a clear one-line refusal.
        for args in (
            ["keys", "create", "late", "--role", "reader", "--workspaces", "*"],
            ["keys", "list"],
            ["keys", "revoke", "ci"],
            ["audit"],
        ):
            line = one_error_line(invoke(None, *args, "--data-dir", str(data)))
            assert "server is running" in line and "API" in line, line
        assert "late" not in invoke(srv.url, "keys", "list", key=admin_secret).stdout

        trail = json.loads(
            invoke(srv.url, "audit", "--action", "keys.manage", "--json", key=admin_secret).stdout
        )
        details = [e["detail"] for e in trail["events"]]
        assert "created key 'admin' (offline, --data-dir)" in details
        assert "created key 'ci' (offline, --data-dir)" in details
        assert all(e["source"].startswith("local:") for e in trail["events"])
    finally:
        srv.stop()

    # Stopped again: revoke offline, and the server refuses the key on its next start.
    revoked = invoke(None, "keys", "revoke", "ci", "--data-dir", str(data))
    assert revoked.exit_code == 0, revoked.output
    everything = invoke(None, "keys", "list", "--all", "--json", "--data-dir", str(data))
    (ci,) = [k for k in json.loads(everything.stdout)["keys"] if k["name"] == "ci"]
    assert ci["revoked_at"] is not None
    offline_audit = invoke(None, "audit", "--key", "ci", "--data-dir", str(data), "--json")
    assert offline_audit.exit_code == 0, offline_audit.output
    with ServerProcess(data, log_path=tmp_path / "server2.log") as again:
        assert api_get(again, "/workspaces", writer_secret).status_code == 401
        assert api_get(again, "/workspaces", admin_secret).status_code == 200


def test_offline_refusals(tmp_path: Path) -> None:
    missing = one_error_line(invoke(None, "keys", "list", "--data-dir", str(tmp_path / "nowhere")))
    assert "no Blixard database" in missing
    assert not (tmp_path / "nowhere").exists()
    data = str(tmp_path / "data")
    ok = invoke(
        None, "keys", "create", "a", "--role", "reader", "--workspaces", "*", "--data-dir", data
    )
    assert ok.exit_code == 0, ok.output
    dup = one_error_line(
        invoke(
            None, "keys", "create", "a", "--role", "reader", "--workspaces", "*", "--data-dir", data
        )
    )
    assert "already exists" in dup
    unknown = one_error_line(invoke(None, "keys", "revoke", "b", "--data-dir", data))
    assert "No active key is named 'b'" in unknown
    bad_glob = one_error_line(
        invoke(
            None,
            "keys",
            "create",
            "c",
            "--role",
            "reader",
            "--workspaces",
            "a/b",
            "--data-dir",
            data,
        )
    )
    assert "Invalid workspace glob" in bad_glob
    bad_time = one_error_line(invoke(None, "audit", "--until", "soon", "--data-dir", data))
    assert "ISO 8601" in bad_time
