"""Run a real Blixard server in a subprocess on 127.0.0.1, for e2e, crash tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

#: Engines the engine-parametrized suites run on (tests/api, tests/e2e/test_terraform.py);
#: BLIXARD_TEST_ENGINE=sqlite or =etcd keeps only that one.
TEST_ENGINES = [e for e in ("sqlite", "etcd") if os.environ.get("BLIXARD_TEST_ENGINE", e) == e]


def etcd_url(endpoints: list[str], prefix: str) -> str:
    """A storage URL for `prefix` on the (plaintext) etcd members at `endpoints`."""
    hosts = ",".join(e.removeprefix("http://") for e in endpoints)
    return f"etcd://{hosts}/{prefix}"


def shared_etcd_url(prefix: str) -> str:
    """A storage URL for `prefix` on the session's shared 3-member etcd test cluster."""
    from tests.etcd_cluster import shared_cluster_endpoints

    return etcd_url(shared_cluster_endpoints(), prefix)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsClient:
    """How a test client reaches a server that serves HTTPS.

    `ca` is the PEM bundle that verifies the server's certificate; `cert`/`key` are the
    client certificate and key presented for mutual TLS (both or neither).
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context


class ServerProcess:
    """A `blixard serve` subprocess listening on a free loopback port.

    `start()` waits until /health answers; `kill()` is a `kill -9`; the data directory
    survives restarts so durability can be checked across them.

    With `tls`, the server is expected to serve HTTPS (the TLS flags themselves go in
    `args`): `url` is https://… and the health wait verifies the server with `tls.ca` and
    presents `tls.cert` when given. `client()` returns an httpx client set up the same way.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        log_path: Path | None = None,
        tls: TlsClient | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_env = env or {}
        self.extra_args = args or []
        self.log_path = log_path or self.data_dir.parent / f"server-{self.port}.log"
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        """The `verify=` argument for httpx requests to this server."""
        return self.tls.ssl_context() if self.tls else True

    def client(self, path: str = "", *, timeout: float = 15.0) -> httpx.Client:
        """An httpx client for url + path that trusts (and, for mTLS, authenticates to) it."""
        return httpx.Client(base_url=self.url + path, timeout=timeout, verify=self.verify())

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "BLIXARD_LOG_LEVEL": "warning", **self.extra_env}
        cmd = [
            sys.executable,
            "-m",
            "blixard",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        verify = self.verify()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"blixard exited with {self.proc.returncode}: {tail}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"blixard did not become healthy: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, like a power cut for the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        """Current resident set size of the server process."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def peak_rss_bytes(self) -> int:
        """High-water mark of the server's resident set size (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
