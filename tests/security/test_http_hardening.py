"""A hostile HTTP client against a real server (uvicorn, a socket, no test transport).

Slow and oversized bodies, unauthenticated uploads, huge request heads, a pax-bomb archive and
percent-encoded workspace names, each sent as an attacker would send it; every test checks the
answer is a JSON error and that nothing changed.
"""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.api.conftest import tfstate
from tests.harness import ServerProcess

API = "/api/tofu"
ADMIN_SECRET = "hardening-admin-secret-0123456789"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No keys (authentication off), a one-second body timeout."""
    data = tmp_path_factory.mktemp("open") / "data"
    with ServerProcess(data, env={"BLIXARD_BODY_TIMEOUT_SECONDS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("secured") / "data"
    with ServerProcess(data, env={"BLIXARD_ADMIN_KEY": ADMIN_SECRET}) as server:
        yield server


class RawResponse:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> dict[str, object]:
        document: dict[str, object] = orjson.loads(self.body)
        return document


def exchange(server: ServerProcess, data: bytes) -> RawResponse:
    """Send `data` and read until the server closes the connection (it must, on refusals)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with bytes of ours unread: what came before the reset is the answer
    assert received, "no response before the connection closed"
    return RawResponse(bytes(received))


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def _names(client: httpx.Client) -> set[str]:
    return {w["name"] for w in client.get(f"{API}/workspaces").json()["workspaces"]}


def test_a_stalled_body_answers_408_without_holding_its_declared_size(
    open_server: ServerProcess,
) -> None:
    """Content-Length says 200 MiB, 9 bytes come, then nothing: 408 after the read timeout,
    and the server never allocated the 200 MiB it was promised."""
    peak_before = open_server.peak_rss_bytes()
    head = request_head(
        "POST",
        f"{API}/state/slow",
        f"Content-Length: {200 * MiB}",
        "Content-Type: application/json",
    )
    response = exchange(open_server, head + b'{"serial"')
    assert response.status == 408
    assert response.json()["error"] == "body_timeout"
    assert response.headers["connection"] == "close"
    grown = open_server.peak_rss_bytes() - peak_before
    print(f"peak RSS growth during a stalled 200 MiB request: {grown / MiB:.1f} MiB")
    assert grown < 64 * MiB
    with open_server.client() as client:
        assert client.get(f"{API}/state/slow").status_code == 404
        assert "slow" not in _names(client)


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(
    secured_server: ServerProcess,
) -> None:
    """100 MiB declared, not one byte of it sent: the 401 comes back anyway, and the server
    closes the connection, so it never reads that body."""
    head = request_head(
        "POST",
        f"{API}/state/big",
        f"Content-Length: {100 * MiB}",
        "Content-Type: application/json",
    )
    response = exchange(secured_server, head)
    assert response.status == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["connection"] == "close"
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    with secured_server.client() as client:
        assert client.get(f"{API}/state/big", headers=admin).status_code == 404
        events = _audit(client, admin, "state.write")
        assert any(e["outcome"] == "denied" and e["status"] == 401 for e in events), events


