"""GET /api/tofu/events on both engines: what a key may see, in the order it happened."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import TEST_ENGINES, ServerProcess, shared_etcd_url

ADMIN = "events-admin-key-0123456789abcdef"


@pytest.fixture(params=TEST_ENGINES, scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp(f"events-{request.param}")
    env = {"BLIXARD_ADMIN_KEY": ADMIN}
    if request.param == "etcd":
        env["BLIXARD_STORAGE_URL"] = shared_etcd_url(f"blixard-ui-events/{uuid.uuid4().hex[:12]}")
    srv = ServerProcess(root / "data", env=env, log_path=root / "server.log").start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(errors="replace")


def state(serial: int, lineage: str) -> bytes:
    return json.dumps(
        {"version": 4, "serial": serial, "lineage": lineage, "resources": []}
    ).encode()


def test_events_are_scoped_ordered_and_only_of_acknowledged_changes(server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    mine, other = f"ev-a-{tag}", f"ev-b-{tag}"
    admin = httpx.Client(
        base_url=server.url + "/api/tofu", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    created = admin.post(
        "/keys", json={"name": f"ev-{tag}", "role": "reader", "workspaces": "ev-a-*"}
    )
    assert created.status_code == 201, created.text
    reader_key = created.json()["secret"]
    received: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {reader_key}"}
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream("GET", "/api/tofu/events", headers=headers) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line == "event: ready":
                    connected.set()
                if line.startswith('data: {"'):
                    received.append(json.loads(line[6:]))
                    if len(received) == 6:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(15)
    lock = {"ID": f"lock-{tag}", "Who": "ev@test", "Operation": "OperationTypeApply"}
    for ws in (other, mine):  # the other workspace's changes come first: never delivered
        assert admin.post(f"/state/{ws}", content=state(1, ws)).status_code == 200
        assert admin.post(f"/lock/{ws}", content=json.dumps(lock)).status_code == 200
    # Refused changes publish nothing.
    assert admin.post(f"/state/{mine}", content=state(2, mine)).status_code == 423
    assert admin.post(f"/state/{mine}", content=b"{not json").status_code == 400
    assert admin.post(f"/unlock/{mine}", content=json.dumps(lock)).status_code == 200
    assert admin.post(f"/state/{mine}", content=state(2, mine)).status_code == 200
    assert admin.delete(f"/workspaces/{mine}").status_code == 200
    assert admin.post(f"/workspaces/{mine}/restore").status_code == 200
    thread.join(30)
    admin.close()
    seen = [
        (e["type"], e["workspace"], e.get("locked"), e.get("version"), e.get("deleted"))
        for e in received
    ]
    assert seen == [
        ("version", mine, None, 1, None),
        ("lock", mine, True, None, None),
        ("lock", mine, False, None, None),
        ("version", mine, None, 2, None),
        ("workspace", mine, None, None, True),
        ("workspace", mine, None, None, False),
    ], received
    assert received[1]["who"] == "ev@test" and received[1]["lock_id"] == lock["ID"]


def test_revoking_the_key_ends_its_open_stream_before_the_next_event(
    server: ServerProcess,
) -> None:
    tag = uuid.uuid4().hex[:8]
    ws = f"ev-r-{tag}"
    admin = httpx.Client(
        base_url=server.url + "/api/tofu", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    created = admin.post("/keys", json={"name": f"ev-r-{tag}", "role": "reader"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    lines: list[str] = []
    connected, ended = threading.Event(), threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream(
                "GET", "/api/tofu/events", headers={"Authorization": f"Bearer {secret}"}
            ) as stream,
        ):
            for line in stream.iter_lines():
                lines.append(line)
                if line == "event: ready":
                    connected.set()
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert connected.wait(15)
    assert admin.post(f"/state/{ws}", content=state(1, ws)).status_code == 200
    deadline = time.monotonic() + 15
    while not any(ws in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(line.startswith("event: version") for line in lines), lines  # while valid
    assert admin.delete(f"/keys/ev-r-{tag}").status_code == 200
    delivered = len(lines)
    assert admin.post(f"/state/{ws}", content=state(2, ws)).status_code == 200
    assert ended.wait(15), "the stream of a revoked key stayed open"
    admin.close()
    assert not any('"version":2' in line for line in lines), lines
    assert all(not line.startswith('data: {"') for line in lines[delivered:]), lines
    # The revoked key cannot open a new stream either.
    again = httpx.get(
        server.url + "/api/tofu/events", headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )
    assert again.status_code == 401


def test_events_need_a_valid_key(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = httpx.get(server.url + "/api/tofu/events", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


def test_start_up_prints_one_line_with_the_ui_the_docs_the_data_and_auth(
    server: ServerProcess,
) -> None:
    lines = [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if line.startswith("Blixard: web UI")
    ]
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"web UI {server.url}/ui/ · API docs {server.url}/docs · data " in line, line
    assert line.endswith("authentication on (sign in with an API key)"), line
    if "etcd://" in line:
        assert "?" not in line and "@" not in line.split("data ")[1], line
    else:
        assert f"data {server.data_dir.resolve() / 'blixard.db'} ·" in line, line


def test_stopping_the_server_ends_open_streams(tmp_path: Path) -> None:
    """A graceful stop would otherwise wait for every open stream until its timeout, and then
    log the cancelled ones' tracebacks."""
    srv = ServerProcess(tmp_path / "data", log_path=tmp_path / "server.log").start()
    ended = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=srv.url, timeout=60) as client,
            client.stream("GET", "/api/tofu/events") as stream,
        ):
            for _ in stream.iter_lines():
                pass
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(0.5)
    srv.stop()
    # uvicorn re-raises SIGTERM once it has shut down; -9 would mean stop() had to kill it.
    assert srv.proc is not None and srv.proc.returncode in (0, -15), srv.proc.returncode
    assert ended.wait(10), "the stream stayed open"
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "CancelledError" not in log, log[-2000:]
