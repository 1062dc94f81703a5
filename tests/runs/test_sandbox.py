"""The run sandbox (real bubblewrap), the CLI configuration runs get, the single config_dir
walk, and the redaction of variable values from logs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blixard.domain.runs import PlanSummary
from blixard.runs.archive import make_archive
from blixard.runs.binary import resolve_binary
from blixard.runs.executor import RunFailed, _read_run_file
from blixard.runs.logs import LiveLog, Redactor
from blixard.runs.sandbox import RUN_UID, WORK_INSIDE, RunPaths, RunSandbox
from blixard.runs.workdir import (
    OutsideRoots,
    UnsupportedConfig,
    cli_config_text,
    open_checked,
    walk_config,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def _paths(sandbox: RunSandbox, tmp_path: Path) -> RunPaths:
    work = tmp_path / "work"
    cache = tmp_path / "cache"
    paths = sandbox.paths(work, cache)
    (paths.host_run / "config").mkdir(parents=True)
    cache.mkdir()
    paths.host_cli_config.write_text("")
    return paths


def _run(sandbox: RunSandbox, paths: RunPaths, script: str, **env: str) -> str:
    argv = sandbox.command(["/bin/sh", "-c", script], paths, binary="/bin/sh")
    done = subprocess.run(
        argv, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_bwrap
def test_what_a_sandboxed_step_sees(tmp_path: Path) -> None:
    """Hidden paths stay hidden inside a bound directory; only the run directory is
    writable; its own /proc, /tmp, uid and environment."""
    bound = tmp_path / "repo"
    data = bound / "data"
    data.mkdir(parents=True)
    (data / "blixard.db").write_text("the store")
    (bound / "code.py").write_text("visible")
    key = tmp_path / "tls.key"
    key.write_text("KEY")
    host_tmp = Path("/tmp") / f"blixard-sandbox-test-{os.getpid()}"
    host_tmp.write_text("host tmp")
    try:
        sandbox = RunSandbox(
            enabled=True, network="host", hidden=[data, key], extra_readonly=[str(bound), str(key)]
        )
        paths = _paths(sandbox, tmp_path)
        out = _run(
            sandbox,
            paths,
            f"""
            cat {bound}/code.py; echo
            ls -A {data} | wc -l
            cat {key}; echo "key=$?"
            test -e {host_tmp} && echo host-tmp-visible
            for f in /etc/shadow /etc/ssl/private /etc/passwd /home /var; do
                test -e $f && echo "visible:$f"
            done
            id -u; pwd; echo "secret=${{SECRET:-unset}}"
            ls /proc | grep -c '^[0-9]'
            echo hi > {WORK_INSIDE}/config/out && echo wrote-work
            echo hi > {bound}/new 2>/dev/null || echo bound-read-only
            echo hi > /usr/new 2>/dev/null || echo usr-read-only
            echo hi > /tmp/x && echo private-tmp
            """,
            VISIBLE="yes",
        )
    finally:
        host_tmp.unlink()
    lines = out.split()
    assert lines[0] == "visible"
    assert lines[1] == "0", out  # the data directory is an empty tmpfs
    assert "KEY" not in out and "key=0" in out  # an empty file in its place
    assert "host-tmp-visible" not in out and "visible:" not in out, out
    assert str(RUN_UID) in lines and WORK_INSIDE in lines
    assert "secret=unset" in out
    assert int(lines[lines.index("secret=unset") + 1]) <= 4, out  # bwrap, sh, ls, grep
    for word in ("wrote-work", "bound-read-only", "usr-read-only", "private-tmp"):
        assert word in lines, out
    assert (paths.host_run / "config" / "out").read_text() == "hi\n"
    assert not (bound / "new").exists() and not Path("/tmp/x").exists()
    assert (data / "blixard.db").read_text() == "the store"


@needs_bwrap
def test_no_network_reaches_only_the_forwarded_socket(tmp_path: Path) -> None:
    """BLIXARD_RUN_NETWORK=none: a new network namespace; the forwarder serves
    127.0.0.1:PORT inside from the unix socket the executor provides."""
    sandbox = RunSandbox(enabled=True, network="none", hidden=[])
    paths = _paths(sandbox, tmp_path)
    answer = b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nforwarded"

    async def main() -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(serve, path=str(paths.host_socket))
        argv = sandbox.command(
            [
                "/bin/sh",
                "-c",
                "sleep 0.5; curl -s http://127.0.0.1:8080/x; echo;"
                " curl -s -m 3 https://example.com >/dev/null || echo no-network",
            ],
            paths,
            binary="/bin/sh",
            forward_port=8080,
        )
        process = await asyncio.create_subprocess_exec(
            *argv, env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        server.close()
        assert process.returncode == 0
        return out.decode()

    out = asyncio.run(main())
    assert out.split() == ["forwarded", "no-network"], out


def test_unavailable_sandbox_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = RunSandbox(enabled=True, network="host", hidden=[])
    state = missing.probe()
    assert not state.available and "bubblewrap (bwrap) is not installed" in str(state.reason)
    assert state.report()["available"] is False
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'No permissions to creating new namespace' >&2\nexit 1\n")
    broken.chmod(0o755)
    state = RunSandbox(enabled=True, network="host", hidden=[], bwrap=str(broken)).probe()
    assert not state.available and "new namespace" in str(state.reason)
    off = RunSandbox(enabled=False, network="host", hidden=[]).probe()
    assert off.available and off.report() == {
        "sandbox": "off",
        "available": True,
        "network": "host",
    }


def test_cli_config_ignores_the_working_directorys_providers(tmp_path: Path) -> None:
    """Terraform's implied local mirror (terraform.d/plugins) is not used with the CLI
    configuration runs get: the provider is looked up in its registry (and not found)."""
    binary = resolve_binary(None)
    config = tmp_path / "config"
    plugin = config / "terraform.d/plugins/registry.terraform.io/hashicorp/evil/1.0.0/linux_amd64"
    plugin.mkdir(parents=True)
    marker = tmp_path / "ran"
    (plugin / "terraform-provider-evil_v1.0.0").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (plugin / "terraform-provider-evil_v1.0.0").chmod(0o755)
    (config / "main.tf").write_text(
        'terraform {\n  required_providers {\n    evil = { source = "hashicorp/evil" }\n  }\n}\n'
    )
    (tmp_path / "cache").mkdir()
    rc = tmp_path / "terraform.rc"
    rc.write_text(cli_config_text(str(tmp_path / "cache")))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TF_CLI_CONFIG_FILE": str(rc)}
    done = subprocess.run(
        [*binary.argv, f"-chdir={config}", "init", "-input=false", "-no-color"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "registry.terraform.io" in done.stdout + done.stderr
    assert not list((config / ".terraform").rglob("terraform-provider-evil*"))
    assert not marker.exists()


def test_one_walk_checks_linked_directories_and_hard_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside")
    config = root / "config"
    (config / "a").mkdir(parents=True)
    (config / "main.tf").write_text("")
    (root / "b").mkdir()
    (config / "a" / "sub").symlink_to("../../b")  # inside the root: followed
    (root / "b" / "leak").symlink_to(outside)  # reached only through a/sub
    with pytest.raises(OutsideRoots, match="a/sub/leak"):
        make_archive(config, allowed_roots=[root])
    (root / "b" / "leak").unlink()
    (root / "b" / "ok.tf").write_text("")
    assert [e.relpath for e in walk_config(config, allowed_roots=[root])] == [
        "a",
        "a/sub",
        "a/sub/ok.tf",
        "main.tf",
    ]
    os.link(outside / "secret.txt", config / "hard.txt")
    with pytest.raises(OutsideRoots, match="hard links"):
        make_archive(config, allowed_roots=[root])
    (config / "hard.txt").unlink()
    (config / "terraform.d").mkdir()
    with pytest.raises(UnsupportedConfig, match=r"terraform\.d"):
        make_archive(config, allowed_roots=[root])


def test_a_file_swapped_after_the_walk_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "main.tf").write_text("")
    entries = list(walk_config(config, allowed_roots=[tmp_path]))
    (config / "main.tf").unlink()
    (config / "main.tf").symlink_to("/etc/hostname")
    with pytest.raises(OSError):  # O_NOFOLLOW: a link is not opened
        open_checked(entries[0])
    (config / "other.tf").write_text("another file")
    os.replace(config / "other.tf", config / "main.tf")
    with pytest.raises(OutsideRoots, match="changed"):
        open_checked(entries[0])


def test_redaction_in_logs_and_summaries() -> None:
    secret = "s3cr3t-value"
    redactor = Redactor([secret, "x", 'a"b${c}d'])
    stored: list[bytes] = []

    async def persist(chunk: bytes) -> None:
        stored.append(chunk)

    text = (
        f"token={secret}; again:{secret}{secret}\n"
        'quoted: "a\\"b$${c}d" plain: a"b${c}d x stays\n'
    ).encode()

    async def main() -> bytes:
        live = LiveLog(persist, redactor)
        for index in range(len(text)):  # every chunk boundary falls inside a value
            await live.write(text[index : index + 1])
            assert secret.encode() not in bytes(live.data)
        await live.close()
        return bytes(live.data)

    shown = asyncio.run(main())
    assert b"".join(stored) == shown
    assert shown == (
        b"token=(redacted); again:(redacted)(redacted)\n"
        b'quoted: "(redacted)" plain: (redacted) x stays\n'
    )
    summary = redactor.summary(
        PlanSummary(1, 0, 0, ({"address": f'a.b["{secret}"]', "actions": ["create"]},))
    )
    assert summary.resource_changes[0]["address"] == 'a.b["(redacted)"]'
    assert redactor.text(f"error: {secret}") == "error: (redacted)"
    multi = Redactor(["first line of it\nsecond line\nok"])
    assert multi.text("  first line of it\n  second line\n  ok\n") == (
        "  (redacted)\n  (redacted)\n  ok\n"
    )


def test_embedded_engine_ignores_the_working_directory(tmp_path: Path) -> None:
    """Isolated mode: a `blixard/` package in the working directory is not imported."""
    (tmp_path / "blixard").mkdir()
    (tmp_path / "blixard" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
    binary = resolve_binary("embedded")
    done = subprocess.run(
        [*binary.argv, "version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "shadowed" not in done.stderr, done.stderr
    assert binary.argv[:2] == (sys.executable, "-I")


def test_files_the_run_wrote_are_read_without_following_its_links(tmp_path: Path) -> None:
    """The server reads the plan file from the run's directory: a link planted there (to
    the file, or to a directory on the way) is not followed."""
    secret = tmp_path / "blixard.db"
    secret.write_bytes(b"SQLite format 3\0")
    run = tmp_path / "run"
    (run / "config").mkdir(parents=True)
    (run / "config" / "plan").write_bytes(b"a plan")
    assert _read_run_file(run, "config", "plan") == b"a plan"
    (run / "config" / "plan").unlink()
    (run / "config" / "plan").symlink_to(secret)
    with pytest.raises(RunFailed, match="no readable config/plan"):
        _read_run_file(run, "config", "plan")
    (run / "config" / "plan").unlink()
    (run / "config").rmdir()
    (run / "config").symlink_to(tmp_path)
    with pytest.raises(RunFailed, match="no readable"):
        _read_run_file(run, "config", "blixard.db")
