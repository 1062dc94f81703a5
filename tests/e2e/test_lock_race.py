"""32 clients race for one lock: exactly one wins, the 31 others are told who holds it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.tfkit import Api, LockOutcome, lock_race, race_winner
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

CONTENDERS = 32
ROUNDS = 10
FRESH_WORKSPACE_ROUNDS = 3


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


def race(clients: list[httpx.Client], ws: str, round_no: int) -> LockOutcome:
    return lock_race(clients, ws, round_no, who=lambda i: f"racer-{i}@host")


def check_round(api: Api, ws: str, outcome: LockOutcome) -> dict[str, str]:
    winner = race_winner(outcome)
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
