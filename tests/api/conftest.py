"""In-process API tests: the real app on a real store, once per engine.

Every test that builds an app runs on SQLite (a temp dir) and on etcd (its own key prefix on a
shared 3-member cluster, tests/etcd_cluster.py). BLIXARD_TEST_ENGINE=sqlite or =etcd runs one.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from blixard.api.app import asgi_app, create_app
from blixard.config import Settings
from tests.harness import TEST_ENGINES, shared_etcd_url

ClientFactory = Callable[..., TestClient]


@pytest.fixture(params=TEST_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The storage engine behind the apps a test builds."""
    return str(request.param)


@pytest.fixture
def make_client(tmp_path: Path, engine: str) -> Iterator[ClientFactory]:
    """Start an app (lifespan included) with optional settings overrides."""
    opened: list[TestClient] = []

    def factory(*, framework_only: bool = False, **overrides: Any) -> TestClient:
        """An app on fresh storage, or on an earlier app's with its `data_dir` (stop it
        first with `client.__exit__(None, None, None)`)."""
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(opened)}")
        if engine == "etcd" and "storage_url" not in overrides:
            prefix = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
            overrides["storage_url"] = shared_etcd_url(f"blixard-api-test/{prefix}")
        settings = Settings.load({"data_dir": data_dir, **overrides})
        app = create_app(settings)
        client = TestClient(asgi_app(app, fast_path=not framework_only))
        client.__enter__()
        client.app_state = app.state  # type: ignore[attr-defined]
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture(params=["fast-path", "framework"])
def client(request: pytest.FixtureRequest, make_client: ClientFactory) -> TestClient:
    """Every protocol behaviour must hold with and without the fast-path dispatcher."""
    return make_client(framework_only=request.param == "framework")


def tfstate(serial: int, lineage: str = "lin-1", resources: int = 2, salt: str = "") -> bytes:
    """A state shaped like Terraform writes it."""
    document = {
        "version": 4,
        "terraform_version": "1.15.5",
        "serial": serial,
        "lineage": lineage,
        "outputs": {},
        "resources": [
            {
                "mode": "managed",
                "type": "terraform_data",
                "name": f"r{i}",
                "provider": 'provider["terraform.io/builtin/terraform"]',
                "instances": [{"attributes": {"id": f"{salt}{i}"}}],
            }
            for i in range(resources)
        ],
        "check_results": None,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def lock_info(lock_id: str | None = None, who: str = "alice@host") -> dict[str, str]:
    return {
        "ID": lock_id or str(uuid.uuid4()),
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": who,
        "Version": "1.15.5",
        "Created": "2026-11-25T10:00:00.000000Z",
        "Path": "",
    }


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def snapshot(client: TestClient, ws: str) -> dict[str, Any]:
    """Everything observable about a workspace, to prove a refused request changed nothing."""
    state = client.get(f"/api/tofu/state/{ws}")
    lock = client.get(f"/api/tofu/lock/{ws}")
    history = client.get(f"/api/tofu/history/{ws}", params={"limit": 1000})
    listing = client.get("/api/tofu/workspaces")
    lock_status = lock.json()
    lock_status.pop("age_seconds", None)  # the one field that moves by itself
    return {
        "state": (state.status_code, state.content),
        "lock": (lock.status_code, lock_status),
        "history": (history.status_code, history.json()),
        "workspaces": listing.json(),
    }
