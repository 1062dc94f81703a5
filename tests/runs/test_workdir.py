"""prepare_workdir + backend_env in the environment the executor gives a step
(step_environment): whatever backend a configuration declares, a real init and apply
(embedded Terraform) write the state to the Blixard server named in the environment."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from blixard.runs.binary import TerraformBinary, resolve_binary
from blixard.runs.workdir import (
    OVERRIDE_NAME,
    UnsupportedConfig,
    backend_env,
    cli_config_text,
    override_file_name,
    prepare_workdir,
    step_environment,
)
from tests.harness import ServerProcess

RESOURCE = """
resource "terraform_data" "main" {
  input = "hello"
}

output "value" {
  value = terraform_data.main.output
}
"""


class Recorder:
    """An HTTP server on 127.0.0.1 that records every request it gets (it should get none)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if self.raw_requestline:
                    recorder.requests.append(self.raw_requestline.decode(errors="replace"))
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blixard")
    srv = ServerProcess(root / "data", log_path=root / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def terraform() -> TerraformBinary:
    return resolve_binary("embedded")


def run_terraform(
    terraform: TerraformBinary, work: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        terraform.command(f"-chdir={work}", *args, "-no-color"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def step_env(run_dir: Path, backend: dict[str, str]) -> dict[str, str]:
    """The environment the executor gives an unsandboxed step whose directory is `run_dir`
    (the configuration in run_dir/config), with the run's CLI configuration next to it."""
    (run_dir / "home").mkdir(parents=True, exist_ok=True)
    cache = run_dir.parent / "plugin-cache"
    cache.mkdir(exist_ok=True)
    cli_config = run_dir.parent / "terraform.rc"
    cli_config.write_text(cli_config_text(str(cache)))
    return step_environment(
        backend,
        run_dir=str(run_dir),
        tmpdir=str(run_dir / "home"),
        cli_config=str(cli_config),
        variables={},
    )


def history(server: ServerProcess, ws: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{server.url}/api/tofu/history/{ws}", timeout=10)
    assert answer.status_code == 200, answer.text
    versions: list[dict[str, object]] = answer.json()["versions"]
    return versions


def backend_block(case: str, elsewhere: str) -> str:
    return {
        "none": "",
        "local": 'terraform {\n  backend "local" {\n    path = "elsewhere.tfstate"\n  }\n}\n',
        "http": f"""terraform {{
  required_version = ">= 1.0"
  backend "http" {{
    address        = "{elsewhere}/state"
    lock_address   = "{elsewhere}/lock"
    unlock_address = "{elsewhere}/unlock"
    lock_method    = "POST"
    unlock_method  = "POST"
    username       = "someone"
    password       = "theirs"
    retry_max      = 0
  }}
}}
""",
        # If the override did not remove it, init would try app.terraform.io and fail.
        "cloud": """terraform {
  cloud {
    organization = "example-org"
    workspaces {
      name = "example"
    }
  }
}
""",
    }[case]


@pytest.mark.parametrize("case", ["none", "local", "http", "cloud"])
def test_env_configured_backend_is_used(
    case: str,
    tmp_path: Path,
    server: ServerProcess,
    recorder: Recorder,
    terraform: TerraformBinary,
) -> None:
    ws = f"workdir-{case}"
    source = tmp_path / "source"
    source.mkdir()
    (source / "main.tf").write_text(RESOURCE)
    if block := backend_block(case, recorder.url):
        (source / "backend.tf").write_text(block)
    # Leftovers of a local run must not be copied: they would change what init does.
    (source / ".terraform").mkdir()
    (source / ".terraform/terraform.tfstate").write_text('{"backend": {"type": "local"}}')
    (source / "terraform.tfstate").write_text("{not even json")
    (source / ".terraform.lock.hcl").write_text("# This file is maintained automatically\n")

    run_dir = tmp_path / "run"
    work = run_dir / "config"
    prepare_workdir(source, work)
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [
            ".terraform.lock.hcl",
            "main.tf",
            OVERRIDE_NAME,
            *(["backend.tf"] if block else []),
        ]
    )

    env = step_env(run_dir, backend_env(server.url, ws, "run-1", "ephemeral"))
    init = run_terraform(terraform, work, env, "init", "-input=false")
    assert 'Successfully configured the backend "http"' in init.stdout
    assert "Warning" not in init.stderr  # the run's own CLI configuration, none of the user's
    apply = run_terraform(terraform, work, env, "apply", "-auto-approve", "-input=false")
    assert "Apply complete! Resources: 1 added" in apply.stdout

    versions = history(server, ws)
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["lock_id"], "the apply held a lock through the lock address"
    assert recorder.requests == []  # the user's own backend address was never contacted
    assert not (work / "terraform.tfstate").exists()
    assert not (work / "elsewhere.tfstate").exists()
    # Neither the init cache (TF_DATA_DIR) nor anything else the run wrote holds the credential.
    assert (run_dir / "tfdata").is_dir()
    for path in run_dir.rglob("*"):
        if path.is_file() and not path.name.startswith("terraform-provider"):
            assert b"ephemeral" not in path.read_bytes(), path


def test_saved_plan_applies_with_the_credential_of_its_own_environment(
    tmp_path: Path, server: ServerProcess, terraform: TerraformBinary
) -> None:
    """The executor plans in one process and applies the saved plan in another."""
    ws = "workdir-saved-plan"
    source = tmp_path / "source"
    source.mkdir()
    (source / "main.tf").write_text(RESOURCE)
    run_dir = tmp_path / "run"
    work = run_dir / "config"
    prepare_workdir(source, work)
    plan_env = step_env(run_dir, backend_env(server.url, ws, "run-2", "plan-secret"))
    run_terraform(terraform, work, plan_env, "init", "-input=false")
    run_terraform(terraform, work, plan_env, "plan", "-out=run.tfplan", "-input=false")
    assert b"plan-secret" not in (work / "run.tfplan").read_bytes()
    apply_env = step_env(run_dir, backend_env(server.url, ws, "run-2", "apply-secret"))
    run_terraform(terraform, work, apply_env, "apply", "-input=false", "run.tfplan")
    assert [v["version"] for v in history(server, ws)] == [1]


def test_later_user_override_does_not_win(
    tmp_path: Path, server: ServerProcess, terraform: TerraformBinary
) -> None:
    """Override files apply in name order; ours is named to come after the user's."""
    ws = "workdir-user-override"
    source = tmp_path / "source"
    source.mkdir()
    (source / "main.tf").write_text(RESOURCE)
    (source / "zzzz_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    run_dir = tmp_path / "run"
    work = run_dir / "config"
    prepare_workdir(source, work)
    ours = "zzzz_override_blixard_override.tf"
    assert (work / ours).exists() and not (work / OVERRIDE_NAME).exists()
    env = step_env(run_dir, backend_env(server.url, ws, "run-3", "pw"))
    run_terraform(terraform, work, env, "init", "-input=false")
    run_terraform(terraform, work, env, "apply", "-auto-approve", "-input=false")
    assert [v["version"] for v in history(server, ws)] == [1]
    assert not (work / "terraform.tfstate").exists()


def test_override_file_name() -> None:
    assert override_file_name(["main.tf", "backend.tf"]) == OVERRIDE_NAME
    assert override_file_name(["override.tf", "a_override.tf"]) == OVERRIDE_NAME
    for last in ("zzzz_override.tf", "zzzz_override.tf.json", "~x_override.tofu"):
        name = override_file_name(["main.tf", last])
        assert name > last and name.endswith("_override.tf"), name


def test_backend_env() -> None:
    env = backend_env("https://blixard.internal:8443/", "team/app", "run-7", "s3cret")
    api = "https://blixard.internal:8443/api/tofu"
    assert env == {
        "TF_HTTP_ADDRESS": f"{api}/state/team%2Fapp",
        "TF_HTTP_UPDATE_METHOD": "POST",
        "TF_HTTP_LOCK_ADDRESS": f"{api}/lock/team%2Fapp",
        "TF_HTTP_LOCK_METHOD": "LOCK",
        "TF_HTTP_UNLOCK_ADDRESS": f"{api}/unlock/team%2Fapp",
        "TF_HTTP_UNLOCK_METHOD": "UNLOCK",
        "TF_HTTP_USERNAME": "run-7",
        "TF_HTTP_PASSWORD": "s3cret",
        "TF_HTTP_RETRY_MAX": "3",
        "TF_HTTP_RETRY_WAIT_MIN": "1",
        "TF_HTTP_RETRY_WAIT_MAX": "5",
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,
    }
    with_ca = backend_env("http://x", "ws", "u", "p", ca_certificate_pem="PEM")
    assert with_ca["TF_HTTP_CLIENT_CA_CERTIFICATE_PEM"] == "PEM"


def test_a_step_inherits_nothing_of_the_server_but_path_locale_and_tls_roots() -> None:
    """The server's TF_* settings would redirect or reconfigure a run, its BLIXARD_* ones are
    secrets; the run's variables cannot replace the backend or the run's own settings."""
    inherited = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "SSL_CERT_FILE": "/etc/roots.pem",
        "HOME": "/root",
        "TF_WORKSPACE": "prod",
        "TF_CLI_ARGS_apply": "-target=x",
        "TF_HTTP_ADDRESS": "http://elsewhere",
        "TF_DATA_DIR": "/elsewhere",
        "TF_PLUGIN_CACHE_DIR": "/cache",
        "BLIXARD_ADMIN_KEY": "admin-secret",
        "BLIXARD_ENCRYPTION_KEY": "key",
        "CHECKPOINT_DISABLE": "",
    }
    backend = backend_env("http://127.0.0.1:1", "ws", "u", "p")
    env = step_environment(
        backend,
        run_dir="/run/blixard/work",
        tmpdir="/tmp",
        cli_config="/run/blixard/terraform.rc",
        variables={"region": "eu", "HTTP_PASSWORD": "no"},
        inherited=inherited,
    )
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "SSL_CERT_FILE": "/etc/roots.pem",
        "HOME": "/run/blixard/work/home",
        "TMPDIR": "/tmp",
        **backend,
        "TF_DATA_DIR": "/run/blixard/work/tfdata",
        "TF_CLI_CONFIG_FILE": "/run/blixard/terraform.rc",
        "TF_VAR_region": "eu",
        "TF_VAR_HTTP_PASSWORD": "no",
    }
    assert env["TF_HTTP_PASSWORD"] == "p" and env["CHECKPOINT_DISABLE"] == "1"


def test_copy_rules(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "modules/app/.terraform").mkdir(parents=True)
    (source / "modules/app/main.tf").write_text("# module\n")
    (source / "modules/app/.terraform/junk").write_text("x")
    (source / ".git").mkdir()
    (source / ".git/HEAD").write_text("ref")
    (source / "terraform.tfstate.d/dev").mkdir(parents=True)
    (source / "main.tf").write_text(RESOURCE)
    (source / "prod.tfvars").write_text('a = "b"\n')
    (source / "terraform.tfstate.backup").write_text("{}")
    (source / "hook.sh").write_text("#!/bin/sh\n")
    (source / "hook.sh").chmod(0o755)
    (source / "linked.tf").symlink_to("main.tf")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "vars.tf").write_text("# shared\n")
    (source / "shared").symlink_to(shared)  # outside the tree: its content is copied
    work = tmp_path / "work"
    prepare_workdir(source, work)
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert files == sorted(
        [
            OVERRIDE_NAME,
            "hook.sh",
            "linked.tf",
            "main.tf",
            "modules",
            "modules/app",
            "modules/app/main.tf",
            "prod.tfvars",
            "shared",
            "shared/vars.tf",
        ]
    )
    assert os.readlink(work / "linked.tf") == "main.tf"
    assert not (work / "shared").is_symlink()
    assert os.access(work / "hook.sh", os.X_OK)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedConfig, match="does not exist"):
        prepare_workdir(tmp_path / "missing", tmp_path / "w1")
    empty = tmp_path / "empty"
    (empty / "modules").mkdir(parents=True)
    (empty / "modules/main.tf").write_text("")
    (empty / "README.md").write_text("")
    with pytest.raises(UnsupportedConfig, match=r"no Terraform configuration files"):
        prepare_workdir(empty, tmp_path / "w2")
    (empty / "main.tf").write_text("")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(FileExistsError):
        prepare_workdir(empty, busy)