def _audit(client: httpx.Client, admin: dict[str, str], action: str) -> list[dict[str, object]]:
    """The audit sink flushes in the background: wait for the event, not for a time."""
    deadline = time.monotonic() + 20
    while True:
        events: list[dict[str, object]] = client.get(
            f"{API}/audit", params={"action": action}, headers=admin
        ).json()["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_authentication_comes_before_any_validation(secured_server: ServerProcess) -> None:
    """Whatever the query string or name, a request without a key is a 401 (and audited)."""
    with secured_server.client() as client:
        for path, params in (
            (f"{API}/history/app", {"before": "9" * 40}),
            (f"{API}/history/app", {"limit": "\u0663"}),
            (f"{API}/state/app", {"version": "abc"}),
            (f"{API}/state/.hidden", {}),
            (f"{API}/workspaces", {"after": "\x00"}),
            (f"{API}/audit", {"since": "yesterday"}),
        ):
            response = client.get(path, params=params)
            assert response.status_code == 401, (path, params, response.text)
            assert response.json()["error"] == "unauthorized"
        denied = client.post(f"{API}/rollback/app/{'9' * 30}")
        assert denied.status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
        events = _audit(client, admin, "state.rollback")
        assert any(e["outcome"] == "denied" and e["status"] == 401 for e in events), events


def test_request_heads_are_capped_while_they_arrive(open_server: ServerProcess) -> None:
    big = exchange(open_server, request_head("GET", "/health", "X-Padding: " + "a" * (40 * 1024)))
    assert big.status == 431
    assert big.json()["error"] == "headers_too_large"
    many = exchange(
        open_server, request_head("GET", "/health", *(f"X-H{i}: v" for i in range(150)))
    )
    assert many.status == 431
    assert many.json()["error"] == "headers_too_large"
    # The cap is per request: many heads on one kept-alive connection add up to more.
    with open_server.client() as client:
        padding = {"X-Padding": "p" * 2048}
        assert all(
            client.get(f"{API}/workspaces", headers=padding).status_code == 200 for _ in range(40)
        )
    # A head under the cap followed by a large body in the same packets is fine.
    state = tfstate(1, resources=3000)
    assert len(state) > 256 * 1024
    with open_server.client() as client:
        written = client.post(f"{API}/state/big-body", content=state)
        assert written.status_code == 200, written.text
        assert client.get(f"{API}/state/big-body").content == state


def test_a_request_head_that_stops_arriving_answers_408(open_server: ServerProcess) -> None:
    """Slowloris: a head without its final empty line, or no bytes at all, does not hold a
    connection open for ever (the body timeout applies to the head too)."""
    partial = exchange(open_server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b")
    assert partial.status == 408
    assert partial.json()["error"] == "head_timeout"
    assert exchange(open_server, b"").status == 408
    with open_server.client() as client:
        assert client.get("/health").status_code == 200


def _one_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length bytes of body) off a kept-alive socket."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    length = int(RawResponse(head + b"\r\n\r\n").headers["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_body_that_arrives_after_its_head_keeps_the_connection_alive(
    open_server: ServerProcess,
) -> None:
    """Keep-alive is held back only while a body is still arriving: a request whose body
    follows its head a moment later is answered on a connection that stays open."""
    state = tfstate(1)
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=30) as sock:
        for serial in (1, 2):
            state = tfstate(serial)
            sock.sendall(request_head("POST", f"{API}/state/late", f"Content-Length: {len(state)}"))
            time.sleep(0.2)
            sock.sendall(state)
            answer = _one_response(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"connection: close" not in answer.lower()
    with open_server.client() as client:
        assert client.get(f"{API}/state/late").content == state


def test_each_head_on_a_kept_alive_connection_has_its_own_deadline(
    open_server: ServerProcess,
) -> None:
    """The head deadline restarts with every request: an idle pause between two requests is
    not a late head, and a second head that stalls still answers 408."""
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=30) as sock:
        sock.sendall(request_head("GET", "/health"))
        first = _one_response(sock)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        time.sleep(1.5)  # longer than the 1 s timeout, idle between requests
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b")
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    second = RawResponse(bytes(received))
    assert second.status == 408 and second.json()["error"] == "head_timeout"


@pytest.mark.parametrize(
    ("lengths", "reason"),
    [
        (["Content-Length: abc"], "Invalid character in Content-Length"),
        (["Content-Length: {size}", "Content-Length: {other}"], "Duplicate Content-Length"),
    ],
    ids=["not-a-number", "conflicting"],
)
def test_a_malformed_content_length_is_a_json_400_and_writes_nothing(
    open_server: ServerProcess, lengths: list[str], reason: str
) -> None:
    """httptools refuses the head before any handler runs; the answer is still JSON."""
    body = tfstate(1)
    sizes = {"size": len(body), "other": len(body) - 1}
    refused, control = f"bad-length-{len(lengths)}", f"good-length-{len(lengths)}"
    head = request_head(
        "POST",
        f"{API}/state/{refused}",
        *(line.format(**sizes) for line in lengths),
        "Content-Type: application/json",
    )
    response = exchange(open_server, head + body)
    assert response.status == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.json() == {
        "error": "invalid_request",
        "message": f"The request is not valid HTTP/1.1: {reason}.",
    }
    # The same request with one valid Content-Length writes its state.
    head = request_head(
        "POST",
        f"{API}/state/{control}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        "Connection: close",
    )
    assert exchange(open_server, head + body).status == 200
    with open_server.client() as client:
        assert client.get(f"{API}/state/{refused}").status_code == 404
        assert client.get(f"{API}/state/{control}").content == body
        names = _names(client)
        assert refused not in names and control in names


