"""The web UI in a real browser, against a live server holding what real Terraform wrote."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.tfkit import lock_info, resource_config, unique_name
from tests.ui.conftest import AXE_JS, Site, screenshot, sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data(site: Site) -> dict[str, str]:
    """team-a-app with two versions, team-b-db with one: written by `terraform apply`."""
    team_a = unique_name("team-a-app")
    team_b = unique_name("team-b-db")
    proj = site.apply(team_a, "one")
    proj.write(resource_config("two"))
    proj.run("apply", "-auto-approve", "-input=false")
    site.apply(team_b, "secret-project")
    return {"team_a": team_a, "team_b": team_b}


def history(site: Site, ws: str) -> list[dict[str, Any]]:
    with site.api() as api:
        resp = api.get(f"/history/{ws}")
        assert resp.status_code == 200, resp.text
        versions: list[dict[str, Any]] = resp.json()["versions"]
        return versions


def take_lock(site: Site, ws: str, who: str) -> dict[str, str]:
    info = lock_info(f"ui-{uuid.uuid4()}", who=who)
    with site.api() as api:
        resp = api.post(f"/lock/{ws}", content=json.dumps(info))
        assert resp.status_code == 200, resp.text
    return info


def lock_of(site: Site, ws: str) -> dict[str, Any] | None:
    with site.api() as api:
        body = api.get(f"/lock/{ws}").json()
        lock: dict[str, Any] | None = body["lock"] if body["locked"] else None
        return lock


def release(site: Site, ws: str) -> None:
    with site.api() as api:
        api.delete(f"/lock/{ws}")


# ------------------------------------------------------------------ sign in and out


def test_sign_in_and_out(site: Site, data: dict[str, str], new_page: Any) -> None:
    page = new_page()
    page.goto("/ui/")
    expect(page).to_have_url(f"{site.url}/ui/login?next=%2Fui%2F")
    page.fill("#key", "not-a-key")
    page.click("form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid")

    sign_in(page, site.keys["admin"])
    expect(page.locator("h1")).to_have_text("Workspaces")
    expect(page.locator(f"tr[data-ws='{data['team_a']}']")).to_be_visible()
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "blixard_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert site.keys["admin"] not in cookie["value"]  # sealed, not merely encoded
    assert cookie["expires"] > time.time() + 3600

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{site.url}/ui/login")
    page.goto(f"/ui/workspaces/{data['team_a']}")
    expect(page).to_have_url(f"{site.url}/ui/login?next=%2Fui%2Fworkspaces%2F{data['team_a']}")


def test_a_revoked_key_ends_its_sessions(site: Site, data: dict[str, str], new_page: Any) -> None:
    with site.api() as api:
        resp = api.post("/keys", json={"name": f"short-{uuid.uuid4().hex[:6]}", "role": "reader"})
        assert resp.status_code == 201
        name, secret = resp.json()["key"]["name"], resp.json()["secret"]
        page = new_page()
        sign_in(page, secret)
        expect(page.locator(f"tr[data-ws='{data['team_a']}']")).to_be_visible()
        assert api.delete(f"/keys/{name}").status_code == 200
    page.goto("/ui/")
    expect(page.locator("h1")).to_have_text("Sign in")


# ------------------------------------------------------------------ roles and scopes


def test_reader_sees_no_force_unlock_rollback_or_key_buttons(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    ws = data["team_a"]
    take_lock(site, ws, "someone@else")
    try:
        page = new_page()
        sign_in(page, site.keys["reader"])
        page.goto(f"/ui/workspaces/{ws}")
        expect(page.locator("#lock-who")).to_have_text("someone@else")
        expect(page.locator("tr[data-version]")).to_have_count(2)
        assert page.locator("#force-unlock").count() == 0
        assert page.locator("a.rollback").count() == 0
        assert page.get_by_text("Delete workspace").count() == 0
        assert page.get_by_role("link", name="Keys").count() == 0
        assert page.get_by_role("link", name="Audit").count() == 0
        # The server refuses what the page hides.
        for path in (f"/ui/workspaces/{ws}/unlock", f"/ui/workspaces/{ws}/rollback/1", "/ui/keys"):
            response = page.goto(path)
            assert response is not None and response.status == 403, path
            expect(page.locator("h1")).to_have_text("Not allowed")
        assert lock_of(site, ws) is not None
    finally:
        release(site, ws)


def test_writer_scoped_to_team_a_never_sees_team_b(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    page = new_page()
    sign_in(page, site.keys["writer-a"])
    expect(page.locator(f"tr[data-ws='{data['team_a']}']")).to_be_visible()
    assert "team-b" not in page.content()
    page.goto("/ui/?q=team-b")
    expect(page.locator("tr[data-ws]")).to_have_count(0)
    assert "team-b-db" not in page.content()
    response = page.goto(f"/ui/workspaces/{data['team_b']}")
    assert response is not None and response.status == 404  # exactly like a missing one
    for path in (
        f"/ui/workspaces/{data['team_b']}/runs",
        f"/ui/workspaces/{data['team_b']}/unlock",
    ):
        response = page.goto(path)
        assert response is not None and response.status in (403, 404), path
        assert data["team_b"] not in page.locator("main").inner_text() or (
            "does not exist" in page.locator("main").inner_text()
        )
    page.goto("/ui/cluster")
    assert "team-b" not in page.content()

    # The live event stream carries team-a's changes to this key, never team-b's.
    events: list[dict[str, Any]] = []
    with httpx.Client(base_url=site.url, timeout=30.0) as client:
        headers = {"Authorization": f"Bearer {site.keys['writer-a']}"}
        with client.stream("GET", "/api/tofu/events", headers=headers) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:") and next(lines) == "event: ready"
            take_lock(site, data["team_b"], "b@team")
            release(site, data["team_b"])
            take_lock(site, data["team_a"], "a@team")
            release(site, data["team_a"])
            for line in lines:
                if line.startswith('data: {"'):
                    events.append(json.loads(line[6:]))
                    if len(events) == 2:
                        break
    assert [(e["type"], e["workspace"], e["locked"]) for e in events] == [
        ("lock", data["team_a"], True),
        ("lock", data["team_a"], False),
    ]


# ------------------------------------------------------------------ locks, live updates


def test_force_unlock_from_the_ui_lets_a_waiting_terraform_apply_through(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    ws = unique_name("team-a-waiter")
    proj = site.apply(ws, "one")
    page = new_page()
    sign_in(page, site.keys["admin"])
    page.goto(f"/ui/workspaces/{ws}")
    expect(page.locator("#lock-free")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-live", "connected")

    stuck = take_lock(site, ws, "ci-runner@elsewhere")
    # The open page shows the new lock without a reload.
    expect(page.locator("#lock-who")).to_have_text("ci-runner@elsewhere")

    proj.write(resource_config("two"))
    waiting = proj.start("apply", "-auto-approve", "-input=false", "-lock-timeout=120s")
    try:
        time.sleep(2)
        assert waiting.poll() is None, proj.background_output()

        page.click("#force-unlock")
        expect(page.locator("h1")).to_contain_text("Force unlock")
        expect(page.locator("main")).to_contain_text(stuck["ID"])
        page.get_by_role("button", name="Force unlock").click()
        expect(page.locator("main .notice")).to_contain_text("released")

        assert waiting.wait(90) == 0, proj.background_output()
        assert "Apply complete!" in proj.background_output()
    finally:
        proj.cleanup()
    latest = history(site, ws)[0]
    assert latest["version"] == 2 and latest["lock_id"] != stuck["ID"]
    # The page follows the apply's new version live as well, with the lock holder's Who.
    expect(page.locator("#head-version")).to_have_text("2")
    holder = page.locator("tr[data-version='2'] td").nth(3)
    expect(holder).not_to_have_text("—")
    assert holder.inner_text() == latest["who"], (holder.inner_text(), latest)
    with site.api() as api:
        events = api.get("/audit", params={"workspace": ws, "action": "lock.force_unlock"})
        (event,) = events.json()["events"]
        assert event["key"] == "admin" and event["lock_id"] == stuck["ID"], event


def test_rollback_from_the_ui_creates_a_new_version(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    ws = unique_name("team-a-rollback")
    proj = site.apply(ws, "one")
    proj.write(resource_config("two"))
    proj.run("apply", "-auto-approve", "-input=false")
    before = history(site, ws)
    assert [v["version"] for v in before] == [2, 1]

    page = new_page()
    sign_in(page, site.keys["admin"])
    page.goto(f"/ui/workspaces/{ws}")
    page.get_by_role("link", name="Roll back to version 1").click()
    expect(page.locator("h1")).to_contain_text("to version 1")
    expect(page.locator("main")).to_contain_text("new version 3")
    expect(page.locator("#count-changed")).to_have_text("1")  # the diff it will make
    row = page.locator("tr[data-attribute='input.value']")
    expect(row.locator("td.before")).to_contain_text('"two"')
    expect(row.locator("td.after")).to_contain_text('"one"')
    page.get_by_role("button", name="Roll back to version 1").click()
    expect(page.locator("main .notice")).to_contain_text("Rolled back")
    expect(page.locator("tr[data-version='3']")).to_contain_text("rollback (from 1)")

    after = history(site, ws)
    assert after[0]["version"] == 3 and after[0]["source"] == "rollback"
    assert after[0]["rolled_back_from"] == 1 and after[0]["serial"] == before[0]["serial"] + 1
    with site.api() as api:
        state = api.get(f"/state/{ws}").json()
    assert state["resources"][0]["instances"][0]["attributes"]["input"]["value"] == "one"
    # Terraform reads the rolled-back state as current: its plan changes "one" back to "two".
    assert '"one" -> "two"' in proj.run("plan", "-input=false").flat


def test_an_admin_deletes_and_restores_a_workspace(site: Site, new_page: Any) -> None:
    ws = unique_name("team-a-deleted")
    site.apply(ws, "one")
    page = new_page()
    sign_in(page, site.keys["admin"])
    page.goto(f"/ui/workspaces/{ws}")
    page.get_by_role("link", name="Delete workspace…").click()
    page.get_by_role("button", name="Delete workspace").click()
    expect(page.locator("main .notice")).to_contain_text("deleted")
    assert page.locator(f"tr[data-ws='{ws}']").count() == 0
    with site.api() as api:
        assert api.get(f"/history/{ws}").status_code == 404
    page.check("#deleted")
    page.fill("#q", ws)
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name=ws).click()
    page.get_by_role("button", name="Restore workspace").click()
    expect(page.locator("main .notice")).to_contain_text("restored")
    expect(page.locator("tr[data-version]")).to_have_count(1)
    with site.api() as api:
        assert api.get(f"/history/{ws}").status_code == 200


def test_a_form_post_without_the_csrf_token_is_refused(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    ws = data["team_a"]
    info = take_lock(site, ws, "keep@me")
    try:
        page = new_page()
        sign_in(page, site.keys["admin"])
        request = page.context.request
        for form in ({}, {"csrf": "0" * 64}):
            resp = request.post(f"/ui/workspaces/{ws}/unlock", form=form, max_redirects=0)
            assert resp.status == 403, (resp.status, resp.text()[:300])
            assert "security token" in resp.text()
        resp = request.post(f"/ui/workspaces/{ws}/rollback/1", form={}, max_redirects=0)
        assert resp.status == 403
        lock = lock_of(site, ws)
        assert lock is not None and lock["ID"] == info["ID"]
        assert [v["version"] for v in history(site, ws)] == [2, 1]
        # A token from another session is refused as well.
        other = new_page()
        sign_in(other, site.keys["admin"])
        other.goto(f"/ui/workspaces/{ws}/unlock")
        token = other.locator("input[name=csrf]").first.get_attribute("value")
        resp = request.post(f"/ui/workspaces/{ws}/unlock", form={"csrf": token or ""})
        assert resp.status == 403
        assert lock_of(site, ws) is not None
    finally:
        release(site, ws)


def test_an_admin_creates_a_key_sees_its_secret_once_and_revokes_it(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    name = f"made-in-ui-{uuid.uuid4().hex[:6]}"
    page = new_page()
    sign_in(page, site.keys["admin"])
    page.goto("/ui/keys")
    page.fill("#k-name", name)
    page.select_option("#k-role", "reader")
    page.fill("#k-ws", "team-a-*")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret, "no secret shown"
    screenshot(page, "keys-created")
    page.goto("/ui/keys")
    assert secret not in page.content()
    # The new key works, with its scope.
    other = new_page()
    sign_in(other, secret)
    expect(other.locator(f"tr[data-ws='{data['team_a']}']")).to_be_visible()
    assert data["team_b"] not in other.content()

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Revoke {name}").click()
    expect(page.locator("main .notice")).to_contain_text("revoked")
    other.goto("/ui/")
    expect(other.locator("h1")).to_have_text("Sign in")

    page.goto("/ui/audit?action=keys.manage&key=admin")
    expect(page.locator("main table")).to_contain_text(f"created key '{name}'")
    expect(page.locator("main table")).to_contain_text(f"revoked key '{name}'")


# ------------------------------------------------------------------ explorer pages


def test_compare_two_versions_shows_counts_and_the_changed_attribute(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    ws = data["team_a"]
    page = new_page()
    sign_in(page, site.keys["reader"])
    page.goto(f"/ui/workspaces/{ws}")
    page.select_option("#cmp-from", "1")
    page.select_option("#cmp-to", "2")
    page.get_by_role("button", name="Compare").click()
    expect(page).to_have_url(f"{site.url}/ui/workspaces/{ws}/diff?from=1&to=2")
    expect(page.locator("h1")).to_have_text(f"{ws} v1 → {ws} v2")
    counts = {k: page.locator(f"#count-{k}").inner_text() for k in ("added", "removed", "changed")}
    assert counts == {"added": "0", "removed": "0", "changed": "1"}, counts
    row = page.locator("details.kind-changed tr[data-attribute='input.value']")
    expect(row.locator("td.before")).to_contain_text('"one"')
    expect(row.locator("td.after")).to_contain_text('"two"')
    screenshot(page, "diff")
    # The URL is the page: opened afresh, it shows the same comparison.
    fresh = new_page()
    sign_in(fresh, site.keys["reader"])
    fresh.goto(f"/ui/workspaces/{ws}/diff?from=1&to=2")
    expect(fresh.locator("#count-changed")).to_have_text("1")
    # Two workspaces: team-b's only version against team-a's current one.
    fresh.goto(f"/ui/workspaces/{ws}/diff?from_workspace={data['team_b']}")
    expect(fresh.locator("h1")).to_have_text(f"{data['team_b']} v1 → {ws} v2")
    row = fresh.locator("details.kind-changed tr[data-attribute='input.value']")
    expect(row.locator("td.before")).to_contain_text('"secret-project"')
    expect(row.locator("td.after")).to_contain_text('"two"')
    # A scoped writer cannot compare with a workspace outside its scope.
    writer = new_page()
    sign_in(writer, site.keys["writer-a"])
    response = writer.goto(f"/ui/workspaces/{ws}/diff?from_workspace={data['team_b']}")
    assert response is not None and response.status == 404
    assert "secret-project" not in writer.content()


def test_resources_and_outputs_mask_sensitive_values_until_an_operator_reveals_them(
    site: Site, new_page: Any, axe_source: str
) -> None:
    ws = unique_name("team-a-outputs")
    proj = site.project("tf-outputs", ws)
    proj.write(
        resource_config(
            "visible", extra='output "token" {\n  value = "hunter2"\n  sensitive = true\n}\n'
        )
    )
    proj.run("init", "-input=false")
    proj.run("apply", "-auto-approve", "-input=false")

    reader = new_page()
    sign_in(reader, site.keys["reader"])
    reader.goto(f"/ui/workspaces/{ws}/outputs")
    expect(reader.locator("tr[data-output='token'] .value")).to_have_text("(sensitive)")
    expect(reader.locator("tr[data-output='value'] .value")).to_contain_text("visible")
    assert reader.locator("#reveal").count() == 0 and "hunter2" not in reader.content()
    refused = reader.context.request.post(f"/ui/workspaces/{ws}/outputs", form={})
    assert refused.status == 403 and "hunter2" not in refused.text()

    reader.goto(f"/ui/workspaces/{ws}/resources")
    reader.get_by_role("link", name="terraform_data.main").click()
    expect(reader.locator("h1")).to_have_text("terraform_data.main")
    expect(reader.locator("pre.attributes")).to_contain_text('"visible"')
    expect(reader.locator("#timeline-h + div")).to_contain_text("appeared")

    operator = new_page(bypass_csp=True)  # for axe-core only
    sign_in(operator, site.keys["operator"])
    operator.goto(f"/ui/workspaces/{ws}/outputs")
    screenshot(operator, "outputs")
    assert not _axe(operator, axe_source)
    operator.click("#reveal")
    expect(operator.locator("tr[data-output='token'] .value")).to_contain_text("hunter2")
    with site.api() as api:
        events = api.get("/audit", params={"workspace": ws, "action": "sensitive.reveal"}).json()
    # The reader's attempt is on record as denied; the operator's reveal as done.
    outcomes = sorted((e["key"], e["outcome"]) for e in events["events"])
    assert outcomes == [("ui-operator", "ok"), ("ui-reader", "denied")], events
    (event,) = [e for e in events["events"] if e["outcome"] == "ok"]
    assert "token" in event["detail"], event


def test_search_and_duplicates_stay_within_the_keys_scope(
    site: Site, data: dict[str, str], new_page: Any
) -> None:
    twin, mirror = unique_name("team-a-twin"), unique_name("team-a-mirror")
    with site.api() as api:
        for source, copy in ((data["team_a"], twin), (data["team_b"], mirror)):
            body = api.get(f"/state/{source}").content
            assert api.post(f"/state/{copy}", content=body).status_code == 200
        b_id = api.get(f"/state/{data['team_b']}").json()["resources"][0]["instances"][0]
    b_value = b_id["attributes"]["id"]

    writer = new_page()
    sign_in(writer, site.keys["writer-a"])
    writer.goto("/ui/search?type=terraform_data")
    found = writer.locator("#matches tr[data-match]")
    expect(found.first).to_be_visible()
    workspaces = {found.nth(i).get_attribute("data-match") for i in range(found.count())}
    assert data["team_a"] in workspaces and twin in workspaces and mirror in workspaces
    assert all(ws.startswith("team-a-") for ws in workspaces), workspaces
    assert "team-b" not in writer.content()
    writer.goto("/ui/search/duplicates")
    expect(writer.locator("#duplicates")).to_contain_text(twin)
    # team-b holds the mirror's id too, but out of scope it neither appears nor counts.
    assert b_value not in writer.content() and "team-b" not in writer.content()

    admin = new_page()
    sign_in(admin, site.keys["admin"])
    admin.goto("/ui/search/duplicates")
    row = admin.locator("#duplicates tr", has_text=b_value)
    expect(row).to_contain_text(data["team_b"])
    expect(row).to_contain_text(mirror)
    screenshot(admin, "duplicates")


# ------------------------------------------------------------------ runs


def test_a_runs_log_streams_live_then_approve_applies_it(
    site: Site, data: dict[str, str], new_page: Any, axe_source: str
) -> None:
    ws = unique_name("team-a-run")
    config = site.root / "plans" / ws
    config.mkdir(parents=True)
    (config / "main.tf").write_text(RUN_CONFIG_TEXT)
    page = new_page(bypass_csp=True)  # for axe-core only
    sign_in(page, site.keys["operator"])
    page.goto(f"/ui/workspaces/{ws}/runs")
    page.fill("#p-dir", str(config))
    page.fill("#p-vars", "sleep=6")
    page.get_by_role("button", name="Plan").click()
    page.wait_for_url("**/ui/runs/run-*")
    plan_id = page.url.rsplit("/", 1)[1]
    # Planned, with its summary and the approve button, without a reload.
    expect(page.locator("#run-status")).to_have_text("planned", timeout=120_000)
    expect(page.locator(".plan-summary")).to_contain_text("1 to add")
    expect(page.locator("#approve")).to_be_visible()
    with site.api("operator") as api:
        run = api.get(f"/plan/{plan_id}").json()
    assert run["status"] == "planned" and run["variables"] == ["sleep"], run
    assert run["created_by"] == "ui-operator", run
    screenshot(page, "run-planned")
    page.click("#approve")
    # While the apply sleeps in its provisioner, its output is already on the page.
    expect(page.locator("#run-log")).to_contain_text("provisioning-step", timeout=60_000)
    assert page.locator("#run-status").inner_text() == "applying"
    screenshot(page, "run-applying")
    expect(page.locator("#run-status")).to_have_text("applied", timeout=90_000)
    expect(page.locator("#run-log")).to_contain_text("Apply complete!")
    assert page.locator("#approve").count() == 0
    (latest,) = history(site, ws)
    assert latest["version"] == 1
    assert not _axe(page, axe_source)


def test_the_plan_form_refuses_directories_outside_the_plan_roots(
    site: Site, new_page: Any
) -> None:
    ws = unique_name("team-a-refused")
    page = new_page()
    sign_in(page, site.keys["operator"])
    page.goto(f"/ui/workspaces/{ws}/runs")
    # The form is in the page only once, not in its title (which would show its CSRF token).
    expect(page).to_have_title(f"Runs of {ws} · Blixard")
    assert page.locator("#p-dir").count() == 1
    page.fill("#p-dir", "/etc")
    page.get_by_role("button", name="Plan").click()
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.locator("main")).to_contain_text("outside BLIXARD_PLAN_ROOTS")
    page.goto(f"/ui/workspaces/{ws}/runs")
    page.fill("#p-vars", "no equals sign")
    page.get_by_role("button", name="Plan").click()
    expect(page.locator("h1")).to_have_text("Bad request")
    with site.api() as api:
        assert api.get(f"/plans/{ws}").json()["plans"] == []
    reader = new_page()
    sign_in(reader, site.keys["reader"])
    reader.goto(f"/ui/workspaces/{ws}/runs")
    expect(reader).to_have_title(f"Runs of {ws} · Blixard")
    assert reader.locator("#p-dir").count() == 0


RUN_CONFIG_TEXT = """
variable "sleep" {
  type    = number
  default = 0
}

