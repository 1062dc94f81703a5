"""Sessions, CSRF, headers and paging of the web UI, in process on a real SQLite store."""

from __future__ import annotations

import json
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from blixard.api.app import asgi_app, create_app
from blixard.auth.sessions import COOKIE_NAME, SECRET_FILE, Session, SessionCodec
from blixard.config import Settings
from blixard.ui.views import workspaces
from blixard.ui.web import UiSessions
from tests.harness import TEST_ENGINES, shared_etcd_url

ADMIN = "sessions-admin-key-0123456789abcdef"
AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        settings = Settings.load({"data_dir": tmp_path / f"data{len(opened)}", **overrides})
        client = TestClient(asgi_app(create_app(settings)), follow_redirects=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, html[:500]
    return found.group(1)


def signed_in(client: TestClient, key: str = ADMIN) -> None:
    page = client.get("/ui/login")
    resp = client.post("/ui/login", data={"csrf": csrf_of(page.text), "key": key, "next": "/ui/"})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/", resp.text


def state(serial: int, lineage: str = "lin") -> bytes:
    return json.dumps(
        {"version": 4, "serial": serial, "lineage": lineage, "resources": [], "outputs": {}}
    ).encode()


# ------------------------------------------------------------------ the cookie itself


def test_a_sealed_session_opens_only_intact_unexpired_and_under_its_secret() -> None:
    codec = SessionCodec(b"secret-one", 3600)
    session = Session("sid", "the-api-key", time.time() + 60)
    sealed = codec.seal(session)
    assert "the-api-key" not in sealed
    assert codec.open(sealed) == session
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    assert codec.open(flipped) is None
    assert codec.open(sealed, now=session.expires_at + 1) is None
    assert SessionCodec(b"secret-two", 3600).open(sealed) is None
    for junk in ("", "not base64 !!", "A" * 5000, "QUFB"):
        assert codec.open(junk) is None
    assert codec.csrf_ok(session, codec.csrf_token(session))
    other = Session("other", "the-api-key", session.expires_at)
    assert not codec.csrf_ok(other, codec.csrf_token(session))
    assert not codec.csrf_ok(session, None)


def test_the_session_secret_is_shared_by_setting_or_encryption_key_else_per_node(
    tmp_path: Path,
) -> None:
    session = Session("sid", "k", time.time() + 60)

    def codec(**values: Any) -> SessionCodec:
        return UiSessions(Settings.load(values)).codec()

    shared = {"session_secret": SecretStr("same-on-every-node")}
    a = codec(data_dir=tmp_path / "a", **shared)
    assert codec(data_dir=tmp_path / "b", **shared).open(a.seal(session)) == session
    key = {"encryption_key": SecretStr("Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=")}
    c = codec(data_dir=tmp_path / "c", **key)
    assert codec(data_dir=tmp_path / "d", **key).open(c.seal(session)) == session
    assert not (tmp_path / "a" / SECRET_FILE).exists()

    node = codec(data_dir=tmp_path / "e")
    secret_file = tmp_path / "e" / SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert codec(data_dir=tmp_path / "e").open(node.seal(session)) == session  # a restart
    assert codec(data_dir=tmp_path / "f").open(node.seal(session)) is None  # another node


# ------------------------------------------------------------------ over HTTP


def test_the_ui_is_open_when_authentication_is_off(make_app: AppFactory) -> None:
    client = make_app()
    assert client.get("/").headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and "Authentication off" in page.text
    assert client.get("/ui/login").headers["location"] == "/ui/"
    assert client.get("/ui/keys").status_code == 200


def test_sign_in_checks_the_token_the_key_and_never_redirects_away(make_app: AppFactory) -> None:
    client = make_app(admin_key=SecretStr(ADMIN))
    assert client.get("/ui/").headers["location"] == "/ui/login?next=%2Fui%2F"
    form = client.get("/ui/login")
    token = csrf_of(form.text)
    cookie = form.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    refused = client.post("/ui/login", data={"key": ADMIN})
    assert refused.status_code == 403 and COOKIE_NAME not in refused.headers.get("set-cookie", "")
    wrong = client.post("/ui/login", data={"csrf": token, "key": "nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    away = client.post(
        "/ui/login", data={"csrf": token, "key": ADMIN, "next": "https://evil.example/"}
    )
    assert away.status_code == 303 and away.headers["location"] == "/ui/"
    assert client.get("/ui/keys").status_code == 200
    # A new session id at sign-in: the token issued before it no longer works.
    assert client.post("/ui/logout", data={"csrf": token}).status_code == 403
    logout = client.post("/ui/logout", data={"csrf": csrf_of(client.get("/ui/").text)})
    assert logout.status_code == 303 and 'blixard_session=""' in logout.headers["set-cookie"]


def test_every_ui_response_carries_the_csp_and_the_api_keeps_json(make_app: AppFactory) -> None:
    client = make_app()
    for path in ("/ui/", "/ui/static/app.css", "/ui/static/app.js", "/ui/nowhere"):
        resp = client.get(path)
        csp = resp.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp, path
        assert resp.headers["x-frame-options"] == "DENY"
    missing = client.get("/ui/nowhere")
    assert missing.status_code == 404 and "<h1>Not found</h1>" in missing.text
    api = client.get("/api/tofu/history/nowhere")
    assert api.status_code == 404 and api.json()["error"] == "not_found"
    assert "content-security-policy" not in api.headers


def test_the_event_stream_needs_a_key_when_authentication_is_on(make_app: AppFactory) -> None:
    client = make_app(admin_key=SecretStr(ADMIN))
    resp = client.get("/api/tofu/events")
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


def test_an_event_stream_opened_with_a_session_ends_when_the_session_does(
    make_app: AppFactory,
) -> None:
    """The stream checks its session's expiry before every event, as a page request would."""
    # Long enough for the sign-in itself (the login form's session has the same lifetime) on
    # a loaded machine: at 2 s it expired between the form and its POST in a CI run.
    lifetime = 4.0
    client = make_app(admin_key=SecretStr(ADMIN), session_hours=lifetime / 3600)
    signed_in(client)
    writer = threading.Timer(
        lifetime + 0.5,
        lambda: client.post(
            "/api/tofu/state/after-expiry",
            content=state(1),
            headers={"Authorization": f"Bearer {ADMIN}"},
        ),
    )
    writer.start()
    lines: list[str] = []
    with client.stream("GET", "/api/tofu/events") as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():  # ends once the expired session meets an event
            lines.append(line)
            if "after-expiry" in line:
                break
    writer.join()
    assert "event: ready" in lines and not any("after-expiry" in line for line in lines), lines


def test_filtered_pages_walk_every_match_once_within_the_scan_budget(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspaces, "BATCH", 7)
    monkeypatch.setattr(workspaces, "SCAN_BUDGET", 20)
    monkeypatch.setattr(workspaces, "PAGE_SIZE", 5)
    client = make_app()
    names = [f"ws-{i:03d}" for i in range(60)]
    for name in names:
        assert client.post(f"/api/tofu/state/{name}", content=state(1)).status_code == 200
    lock = {"ID": "l1", "Who": "someone", "Operation": "OperationTypeApply"}
    locked = {"ws-003", "ws-031", "ws-059"}
    for name in locked:
        assert client.post(f"/api/tofu/lock/{name}", content=json.dumps(lock)).status_code == 200

    def walk(query: str) -> list[str]:
        seen: list[str] = []
        url = f"/ui/?{query}"
        for _ in range(100):
            html = client.get(url).text
            seen += re.findall(r'<tr data-ws="([^"]+)">', html)
            following = re.search(r'rel="next" href="([^"]+)"', html)
            if following is None:
                return seen
            url = "/ui/" + following.group(1).replace("&amp;", "&")
        raise AssertionError("the pages never ended")

    assert walk("") == names
    assert walk("q=WS-02") == names[20:30]  # case-insensitive substring
    assert walk("locked=1") == sorted(locked)
    assert walk("q=nothing-matches") == []


def test_the_cookie_is_secure_under_tls(make_app: AppFactory) -> None:
    client = make_app(admin_key=SecretStr(ADMIN))
    client.base_url = client.base_url.copy_with(scheme="https")
    cookie = client.get("/ui/login").headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


@pytest.mark.parametrize("engine", TEST_ENGINES)
def test_the_cluster_page_reports_the_engine(
    make_app: AppFactory, engine: str, tmp_path: Path
) -> None:
    overrides: dict[str, Any] = {}
    if engine == "etcd":
        overrides["storage_url"] = shared_etcd_url(f"blixard-ui-cluster/{tmp_path.name}")
    client = make_app(**overrides)
    page = client.get("/ui/cluster")
    assert page.status_code == 200, page.text
    assert f"<dd>{engine}</dd>" in page.text
    assert str(tmp_path) not in page.text  # the data path is the operator's business only
    if engine == "etcd":
        assert '<h2 id="members-h">Members</h2>' in page.text
        assert "client_urls" not in page.text


def test_the_module_tree_counts_each_module_with_everything_below_it() -> None:
    from collections import Counter

    from blixard.ui.views.resources import module_tree

    modules = Counter({"": 2, 'module.a["x"]': 1, 'module.a["x"].module.b': 3, "module.c": 1})
    assert module_tree(modules) == [
        ("", 0, 7),
        ('module.a["x"]', 1, 4),
        ('module.a["x"].module.b', 2, 3),
        ("module.c", 1, 1),
    ]


def test_a_listener_that_falls_behind_keeps_the_newest_events_and_counts_the_rest() -> None:
    import asyncio
    import concurrent.futures

    from blixard.domain.events import QUEUE_SIZE, ChangeEvent, EventBus

    async def run() -> None:
        bus = EventBus()
        listener = bus.listen()
        for number in range(QUEUE_SIZE + 5):
            bus.publish(ChangeEvent("version", "w", {"version": number}))
        assert listener.lost == 5
        first = await listener.next(0.1)
        assert first is not None and first.data["version"] == 5
        listener.close()
        bus.publish(ChangeEvent("version", "w", {"version": -1}))  # nobody listens: no error
        assert await listener.next(0.01) is not None  # what was queued stays readable

    # Its own thread: Playwright's sync API may hold an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def test_the_audit_page_filters_and_pages_without_gaps(make_app: AppFactory) -> None:
    client = make_app()
    for serial in range(1, 61):
        assert client.post("/api/tofu/state/audited", content=state(serial)).status_code == 200
    assert client.post("/api/tofu/state/other", content=state(1)).status_code == 200
    seen: list[str] = []
    url = "/ui/audit?workspace=audited&action=state.write"
    for _ in range(5):
        html = client.get(url).text
        seen += re.findall(r"<td>serial (\d+)</td>", html)
        assert "<td>other</td>" not in html
        following = re.search(r'rel="next" href="([^"]+)"', html)
        if following is None:
            break
        url = "/ui/audit" + following.group(1).replace("&amp;", "&")
    assert seen == [str(serial) for serial in range(60, 0, -1)]
    bad = client.get("/ui/audit?since=yesterday")
    assert bad.status_code == 400 and "<h1>Bad request</h1>" in bad.text