def test_workspace_names_are_decoded_exactly_once(open_server: ServerProcess) -> None:
    """%252F is the name 'a%2Fb' (invalid), never 'a/b'; %2F is a path with a slash."""
    with open_server.client() as client:
        for method in ("GET", "POST"):
            twice = client.request(method, f"{API}/state/a%252Fb", content=tfstate(1))
            assert twice.status_code == 400, twice.text
            assert twice.json()["error"] == "invalid_workspace_name"
        # Decoded twice, %2561pp would be 'app': it must stay the (invalid) name '%61pp'.
        assert client.post(f"{API}/state/app", content=tfstate(1)).status_code == 200
        for path in (f"{API}/state/%2561pp", f"{API}/lock/%2561pp", f"{API}/history/%2561pp"):
            aliased = client.get(path)
            assert aliased.status_code == 400, (path, aliased.text)
            assert aliased.json()["error"] == "invalid_workspace_name"
        once = client.get(f"{API}/state/a%2Fb")
        assert once.status_code == 404
        assert once.json()["error"] == "not_found"
        assert client.get(f"{API}/history/a%252Fb").status_code == 400
        assert not any("%" in name or "/" in name for name in _names(client))


def _pax_bomb() -> bytes:
    """CVE-2024-6232: a pax header of 1 MiB of digits, gzip-compressed to about 1 KiB. The
    stock parser of Python < 3.11.10 backtracks over it for hours, holding the GIL."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = MiB
    member = info.tobuf(format=tarfile.USTAR_FORMAT) + b"0" * MiB
    main = tarfile.TarInfo("main.tf")
    main.size = 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(main)
    return gzip.compress(member + buffer.getvalue(), mtime=0)


def test_a_pax_bomb_is_refused_while_health_stays_responsive(open_server: ServerProcess) -> None:
    bomb = _pax_bomb()
    print(f"pax bomb: {len(bomb)} bytes")
    upload: dict[str, httpx.Response] = {}
    started = threading.Event()

    def send() -> None:
        with open_server.client(timeout=120) as client:
            started.set()
            upload["response"] = client.post(
                f"{API}/plan",
                params={"workspace": "bomb"},
                content=bomb,
                headers={"Content-Type": "application/gzip"},
            )

    sender = threading.Thread(target=send)
    sender.start()
    started.wait()
    latencies: list[float] = []
    with open_server.client(timeout=30) as client:
        # Health is asked while the upload is handled and after: every answer must come.
        while sender.is_alive() or len(latencies) < 3:
            began = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - began)
    sender.join()
    print(
        f"/health while a pax bomb was refused: {len(latencies)} answers, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    response = upload["response"]
    assert response.status_code == 400, response.text
    assert "pax extended header of 1048576 bytes" in response.json()["message"]
    with open_server.client() as client:
        assert client.get(f"{API}/plans/bomb").json()["plans"] == []


def test_health_answers_while_a_body_is_trickling_in(open_server: ServerProcess) -> None:
    """A slow client holds a request open; other requests do not wait for it."""
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=30) as sock:
        sock.sendall(request_head("POST", f"{API}/state/trickle", "Content-Length: 1000") + b"{")
        with open_server.client() as client:
            assert client.get("/health").status_code == 200
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    assert RawResponse(bytes(received)).status == 408
