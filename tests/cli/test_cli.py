"""The `blixard` CLI against a real server subprocess (tests/harness.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from blixard import cli
from blixard.cli.common import relative_age
from blixard.domain.shapes import human_size
from tests.harness import ServerProcess, free_port

runner = CliRunner()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blixard-cli")
    srv = ServerProcess(root / "data", log_path=root / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/api/tofu", timeout=30) as client:
        yield client


def state_bytes(serial: int, lineage: str, resources: int = 1, note: str = "") -> bytes:
    """A small but genuine Terraform v4 state, pretty-printed like Terraform does."""
    doc = {
        "version": 4,
        "terraform_version": "1.9.5",
        "serial": serial,
        "lineage": lineage,
        "outputs": {},
        "resources": [
            {
                "mode": "managed",
                "type": "terraform_data",
                "name": f"r{i}",
                "provider": 'provider["terraform.io/builtin/terraform"]',
                "instances": [
                    {
                        "schema_version": 0,
                        "attributes": {"id": str(uuid.uuid4()), "input": note, "output": note},
                        "sensitive_attributes": [],
                    }
                ],
            }
            for i in range(resources)
        ],
        "check_results": None,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def lock_info(lock_id: str, who: str = "alice@laptop") -> dict[str, str]:
    return {
        "ID": lock_id,
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": who,
        "Version": "1.9.5",
        "Created": "2026-01-01T00:00:00Z",
        "Path": "",
    }


@pytest.fixture
def workspace(http: httpx.Client) -> tuple[str, list[bytes]]:
    """A fresh workspace with three versions; returns its name and the bodies written."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    lineage = str(uuid.uuid4())
    bodies = [state_bytes(s, lineage, resources=s, note=f"v{s}") for s in (1, 2, 3)]
    for body in bodies:
        r = http.post(f"/state/{name}", content=body)
        assert r.status_code == 200, r.text
    return name, bodies


def invoke(server: ServerProcess | None, *args: str, url: str | None = None) -> Result:
    env = {"BLIXARD_URL": url or (server.url if server else None), "BLIXARD_API_KEY": None}
    return runner.invoke(cli.app, list(args), env=env)


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------- workspaces


def test_workspaces_table(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, _ = workspace
    result = invoke(server, "workspaces")
    assert result.exit_code == 0, result.output
    assert "WORKSPACE" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(name))
    cols = row.split()
    assert cols[1] == "3"  # version
    assert cols[2] == "3"  # serial
    assert cols[3] == "3"  # resources
    assert "ago" in row or "just now" in row
    assert ("KiB" in row) or (" B" in row)