resource "terraform_data" "main" {
  input = "from-a-run"

  provisioner "local-exec" {
    command = "echo provisioning-step && sleep ${var.sleep}"
  }
}
"""


# ------------------------------------------------------------------ every page


def pages_of(site: Site, data: dict[str, str]) -> dict[str, str]:
    ws = data["team_a"]
    return {
        "workspaces": "/ui/",
        "workspace": f"/ui/workspaces/{ws}",
        "confirm-rollback": f"/ui/workspaces/{ws}/rollback/1",
        "confirm-delete": f"/ui/workspaces/{ws}/delete",
        "runs": f"/ui/workspaces/{ws}/runs",
        "diff": f"/ui/workspaces/{ws}/diff?from=1&to=2",
        "resources": f"/ui/workspaces/{ws}/resources",
        "resource": f"/ui/workspaces/{ws}/resource?address=terraform_data.main",
        "search": "/ui/search?type=terraform_data",
        "duplicates": "/ui/search/duplicates",
        "audit": "/ui/audit",
        "keys": "/ui/keys",
        "cluster": "/ui/cluster",
        "not-found": "/ui/no-such-page",
    }


@pytest.fixture
def axe_source() -> Iterator[str]:
    if not AXE_JS.exists():
        pytest.skip(f"{AXE_JS} is missing: scripts/test.sh installs axe-core with npm")
    yield AXE_JS.read_text()


def test_every_page_passes_axe_and_is_keyboard_navigable(
    site: Site, data: dict[str, str], new_page: Any, axe_source: str
) -> None:
    locked, deleted = unique_name("team-a-locked"), unique_name("team-a-gone")
    with site.api() as api:
        for ws in (locked, deleted):
            body = api.get(f"/state/{data['team_a']}").content
            assert api.post(f"/state/{ws}", content=body).status_code == 200
        assert api.delete(f"/workspaces/{deleted}").status_code == 200
    take_lock(site, locked, "axe@test")
    extra = {
        "confirm-unlock": f"/ui/workspaces/{locked}/unlock",
        "deleted": f"/ui/workspaces/{deleted}",
    }
    page = new_page(bypass_csp=True)
    page.goto("/ui/login")
    problems = _axe(page, axe_source)
    screenshot(page, "login")
    sign_in(page, site.keys["admin"])
    for name, path in {**pages_of(site, data), **extra}.items():
        response = page.goto(path)
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp, csp
        problems += [f"{name}: {p}" for p in _axe(page, axe_source)]
        _check_keyboard(page, name, path)
        screenshot(page, name)
    narrow = new_page(360, 740)
    sign_in(narrow, site.keys["admin"])
    for name, path in pages_of(site, data).items():
        narrow.goto(path)
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{name} scrolls sideways at 360 px ({width} px wide)"
        if name in ("workspaces", "workspace", "diff"):
            screenshot(narrow, f"{name}-360px")
    for dark in (True,):
        page.emulate_media(color_scheme="dark" if dark else "light")
        page.goto(pages_of(site, data)["workspace"])
        problems += [f"workspace (dark): {p}" for p in _axe(page, axe_source)]
        screenshot(page, "workspace-dark")
    assert not problems, "\n".join(problems)


def _axe(page: Any, source: str) -> list[str]:
    page.add_script_tag(content=source)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _check_keyboard(page: Any, name: str, path: str) -> None:
    """The first Tab reaches the skip link, which moves focus to the content; every link and
    control is reachable with Tab and shows a focus outline."""
    page.goto(path)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip", name
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main", name
    focusable = page.evaluate(
        "Array.from(document.querySelectorAll('a[href], button, input:not([type=hidden]), "
        'select, [tabindex="0"]\')).filter(e => e.offsetParent !== null).length'
    )
    page.goto(path)
    reached: set[str] = set()
    for _ in range(focusable):
        page.keyboard.press("Tab")
        info = page.evaluate(
            "(() => { const e = document.activeElement; const s = getComputedStyle(e);"
            " return [e.outerHTML.slice(0, 160), s.outlineStyle, s.outlineWidth, e.tagName]; })()"
        )
        if info[3] == "BODY":
            break
        reached.add(info[0])
        assert info[1] != "none" and info[2] != "0px", f"{name}: no focus outline on {info[0]}"
    assert len(reached) >= focusable, f"{name}: Tab reached {len(reached)} of {focusable}"
