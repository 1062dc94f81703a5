"""kill -9 the server during a stream of writes: every acknowledged version survives.

Writers POST increasing serials to their own workspaces (so the server's writer thread
has concurrent commits to batch) and remember every version the server acknowledged
with a 2xx. The server is SIGKILLed mid-stream, restarted on the same data directory,
and every acknowledged version must be in history with the same sha256 and served back
byte-for-byte. Finally the SQLite file must pass PRAGMA integrity_check.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import (
    STYLES,
    Api,
    BackendStyle,
    TfProject,
    lock_info,
    resource_config,
    sha256_hex,
)
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

WRITERS = 4
KILLS = 4
MIN_ACKS_PER_ROUND = 5  # per writer, before the kill may happen


@dataclass
class Writer:
    """Streams writes to one workspace until the server goes away."""

    url: str
    ws: str
    lineage: str
    rng: random.Random
    next_serial: int = 1
    acked: dict[int, bytes] = field(default_factory=dict)  # version -> body
    sent: dict[str, bytes] = field(default_factory=dict)  # sha256 -> body, acked or not
    errors: list[str] = field(default_factory=list)
    round_acks: int = 0

    def body(self, serial: int) -> bytes:
        pad = self.rng.randbytes(self.rng.randint(50, 6000)).hex()
        state = {
            "version": 4,
            "terraform_version": "1.15.5",
            "serial": serial,
            "lineage": self.lineage,
            "outputs": {"pad": {"value": pad, "type": "string"}},
            "resources": [],
            "check_results": None,
        }
        return json.dumps(state, indent=2).encode()

    def run(self, stop: threading.Event) -> None:
        self.round_acks = 0
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not stop.is_set():
                body = self.body(self.next_serial)
                self.sent[sha256_hex(body)] = body
                try:
                    resp = client.post(
                        f"/api/tofu/state/{self.ws}",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.HTTPError:
                    return  # the server died: this write is unacknowledged
                if resp.status_code // 100 != 2:
                    self.errors.append(f"{resp.status_code} {resp.text}")
                    return
                meta = resp.json()
                if meta["sha256"] != sha256_hex(body) or meta["version"] in self.acked:
                    self.errors.append(f"bad ack {meta}")
                    return
                self.acked[meta["version"]] = body
                self.round_acks += 1
                self.next_serial += 1

    def resume_from(self, api: Api) -> None:
        """After a restart, continue from the head the server has (it may hold an unacked write)."""
        resp = api.get_state(self.ws)
        if resp.status_code == 200:
            self.next_serial = resp.json()["serial"] + 1


def verify(api: Api, writer: Writer) -> None:
    versions = api.history(writer.ws)
    by_number = {v["version"]: v for v in versions}
    assert sorted(by_number) == list(range(1, len(versions) + 1)), "versions are 1..N"
    for meta in versions:
        assert meta["sha256"] in writer.sent, f"version {meta['version']} was never sent"
    for number, body in writer.acked.items():
        assert number in by_number, f"{writer.ws}: acknowledged version {number} lost"
        assert by_number[number]["sha256"] == sha256_hex(body)
        assert api.state_bytes(writer.ws, number) == body
    head = max(by_number)
    assert api.state_bytes(writer.ws) == writer.sent[by_number[head]["sha256"]]


def integrity_check(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    return str(row[0])


def test_acknowledged_writes_survive_kill9(tmp_path: Path) -> None:
    seed = int(os.environ.get("BLIXARD_CRASH_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed {seed} (set BLIXARD_CRASH_SEED to replay)")
    rng = random.Random(seed)
    data = tmp_path / "data"
    server = ServerProcess(data, log_path=tmp_path / "server.log").start()
    writers = [
        Writer(
            server.url,
            f"crash-{i}-{uuid.uuid4().hex[:6]}",
            str(uuid.uuid4()),
            random.Random(rng.random()),
        )
        for i in range(WRITERS)
    ]
    try:
        for kill in range(KILLS):
            stop = threading.Event()
            threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while min(w.round_acks for w in writers) < MIN_ACKS_PER_ROUND:
                assert time.monotonic() < deadline, f"writers stalled (seed {seed})"
                assert all(t.is_alive() for t in threads), [w.errors for w in writers]
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.2))
            server.kill()
            stop.set()
            for t in threads:
                t.join(15)
                assert not t.is_alive()
            for w in writers:
                assert not w.errors, f"seed {seed}, kill {kill}: {w.errors}"

            server = ServerProcess(data, log_path=tmp_path / "server.log").start()
            api = Api(server.url)
            try:
                for w in writers:
                    w.url = server.url
                    verify(api, w)
                    w.resume_from(api)
                    unacked = len(api.history(w.ws)) - len(w.acked)
                    print(f"kill {kill}: {w.ws} acked={len(w.acked)} stored-unacked={unacked}")
            finally:
                api.close()
        assert all(len(w.acked) >= KILLS * MIN_ACKS_PER_ROUND for w in writers)
    finally:
        server.kill()
    assert integrity_check(data / "blixard.db") == "ok"


def test_lock_survives_kill9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ws = f"crash-lock-{uuid.uuid4().hex[:6]}"
    holder = lock_info(f"holder-{uuid.uuid4()}", who="alice@ci")
    server = ServerProcess(data, log_path=tmp_path / "server.log").start()
    try:
        api = Api(server.url)
        resp = api.send_lock("LOCK", "lock", ws, holder)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        api.close()
        server.kill()

        server = ServerProcess(data, log_path=tmp_path / "server.log").start()
        api = Api(server.url)
        status: dict[str, Any] = api.lock_status(ws).json()
        assert status["locked"] is True, status
        assert status["lock"]["ID"] == holder["ID"]
        assert status["lock"]["Who"] == "alice@ci"

        other = api.send_lock("LOCK", "lock", ws, lock_info("someone-else"))
        assert other.status_code == 423, (other.status_code, other.text)
        assert other.json()["ID"] == holder["ID"]

        state = json.dumps({"version": 4, "serial": 1, "lineage": "l-1", "resources": []})
        refused = api.http.post(f"/state/{ws}", content=state)
        assert refused.status_code == 423, (refused.status_code, refused.text)
        written = api.http.post(f"/state/{ws}", params={"ID": holder["ID"]}, content=state)
        assert written.status_code == 200, (written.status_code, written.text)

        released = api.send_lock("UNLOCK", "unlock", ws, holder)
        assert released.status_code == 200, (released.status_code, released.text)
        assert not api.is_locked(ws)
        api.close()
    finally:
        server.kill()
    assert integrity_check(data / "blixard.db") == "ok"


@pytest.mark.parametrize(
    "style", [s for s in STYLES if s.name in ("stock", "seed")], ids=lambda s: s.name
)
def test_terraform_apply_survives_server_kill9(
    tmp_path: Path, tf_env: dict[str, str], style: BackendStyle
) -> None:
    """kill -9 and restart the server while Terraform holds its lock mid-apply: the lock is
    still Terraform's after the restart, so its write (retried by the client) and unlock succeed."""
    data = tmp_path / "data"
    ws = f"restart-{style.name}-{uuid.uuid4().hex[:6]}"
    server = ServerProcess(data, log_path=tmp_path / "server.log").start()
    proj = TfProject(tmp_path / "tf", tf_env, server.url, ws, style)
    try:
        proj.write(resource_config("one"))
        proj.run("init")
        applying = proj.start("apply", "-auto-approve", "-var", "sleep=3")
        api = Api(server.url)
        holder = api.wait_locked(ws)
        api.close()

        server.kill()
        server = ServerProcess(data, port=server.port, log_path=tmp_path / "server.log").start()
        api = Api(server.url)
        status = api.lock_status(ws).json()
        assert status["locked"] is True and status["lock"]["ID"] == holder["ID"], status

        assert applying.wait(60) == 0, proj.background_output()
        assert "Apply complete!" in proj.background_output()
        (meta,) = api.history(ws)
        assert meta["lock_id"] == holder["ID"]
        assert not api.is_locked(ws)
        api.close()
    finally:
        proj.cleanup()
        server.kill()