def test_workspaces_json(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, bodies = workspace
    result = invoke(server, "workspaces", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    entry = next(ws for ws in data["workspaces"] if ws["name"] == name)
    assert entry["version"] == 3
    assert entry["serial"] == 3
    assert entry["size"] == len(bodies[-1])
    assert entry["locked"] is False


def test_workspaces_shows_lock_holder(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    lid = str(uuid.uuid4())
    assert http.post(f"/lock/{name}", json=lock_info(lid, "bob@ci")).status_code == 200
    try:
        result = invoke(server, "workspaces")
        row = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert "bob@ci" in row and lid in row
    finally:
        http.delete(f"/lock/{name}")


def test_workspaces_empty_server(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", log_path=tmp_path / "server.log") as srv:
        result = invoke(srv, "workspaces")
        assert result.exit_code == 0, result.output
        assert "No workspaces" in result.stdout
        result = invoke(srv, "workspaces", "--json")
        assert json.loads(result.stdout)["workspaces"] == []


# --------------------------------------------------------------------------- history


def test_history_table(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, _ = workspace
    result = invoke(server, "history", name)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert [r[0] for r in rows] == ["3", "2", "1"]  # newest first
    assert all("write" in " ".join(r) for r in rows)


def test_history_json_and_paging(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, bodies = workspace
    result = invoke(server, "history", name, "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [v["version"] for v in data["versions"]] == [3, 2]
    assert data["versions"][0]["size"] == len(bodies[2])
    assert data["next_before"] == 2

    result = invoke(server, "history", name, "--limit", "2")
    assert "--before 2" in result.stdout

    result = invoke(server, "history", name, "--json", "--before", "2")
    assert [v["version"] for v in json.loads(result.stdout)["versions"]] == [1]


def test_history_unknown_workspace(server: ServerProcess) -> None:
    result = invoke(server, "history", f"nope-{uuid.uuid4().hex[:8]}")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "not_found" in result.stderr and "404" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_workspace_name_rejected_locally(server: ServerProcess) -> None:
    result = invoke(server, "history", ".hidden")
    assert result.exit_code == 1
    assert "invalid workspace name" in result.stderr


# --------------------------------------------------------------------------- show


def test_show_prints_exact_bytes(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, bodies = workspace
    result = invoke(server, "show", name)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == bodies[-1]

    result = invoke(server, "show", name, "--version", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == bodies[0]


def test_show_exact_bytes_through_a_pipe(
    server: ServerProcess, workspace: tuple[str, list[bytes]]
) -> None:
    """The real console script, stdout a pipe: not one byte added or changed."""
    name, bodies = workspace
    proc = subprocess.run(
        [sys.executable, "-m", "blixard", "show", name, "--url", server.url],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == bodies[-1]


def test_show_missing_version(server: ServerProcess, workspace: tuple[str, list[bytes]]) -> None:
    name, _ = workspace
    result = invoke(server, "show", name, "--version", "99")
    assert result.exit_code == 1
    assert "404" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- rollback


def test_rollback(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, bodies = workspace
    result = invoke(server, "rollback", name, "1")
    assert result.exit_code == 0, result.output
    assert "new version 4" in result.stdout
    assert "serial 4" in result.stdout
    current = http.get(f"/state/{name}").content
    assert json.loads(current)["serial"] == 4
    assert json.loads(current)["resources"] == json.loads(bodies[0])["resources"]

    result = invoke(server, "rollback", name, "2", "--json")
    meta = json.loads(result.stdout)
    assert meta["version"] == 5
    assert meta["source"] == "rollback"
    assert meta["rolled_back_from"] == 2


def test_rollback_while_locked_names_the_holder(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    lid = str(uuid.uuid4())
    assert http.post(f"/lock/{name}", json=lock_info(lid, "carol@ci")).status_code == 200
    try:
        result = invoke(server, "rollback", name, "1")
        assert result.exit_code == 1
        assert "423" in result.stderr
        assert "locked by carol@ci" in result.stderr and lid in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

        result = invoke(server, "rollback", name, "1", "--lock-id", lid)
        assert result.exit_code == 0, result.output
        assert "new version 4" in result.stdout
    finally:
        http.delete(f"/lock/{name}")


def test_rollback_unknown_version(
    server: ServerProcess, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    result = invoke(server, "rollback", name, "42")
    assert result.exit_code == 1
    assert "404" in result.stderr


# --------------------------------------------------------------------------- lock / unlock


def test_lock_status(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    result = invoke(server, "lock", name)
    assert result.exit_code == 0, result.output
    assert "not locked" in result.stdout

    lid = str(uuid.uuid4())
    assert http.post(f"/lock/{name}", json=lock_info(lid, "dave@host")).status_code == 200
    try:
        result = invoke(server, "lock", name)
        assert result.exit_code == 0, result.output
        assert lid in result.stdout
        assert "dave@host" in result.stdout
        assert "OperationTypeApply" in result.stdout

        result = invoke(server, "lock", name, "--json")
        data = json.loads(result.stdout)
        assert data["locked"] is True
        assert data["lock"]["ID"] == lid
    finally:
        http.delete(f"/lock/{name}")


def test_lock_status_unknown_workspace(server: ServerProcess) -> None:
    result = invoke(server, "lock", f"nope-{uuid.uuid4().hex[:8]}")
    assert result.exit_code == 1
    assert "404" in result.stderr


def test_unlock_requires_force(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    lid = str(uuid.uuid4())
    assert http.post(f"/lock/{name}", json=lock_info(lid, "erin@host")).status_code == 200

    result = invoke(server, "unlock", name)
    assert result.exit_code == 1
    assert "--force" in result.stderr
    assert http.get(f"/lock/{name}").json()["locked"] is True

    result = invoke(server, "unlock", name, "--force")
    assert result.exit_code == 0, result.output
    assert lid in result.stdout and "erin@host" in result.stdout
    assert http.get(f"/lock/{name}").json()["locked"] is False

    result = invoke(server, "unlock", name, "--force")
    assert result.exit_code == 0, result.output
    assert "was not locked" in result.stdout


def test_unlock_json(
    server: ServerProcess, http: httpx.Client, workspace: tuple[str, list[bytes]]
) -> None:
    name, _ = workspace
    lid = str(uuid.uuid4())
    assert http.post(f"/lock/{name}", json=lock_info(lid)).status_code == 200
    result = invoke(server, "unlock", name, "--force", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["unlocked"] is True
    assert data["lock"]["ID"] == lid


# --------------------------------------------------------------------------- backend-config


def _hcl_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        m = re.match(r'^\s*([a-z_]+)\s*=\s*("?)(.*?)\2\s*$', line)
        if m:
            settings[m.group(1)] = m.group(3)
    return settings


def test_backend_config_post_style_default() -> None:
    result = invoke(None, "backend-config", "prod", url="http://state.example:8080/")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("terraform {\n")
    assert '  backend "http" {' in text
    assert text.count("{") == text.count("}")
    s = _hcl_settings(text)
    assert s["address"] == "http://state.example:8080/api/tofu/state/prod"
    assert s["lock_address"] == "http://state.example:8080/api/tofu/lock/prod"
    assert s["unlock_address"] == "http://state.example:8080/api/tofu/unlock/prod"
    assert s["lock_method"] == "POST"
    assert s["unlock_method"] == "POST"
    assert s["update_method"] == "POST"
    assert int(s["retry_max"]) >= 1
    assert int(s["retry_wait_min"]) <= int(s["retry_wait_max"])
    assert "TF_HTTP_USERNAME" in text and "TF_HTTP_PASSWORD" in text
    assert "username" not in s and "password" not in s  # no credentials in the file


def test_backend_config_lock_style() -> None:
    result = invoke(None, "backend-config", "dev", "--style", "lock", url="http://127.0.0.1:8080")
    assert result.exit_code == 0, result.output
    s = _hcl_settings(result.stdout)
    assert s["address"] == "http://127.0.0.1:8080/api/tofu/state/dev"
    assert s["lock_method"] == "LOCK"
    assert s["unlock_method"] == "UNLOCK"


def test_backend_config_bad_style_and_name() -> None:
    assert invoke(None, "backend-config", "x", "--style", "nope").exit_code == 2
    assert invoke(None, "backend-config", "bad/name").exit_code == 1


def test_backend_config_works_against_the_server(server: ServerProcess, http: httpx.Client) -> None:
    """The printed addresses and methods are ones the server accepts."""
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    for style in ("post", "lock"):
        s = _hcl_settings(invoke(server, "backend-config", name, "--style", style).stdout)
        lid = str(uuid.uuid4())
        info = json.dumps(lock_info(lid)).encode()
        with httpx.Client(timeout=30) as c:
            assert c.request(s["lock_method"], s["lock_address"], content=info).status_code == 200
            body = state_bytes(1 if style == "post" else 2, "lin-" + name)
            r = c.request(s["update_method"], s["address"], params={"ID": lid}, content=body)
            assert r.status_code == 200, r.text
            assert c.get(s["address"]).content == body
            r = c.request(s["unlock_method"], s["unlock_address"], content=info)
            assert r.status_code == 200, r.text
    assert http.get(f"/lock/{name}").json()["locked"] is False


# --------------------------------------------------------------------------- errors, auth, serve


@pytest.mark.parametrize(
    "args",
    [
        ["workspaces"],
        ["history", "x"],
        ["show", "x"],
        ["rollback", "x", "1"],
        ["lock", "x"],
        ["unlock", "x", "--force"],
    ],
)
def test_unreachable_server(args: list[str]) -> None:
    url = unreachable_url()
    result = invoke(None, *args, url=url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach Blixard at {url}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_url_option_overrides_env(server: ServerProcess) -> None:
    result = invoke(None, "workspaces", "--url", server.url, url=unreachable_url())
    assert result.exit_code == 0, result.output


def test_unreachable_via_console_script() -> None:
    url = unreachable_url()
    proc = subprocess.run(
        [sys.executable, "-m", "blixard", "workspaces"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "BLIXARD_URL": url},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot reach Blixard at {url}")
    assert "Traceback" not in proc.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BLIXARD_")}


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # noqa: RUF012 - test-only shared record
    reply: tuple[int, dict[str, Any]] = (200, {"workspaces": [], "next_after": None})

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        status, body = type(self).reply
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    _Recorder.seen = []
    _Recorder.reply = (200, {"workspaces": [], "next_after": None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_api_key_sent_as_bearer(recorder: tuple[str, type[_Recorder]]) -> None:
    url, rec = recorder
    result = runner.invoke(
        cli.app, ["workspaces"], env={"BLIXARD_URL": url, "BLIXARD_API_KEY": "k-env"}
    )
    assert result.exit_code == 0, result.output
    assert rec.seen[-1]["authorization"] == "Bearer k-env"

    result = runner.invoke(cli.app, ["workspaces", "--url", url, "--api-key", "k-flag"])
    assert result.exit_code == 0, result.output
    assert rec.seen[-1]["authorization"] == "Bearer k-flag"

    result = runner.invoke(cli.app, ["workspaces", "--url", url], env={"BLIXARD_API_KEY": None})
    assert "authorization" not in rec.seen[-1]


def test_auth_error_hints_at_api_key(recorder: tuple[str, type[_Recorder]]) -> None:
    url, rec = recorder
    rec.reply = (401, {"error": "unauthorized", "message": "A valid API key is required."})
    result = invoke(None, "workspaces", url=url)
    assert result.exit_code == 1
    assert "A valid API key is required." in result.stderr
    assert "BLIXARD_API_KEY" in result.stderr


def test_non_json_error_body(recorder: tuple[str, type[_Recorder]]) -> None:
    url, rec = recorder
    rec.reply = (502, {"oops": 1})
    result = invoke(None, "lock", "x", url=url)
    assert result.exit_code == 1
    assert "502" in result.stderr


def test_serve_passes_only_given_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("blixard.server")
    fake.serve = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "blixard.server", fake)

    result = runner.invoke(cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    assert calls[-1] == {}

    result = runner.invoke(
        cli.app,
        [
            "serve",
            "--listen",
            "127.0.0.1:9999",
            "--storage-url",
            "sqlite:///tmp/x.db",
            "--data-dir",
            "/tmp/d",
            "--max-state-bytes",
            "1024",
            "--log-level",
            "debug",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls[-1] == {
        "listen": "127.0.0.1:9999",
        "storage_url": "sqlite:///tmp/x.db",
        "data_dir": "/tmp/d",
        "max_state_bytes": 1024,
        "log_level": "debug",
    }


def test_python_dash_m_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "blixard", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("serve", "workspaces", "history", "show", "rollback", "lock", "unlock"):
        assert command in proc.stdout


# --------------------------------------------------------------------------- formatting units


def test_human_size() -> None:
    assert human_size(None) == "-"
    assert human_size(512) == "512 B"
    assert human_size(2048) == "2.0 KiB"
    assert human_size(5 * 1024 * 1024) == "5.0 MiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"


def test_relative_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def ago(**kw: float) -> str:
        return (now - timedelta(**kw)).isoformat().replace("+00:00", "Z")

    assert relative_age(ago(seconds=5), now) == "5s ago"
    assert relative_age(ago(minutes=3), now) == "3m ago"
    assert relative_age(ago(hours=2), now) == "2h ago"
    assert relative_age(ago(days=4), now) == "4d ago"
    assert relative_age(None, now) == "-"
    assert relative_age("garbage", now) == "garbage"
