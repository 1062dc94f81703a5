"""A real N-member etcd cluster on 127.0.0.1 for tests and benchmarks.

    with EtcdCluster(tmp_path / "etcd") as cluster:     # starts, waits for quorum
        cluster.endpoints                               # ["http://127.0.0.1:PORT", ...]
        leader = cluster.leader()
        cluster.kill(leader)                            # SIGKILL
        cluster.restart(leader)                         # same ports, same data dir

Members listen on free loopback ports (one client, one peer each), log to
`<base_dir>/<name>.log` and keep their data in `<base_dir>/<name>.etcd`. With `tls`
(`ClusterTls`) the client URLs are https (peers stay plaintext on loopback), optionally
requiring client certificates; `enable_auth()` then turns on etcd's authentication with a
root user, and the helper's own calls (gateway, etcdctl) authenticate as root. Every wait is
bounded and fails with the tail of the member logs. The members die with the process that
started them (PR_SET_PDEATHSIG), so an aborted test run leaves no etcd behind.

`ensure_etcd()` finds etcd 3.4+ (installing it with scripts/install-etcd.sh if missing).
The small `Gateway` wraps etcd's v3 JSON gateway (`POST /v3/...`, keys and values base64)
with httpx, enough for health checks and tests.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "install-etcd.sh"


class EtcdError(RuntimeError):
    """The cluster did not reach the expected state in time (message carries log tails)."""


def ensure_etcd() -> Path:
    """The directory holding etcd and etcdctl (v3.4+), installing them if needed.

    Runs scripts/install-etcd.sh, which is quick and quiet when etcd is already there and
    prints "<dir> etcd <version>".
    """
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise EtcdError(f"scripts/install-etcd.sh failed:\n{result.stderr}{result.stdout}")
    line = result.stdout.strip().splitlines()[-1]
    return Path(line.split(" ", 1)[0])


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, so no duplicates)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


_PRCTL: Any = None
# Loaded once at import: dlopen in a child forked from a threaded process (gRPC) can crash.
with contextlib.suppress(OSError, AttributeError):
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the process that started it dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class ClusterTls:
    """PEM files for TLS on the members' client URLs: the CA, the members' certificate and
    key (valid for 127.0.0.1 and localhost, for server and client use: a member with
    --client-cert-auth dials its own gateway with it), and the client certificate the helper
    presents. That one must have no CN: once auth is on, etcd's JSON gateway refuses
    certificates that carry one."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    #: Members require client certificates signed by `ca` (etcd --client-cert-auth).
    client_cert_auth: bool = True

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class Gateway:
    """etcd's v3 JSON gRPC gateway on one endpoint (POST /v3/<service>/<method>); with
    `auth` (user, password) every call carries a token from /v3/auth/authenticate."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._client = httpx.Client(base_url=endpoint, timeout=timeout, verify=verify)
        if auth is not None:
            name, password = auth
            token = self.call("auth/authenticate", {"name": name, "password": password})
            self._client.headers["Authorization"] = token["token"]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(f"/v3/{path}", json=body)
        if response.status_code != 200:
            raise EtcdError(f"{self.endpoint} /v3/{path}: {response.status_code} {response.text}")
        data: dict[str, Any] = response.json()
        return data

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Put and return the new store revision."""
        header = self.call("kv/put", {"key": b64(key), "value": b64(value)})["header"]
        return int(header["revision"])

    def get(self, key: str | bytes, *, serializable: bool = False) -> bytes | None:
        """Linearizable read (or this member's local copy, with `serializable`)."""
        body: dict[str, Any] = {"key": b64(key)}
        if serializable:
            body["serializable"] = True
        kvs = self.call("kv/range", body).get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def status(self) -> dict[str, Any]:
        return self.call("maintenance/status", {})


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    member_id: int | None = None  # learned from the first status answer
    tls: bool = False

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """N etcd members on free 127.0.0.1 ports; `start()` waits until every member serves a
    linearizable read (that is, the cluster has a leader and quorum)."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        bin_dir: Path | None = None,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        start_timeout: float = 30.0,
        extra_args: list[str] | None = None,
        tls: ClusterTls | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = bin_dir if bin_dir is not None else ensure_etcd()
        self.etcd = str(self.bin_dir / "etcd")
        self.etcdctl = str(self.bin_dir / "etcdctl")
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.tls = tls
        #: Set by enable_auth(): the helper's own calls then authenticate as root.
        self.root_password: str | None = None
        self.token = f"blixard-test-{uuid.uuid4().hex[:12]}"
        ports = _free_ports(2 * size)
        self.members = [
            Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base_dir / f"m{i}.etcd",
                log_path=self.base_dir / f"m{i}.log",
                tls=tls is not None,
            )
            for i in range(size)
        ]

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member (running or not), in member order."""
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self) -> EtcdCluster:
        for member in self.members:
            self._spawn(member, state="new")
        try:
            self.wait_healthy(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, member: Member, *, state: str) -> None:
        if member.running:
            raise EtcdError(f"{member.name} is already running")
        args = [
            self.etcd,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *self._tls_args(),
            *self.extra_args,
        ]
        log = member.log_path.open("ab")
        try:
            log.write(f"--- start {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
            member.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def _tls_args(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        args = ["--cert-file", str(tls.cert), "--key-file", str(tls.key)]
        args += ["--trusted-ca-file", str(tls.ca)]
        return [*args, "--client-cert-auth"] if tls.client_cert_auth else args

    def enable_auth(self, root_password: str) -> None:
        """Create etcd's root user and turn authentication on (etcdctl)."""
        self.run_etcdctl("user", "add", f"root:{root_password}")
        self.run_etcdctl("user", "grant-role", "root", "root")
        self.run_etcdctl("auth", "enable")
        self.root_password = root_password

    def run_etcdctl(self, *args: str) -> str:
        """Run etcdctl against the cluster (as root once auth is on); its output."""
        result = subprocess.run(
            [self.etcdctl, *args],
            env=self.etcdctl_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop every running member: SIGKILL by default (etcd is crash-safe and a leader
        told to stop spends up to seconds trying to hand leadership to followers that are
        stopping too); with `graceful`, SIGTERM first and SIGKILL what is left after
        `timeout`."""
        for member in self.members:
            proc = member.process
            if proc is not None and proc.poll() is None:
                if graceful:
                    proc.terminate()
                else:
                    proc.kill()
        deadline = time.monotonic() + timeout
        for member in self.members:
            proc = member.process
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self, member: Member) -> None:
        """SIGKILL one member (its data directory stays for `restart`)."""
        proc = member.process
        if proc is None or proc.poll() is not None:
            raise EtcdError(f"{member.name} is not running")
        proc.kill()
        proc.wait(timeout=10)

    def restart(self, member: Member, *, timeout: float = 20.0) -> None:
        """Start a stopped member again on its ports and data directory and wait until it
        serves linearizable reads (it has caught up with the leader)."""
        if member.running:
            raise EtcdError(f"{member.name} is still running")
        self._spawn(member, state="existing")
        self._wait(
            lambda: self._serves(member),
            timeout,
            f"{member.name} did not rejoin",
        )

    # -- inspection -----------------------------------------------------------------------

    def gateway(self, member: Member, *, timeout: float = 5.0) -> Gateway:
        verify = self.tls.ssl_context() if self.tls else True
        auth = ("root", self.root_password) if self.root_password else None
        return Gateway(member.client_url, timeout=timeout, verify=verify, auth=auth)

    def running_members(self) -> list[Member]:
        return [m for m in self.members if m.running]

    def status(self, member: Member, *, timeout: float = 2.0) -> dict[str, Any] | None:
        """The member's maintenance status, or None if it does not answer."""
        if not member.running:
            return None
        try:
            with self.gateway(member, timeout=timeout) as gw:
                data = gw.status()
        except (httpx.HTTPError, EtcdError, ValueError):
            return None
        member.member_id = int(data["header"]["member_id"])
        return data

    def leader(self, *, timeout: float = 10.0) -> Member:
        """The current leader as agreed by a majority of members, waiting up to `timeout`."""
        found: list[Member] = []

        def probe() -> bool:
            votes: dict[int, int] = {}
            for member in self.running_members():
                data = self.status(member)
                leader_id = int(data.get("leader", 0)) if data else 0
                if leader_id:
                    votes[leader_id] = votes.get(leader_id, 0) + 1
            for leader_id, count in votes.items():
                if count > len(self.members) // 2:
                    for member in self.running_members():
                        if member.member_id == leader_id:
                            found[:] = [member]
                            return True
            return False

        self._wait(probe, timeout, "no leader agreed by a majority")
        return found[0]

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until every running member serves a linearizable read."""
        self._wait(
            lambda: all(self._serves(m) for m in self.running_members()),
            timeout,
            "cluster did not become healthy",
        )

    def _serves(self, member: Member) -> bool:
        """True if a linearizable read through this member succeeds (leader + quorum)."""
        if not member.running:
            return False
        try:
            with self.gateway(member, timeout=2.0) as gw:
                gw.get("/__health__")
                data = gw.status()
        except (httpx.HTTPError, EtcdError, ValueError):
            return False
        member.member_id = int(data["header"]["member_id"])
        return True

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for member in self.members:
                proc = member.process
                if proc is not None and proc.poll() not in (
                    None,
                    0,
                    -signal.SIGKILL,
                    -signal.SIGTERM,
                ):
                    raise EtcdError(
                        f"{member.name} exited with {proc.returncode}\n{self.log_tails()}"
                    )
            if check():
                return
            if time.monotonic() >= deadline:
                raise EtcdError(f"{what} within {timeout:.0f} s\n{self.log_tails()}")
            time.sleep(0.05)

    def log_tails(self, lines: int = 15) -> str:
        out: list[str] = []
        for member in self.members:
            try:
                text = member.log_path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(no log)"]
            out.append(f"== {member.name} ({member.log_path}) ==")
            out.extend(text)
        return "\n".join(out)

    def etcdctl_env(self) -> dict[str, str]:
        """Environment for running etcdctl against this cluster."""
        env = {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": ",".join(self.endpoints)}
        if self.tls is not None:
            env["ETCDCTL_CACERT"] = str(self.tls.ca)
            env["ETCDCTL_CERT"] = str(self.tls.client_cert)
            env["ETCDCTL_KEY"] = str(self.tls.client_key)
        if self.root_password is not None:
            env["ETCDCTL_USER"] = f"root:{self.root_password}"
        return env


def kv_requests(endpoint: str) -> int:
    """Txn and Range requests the member at `endpoint` (plaintext) has answered so far, from
    its /metrics: which member a client's calls reach (a follower forwards to the leader by
    raft, so only the member a call was sent to counts it)."""
    total = 0
    for line in httpx.get(f"{endpoint}/metrics", timeout=5).text.splitlines():
        if line.startswith("grpc_server_handled_total{") and (
            'grpc_method="Txn"' in line or 'grpc_method="Range"' in line
        ):
            total += int(float(line.rpartition(" ")[2]))
    return total


def leader_endpoint(endpoints: list[str]) -> str:
    """The endpoint of the member that most members (plaintext) name as leader."""
    statuses = []
    for endpoint in endpoints:
        with Gateway(endpoint) as gateway:
            statuses.append(gateway.status())
    votes = [s.get("leader") for s in statuses if s.get("leader")]
    leader = max(set(votes), key=votes.count)
    return next(
        e for e, s in zip(endpoints, statuses, strict=True) if s["header"]["member_id"] == leader
    )


@contextlib.contextmanager
def private_cluster(size: int = 1) -> Iterator[EtcdCluster]:
    """A cluster of the caller's own, for a test that changes cluster-wide state (an alarm)
    that must not reach tests using the shared cluster at the same time (parallel workers);
    its data is deleted when it stops."""
    base = Path(tempfile.mkdtemp(prefix="blixard-etcd-own-"))
    try:
        with EtcdCluster(base, size) as cluster:
            yield cluster
    finally:
        shutil.rmtree(base, ignore_errors=True)


_shared_lock = threading.Lock()
_shared: EtcdCluster | None = None


def shared_cluster_endpoints() -> list[str]:
    """One 3-member cluster for the whole test session, started on first use (the engine
    suite and the API suite on etcd give each test its own key prefix)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            base = Path(tempfile.mkdtemp(prefix="blixard-etcd-shared-"))
            cluster = EtcdCluster(base, 3).start()
            atexit.register(_discard, cluster, base)
            _shared = cluster
        return _shared.endpoints


def _discard(cluster: EtcdCluster, base: Path) -> None:
    """Stop the shared cluster and delete its data (it grows to about 1 GB over a test run)."""
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)
