"""Safe defaults at start-up: refusals are one line and exit 2, before anything listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from blixard.config import Settings


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blixard", "serve", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_no_keys_and_a_public_address_is_refused(tmp_path: Path) -> None:
    # The refusal happens before binding, so nothing ever listens beyond loopback here.
    result = serve(tmp_path, "--listen", "0.0.0.0:18731")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0:18731" in lines[0]
    assert "--insecure" in lines[0] and "Traceback" not in result.stderr


def test_short_admin_key_is_refused(tmp_path: Path) -> None:
    result = serve(tmp_path, "--listen", "127.0.0.1:18732", env={"BLIXARD_ADMIN_KEY": "short"})
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "blixard: BLIXARD_ADMIN_KEY must be at least 16 characters long."
    )


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("127.1.2.3:80", True),
        ("localhost:8080", True),
        ("[::1]:8080", True),
        ("0.0.0.0:8080", False),
        ("10.0.0.5:8080", False),
        ("example.org:8080", False),
    ],
)
def test_loopback_detection(listen: str, loopback: bool) -> None:
    assert Settings.load({"listen": listen}).is_loopback is loopback


def test_a_revoked_admin_key_says_so_at_start(tmp_path: Path) -> None:
    from tests.harness import ServerProcess

    admin = "blx_startup-admin-key-0123456789"
    data = str(tmp_path / "data")
    with ServerProcess(tmp_path / "data", env={"BLIXARD_ADMIN_KEY": admin}):
        pass
    revoke = subprocess.run(
        [sys.executable, "-m", "blixard", "keys", "revoke", "admin", "--data-dir", data],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert revoke.returncode == 0, revoke.stderr
    result = serve(tmp_path, "--listen", "127.0.0.1:18733", env={"BLIXARD_ADMIN_KEY": admin})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(
        "blixard: BLIXARD_ADMIN_KEY is the secret of key 'admin', which was revoked at "
    )
    assert "Set BLIXARD_ADMIN_KEY to a new secret, or unset it." in lines[0]
    assert admin not in result.stderr
