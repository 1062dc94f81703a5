"""32 clients race for one lock: exactly one wins, the 31 others are told who holds it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import Api, lock_info
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

CONTENDERS = 32
ROUNDS = 10
FRESH_WORKSPACE_ROUNDS = 3
# Every lock route of the contract; contenders spread over them all race for the same lock.
LOCK_ROUTES = [("LOCK", "lock"), ("POST", "lock"), ("LOCK", "state")]


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[list[httpx.Client]]:
    """One client (own connection) per contender, connected before the race starts."""
    pool = [
        httpx.Client(base_url=server.url + "/api/tofu", timeout=30.0) for _ in range(CONTENDERS)
    ]
    for client in pool:
        assert client.get(server.url + "/health").status_code == 200
    yield pool
    for client in pool:
        client.close()


def race(
    clients: list[httpx.Client], ws: str, round_no: int
) -> list[tuple[dict[str, str], httpx.Response]]:
    infos = [
        lock_info(f"r{round_no}-c{i}-{uuid.uuid4()}", who=f"racer-{i}@host")
        for i in range(CONTENDERS)
    ]
    barrier = threading.Barrier(CONTENDERS)
    results: list[httpx.Response | BaseException | None] = [None] * CONTENDERS

    def contend(i: int) -> None:
        method, route = LOCK_ROUTES[(i + round_no) % len(LOCK_ROUTES)]
        body = json.dumps(infos[i])
        try:
            barrier.wait(10)
            results[i] = clients[i].request(
                method, f"/{route}/{ws}", content=body, headers={"Content-Type": "application/json"}
            )
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out = []
    for info, res in zip(infos, results, strict=True):
        assert isinstance(res, httpx.Response), res
        out.append((info, res))
    return out


def check_round(
    api: Api, ws: str, outcome: list[tuple[dict[str, str], httpx.Response]]
) -> dict[str, str]:
    statuses = sorted(resp.status_code for _, resp in outcome)
    assert statuses == [200] + [423] * (CONTENDERS - 1), statuses
    (winner,) = [info for info, resp in outcome if resp.status_code == 200]
    for info, resp in outcome:
        body: dict[str, Any] = resp.json()
        if resp.status_code == 200:
            assert body["ID"] == info["ID"], body
            continue
        assert body["error"] == "locked", body
        assert body["message"], body
        assert body["ID"] == winner["ID"], (body, winner)
        assert body["Who"] == winner["Who"], (body, winner)
        assert body["Operation"] == winner["Operation"], body
    status = api.lock_status(ws).json()
    assert status["locked"] is True
    assert status["lock"]["ID"] == winner["ID"]
    return winner


def test_32_concurrent_locks_exactly_one_wins(clients: list[httpx.Client], api: Api) -> None:
    ws = f"race-{uuid.uuid4().hex[:8]}"
    for round_no in range(ROUNDS):
        winner = check_round(api, ws, race(clients, ws, round_no))
        # The winner's retry of its own LOCK is still a success (clients retry on 5xx).
        again = api.send_lock("LOCK", "lock", ws, winner)
        assert again.status_code == 200, (again.status_code, again.text)
        released = api.send_lock("UNLOCK", "unlock", ws, winner)
        assert released.status_code == 200, (released.status_code, released.text)
        assert released.json()["unlocked"] is True
        assert not api.is_locked(ws)


def test_32_concurrent_locks_on_a_new_workspace(clients: list[httpx.Client], api: Api) -> None:
    for round_no in range(FRESH_WORKSPACE_ROUNDS):
        ws = f"race-new-{uuid.uuid4().hex[:8]}"
        assert api.lock_status(ws).status_code == 404
        winner = check_round(api, ws, race(clients, ws, round_no))
        released = api.send_lock("POST", "unlock", ws, winner)
        assert released.status_code == 200, (released.status_code, released.text)
        assert not api.is_locked(ws)
