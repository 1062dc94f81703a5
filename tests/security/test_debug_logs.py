"""At BLIXARD_LOG_LEVEL=debug (access logs on) the server's log holds no state body, no key
secret (valid, invalid, or just issued) and no submitted variable value (README: "State
bodies are never logged"; DESIGN: secrets never appear in logs). A real server subprocess,
its real log file, every kind of request that carries one of them."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from blixard.access_log import redact_query
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

TOKEN = uuid.uuid4().hex
ADMIN = f"blx_debug-admin-{TOKEN}"
WRONG = f"blx_wrong-secret-{TOKEN}"
BODY_MARKER = f"state-body-secret-{TOKEN}"
VAR_JSON = f"json-variable-secret-{TOKEN}"
VAR_QUERY = f"query-variable-secret-{TOKEN}"
CONFIG = (
    'variable "value" {\n  type = string\n}\n'
    'resource "terraform_data" "x" {\n  input = var.value\n}\n'
)


def config_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = CONFIG.encode()
        info = tarfile.TarInfo("main.tf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_until_settled(api: httpx.Client, plan_id: str) -> None:
    """Until the run stops moving (or is refused): its own log lines are written by then."""
    for _ in range(600):
        status = api.get(f"/plan/{plan_id}").json()["status"]
        if status not in ("queued", "planning", "applying"):
            return
        time.sleep(0.1)


def test_debug_logs_hold_no_state_body_key_secret_or_variable_value(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    root = tmp_path / "configs"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.tf").write_text(CONFIG)
    env = {
        "BLIXARD_LOG_LEVEL": "debug",
        "BLIXARD_ADMIN_KEY": ADMIN,
        "BLIXARD_PLAN_ROOTS": str(root),
    }
    with ServerProcess(tmp_path / "data", env=env, log_path=log) as server:
        admin = httpx.Client(base_url=server.url + "/api/tofu", auth=("x", ADMIN), timeout=30)
        issued = admin.post("/keys", json={"name": "ci", "role": "operator", "workspaces": "*"})
        assert issued.status_code in (200, 201), issued.text
        secret = issued.json()["secret"]
        api = httpx.Client(
            base_url=server.url + "/api/tofu",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        body = orjson.dumps(
            {"version": 4, "serial": 1, "lineage": "l", "outputs": {"pw": {"value": BODY_MARKER}}}
        )
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        lock = {"ID": "lock-1", "Operation": "OperationTypeApply", "Who": "me@host"}
        assert api.post("/lock/app", json=lock).status_code == 200
        written = api.post(
            "/state/app", params={"ID": "lock-1"}, content=body, headers={"Content-MD5": md5}
        )
        assert written.status_code == 200
        bad = api.post(
            "/state/app", params={"ID": "lock-1"}, content=body + b"x", headers={"Content-MD5": md5}
        )
        assert bad.status_code == 400  # an error path logs too
        assert api.post("/unlock/app", json=lock).status_code == 200
        assert api.get("/state/app").content == body
        refused = httpx.get(server.url + "/api/tofu/workspaces", auth=("x", WRONG))
        assert refused.status_code == 401
        by_dir = api.post(
            "/plan",
            json={
                "workspace": "app",
                "config_dir": str(root / "app"),
                "variables": {"value": VAR_JSON},
            },
        )
        by_upload = api.post(
            "/plan",
            params={"workspace": "other", "var": f"value={VAR_QUERY}"},
            content=config_archive(),
            headers={"Content-Type": "application/gzip"},
        )
        for response in (by_dir, by_upload):
            assert response.status_code in (202, 503), response.text  # 503: no runner here
            if response.status_code == 202:
                wait_until_settled(api, response.json()["plan_id"])
    text = log.read_text()
    assert "GET /api/tofu/state/app" in text, "debug level must log every request"
    assert "var=value%3D%28redacted%29" in text  # the variable's name stays, its value goes
    for secret_text in (ADMIN, WRONG, secret, BODY_MARKER, VAR_JSON, VAR_QUERY):
        assert secret_text not in text, f"{secret_text[:20]}… is in the debug log"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/tofu/plan", "/api/tofu/plan"),
        ("/api/tofu/plan?workspace=w", "/api/tofu/plan?workspace=w"),
        (
            "/api/tofu/plan?var=region%3Deu&workspace=w&var=pw=a%3Db&var=x",
            "/api/tofu/plan?var=region%3D%28redacted%29&workspace=w"
            "&var=pw%3D%28redacted%29&var=x%3D%28redacted%29",
        ),
        ("/api/tofu/plan?v%61r=k%3Ds", "/api/tofu/plan?v%61r=k%3D%28redacted%29"),
    ],
)
def test_access_log_paths_lose_variable_values(path: str, logged: str) -> None:
    assert redact_query(path) == logged
