"""How the etcd engine reaches its cluster: endpoints by name, TLS, user/password (notes §12).

    etcd://host1:2379,host2:2379,host3:2379/prefix          plaintext gRPC
    etcds://blixard@host1:2379,host2:2379/prefix?ca=/etc/blixard/etcd-ca.pem

`etcds://` is TLS. Query options (`ca`, `cert`, `key`, `user`, `password_file`,
`server_name`) override the `BLIXARD_ETCD_*` settings, which fill in what the URL leaves out;
the password itself never goes in the URL (it would show in process lists and wherever the
URL is printed).

Each endpoint gets its own gRPC channel whose target is `dns:///host:port`: gRPC resolves
the name (IPv4 and IPv6, /etc/hosts included; again whenever a connection is lost) and
spreads calls round-robin over every address it finds, and with TLS checks each member's
certificate against the host name written in the URL, which is what the operator named. One
channel over all endpoints cannot do that: gRPC verifies every connection of a channel against
one name. `_Channels` makes the endpoint channels look like one channel to etcd3aio's
services: each call goes to the leader's channel when `_LeaderWatch` knows which member
leads (a follower would forward it: one hop more), else to the next endpoint whose channel
is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from blixard.config import Settings


def _prefer_grpc_legacy_client() -> None:
    """Run gRPC's client connections on its older I/O layer rather than the EventEngine one
    it defaults to since 1.6x: ~100 us less CPU and ~0.1 ms less latency per etcd call at
    one call in flight (docs/etcd-notes.md §12). gRPC reads GRPC_EXPERIMENTS once, when it
    is first imported, which this package only does lazily, after this module; so servers,
    CLI and tests all run the same transport. An operator's own GRPC_EXPERIMENTS wins."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client")


_prefer_grpc_legacy_client()

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
_OPTIONS = ("ca", "cert", "key", "user", "password_file", "server_name")
_TLS_OPTIONS = ("ca", "cert", "key", "server_name")
#: Answers that mean "authenticate again and resend": the token expired (etcd's simple
#: tokens after --auth-token-ttl, 300 s, of disuse; JWTs after their TTL) or the member does
#: not know it, it predates a change of users or roles, or auth was turned on after we
#: connected. etcd refuses such a request before applying it, so resending cannot apply it
#: twice.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old", "user name is empty")


def _refuses_token(detail: str) -> bool:
    """Whether an answer's details say etcd refused the token (see _STALE_TOKEN)."""
    return any(s in detail for s in _STALE_TOKEN)


#: Seconds between looks at which member leads while one is known (a leader moved without a
#: failed call is followed within this), and at least between two looks.
LEADER_REFRESH = 5.0
LEADER_RETRY = 0.5
#: Answers after which the next call should not assume the leader is where it was.
_LEADER_LOST = (
    "leader changed",
    "no leader",
    "not leader",
    "request timed out",
    "server stopped",
)
#: Same channel settings as etcd3aio's, plus the receive/send limits (notes §3 rule 3).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", True),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
]


@dataclass(frozen=True)
class Compaction:
    """Keep `retention` seconds of etcd history; a round every `interval` seconds."""

    retention: float
    interval: float


@dataclass(frozen=True)
class EtcdOptions:
    """What the settings (`BLIXARD_ETCD_*`) give an etcd storage URL: connection defaults,
    which the URL's own query overrides, and compaction (servers only)."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    compaction: Compaction | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, compact: bool = True) -> EtcdOptions:
        retention = settings.etcd_compaction_retention_seconds
        return cls(
            ca_cert=settings.etcd_ca_cert,
            client_cert=settings.etcd_client_cert,
            client_key=settings.etcd_client_key,
            user=settings.etcd_user,
            password=settings.etcd_password.get_secret_value() if settings.etcd_password else None,
            password_file=settings.etcd_password_file,
            compaction=Compaction(retention, settings.etcd_compaction_interval_seconds)
            if compact and retention > 0
            else None,
        )


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach the cluster: TLS material (already read) and credentials."""

    tls: bool = False
    #: PEM CA bundle; None with TLS trusts the public CAs gRPC ships (or the bundle named by
    #: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    #: Name every member's certificate is checked against instead of its host in the URL.
    server_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: list[str]
    prefix: str
    access: EtcdAccess


def _read(what: str, path: Path, *, pem: bool = True) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if pem and b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path}: not a PEM file")
    return data


def _endpoint(text: str) -> str:
    """`host`, `host:port`, `[v6]` or `[v6]:port` → `host:port` (brackets kept for IPv6)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not host or (rest and not rest.startswith(":")):
            raise ValueError(f"etcd endpoint {text!r}: write IPv6 addresses as [addr]:port")
        port, shown = rest[1:], f"[{host}]"
    else:
        shown, _, port = text.partition(":")
        host = shown
    port = port or str(DEFAULT_PORT)
    if not host or not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
        raise ValueError(f"etcd endpoint {text!r}: not a host name or address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"etcd endpoint {text!r}: the port must be a number from 1 to 65535")
    return f"{shown}:{int(port)}"


def parse_etcd_url(url: str, options: EtcdOptions | None = None) -> EtcdTarget:
    """`etcd[s]://[user@]h1:2379,h2:2379/prefix[?ca=…]` + settings → endpoints, prefix, access.

    Reads the TLS files and the password file now, so a bad path is a one-line error before
    anything starts. Settings' TLS files apply to `etcds://` URLs only (a plaintext cluster
    next to a TLS one, e.g. in `blixard migrate`, stays reachable)."""
    options = options or EtcdOptions()
    usage = "etcd storage URL looks like etcd://host:2379,host:2379/prefix (etcds:// for TLS)"
    try:
        parsed = urlsplit(url)
    except ValueError:
        raise ValueError(usage) from None
    if parsed.scheme not in ("etcd", "etcds") or not parsed.netloc:
        raise ValueError(usage)
    tls = parsed.scheme == "etcds"
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    if ":" in userinfo:
        raise ValueError(
            "etcd storage URL: do not put the password in the URL (it would show in process "
            "lists and logs); set BLIXARD_ETCD_PASSWORD or BLIXARD_ETCD_PASSWORD_FILE"
        )
    endpoints = [_endpoint(e.strip()) for e in hosts.split(",") if e.strip()]
    if not endpoints:
        raise ValueError(usage)
    query = parse_qs(parsed.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"etcd storage URL: unknown option {', '.join(unknown)} (known: {', '.join(_OPTIONS)})"
        )
    given: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ValueError(f"etcd storage URL: option {name} needs exactly one value")
        given[name] = values[0]
    plain_tls = [name for name in _TLS_OPTIONS if name in given and not tls]
    if plain_tls:
        raise ValueError(
            f"etcd storage URL: {', '.join(plain_tls)} is a TLS option; use etcds:// for TLS"
        )

    def path(name: str, default: Path | None) -> Path | None:
        return Path(given[name]) if name in given else default

    ca = cert = key = None
    if tls:
        ca_path = path("ca", options.ca_cert)
        cert_path = path("cert", options.client_cert)
        key_path = path("key", options.client_key)
        if (cert_path is None) != (key_path is None):
            raise ValueError(
                "an etcd client certificate needs its key and the other way round: give both "
                "cert= and key= (or BLIXARD_ETCD_CLIENT_CERT and BLIXARD_ETCD_CLIENT_KEY)"
            )
        ca = _read("etcd CA bundle", ca_path) if ca_path else None
        cert = _read("etcd client certificate", cert_path) if cert_path else None
        key = _read("etcd client key", key_path) if key_path else None

    user = unquote(userinfo) if userinfo else given.get("user", options.user)
    if "password_file" in given:
        password_file: Path | None = Path(given["password_file"])
        password = None
    else:
        password_file, password = options.password_file, options.password
        if password_file is not None and password is not None:
            raise ValueError("set BLIXARD_ETCD_PASSWORD or BLIXARD_ETCD_PASSWORD_FILE, not both")
    if password_file is not None:
        password = _read("etcd password file", password_file, pem=False).decode().rstrip("\r\n")
        if not password:
            raise ValueError(f"etcd password file {password_file}: is empty")
    if user and not password:
        raise ValueError(
            f"etcd user {user!r} needs a password: set BLIXARD_ETCD_PASSWORD or "
            "BLIXARD_ETCD_PASSWORD_FILE (or password_file= in the storage URL)"
        )
    if password and not user:
        raise ValueError(
            "an etcd password is set but no user: set BLIXARD_ETCD_USER (or user@ in the URL)"
        )
    path_part = parsed.path.strip("/") or "blixard"
    access = EtcdAccess(
        tls=tls,
        ca=ca,
        cert=cert,
        key=key,
        server_name=given.get("server_name"),
        user=user or None,
        password=password or None,
    )
    return EtcdTarget(endpoints, f"/{path_part}/", access)


# --------------------------------------------------------------------------- channels


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]")


def grpc_detail(exc: BaseException) -> tuple[Any, str]:
    """The gRPC status code and details behind an etcd3aio error, on one line."""
    import grpc

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, grpc.aio.AioRpcError):
        cause = cause.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.code(), " ".join((cause.details() or "").split())
    return None, " ".join(str(exc).split()) or type(exc).__name__


def _token_of(metadata: Any) -> str | None:
    for name, value in metadata or ():
        if name == "token":
            return str(value)
    return None


class _Channels:
    """One gRPC channel per endpoint, offered to etcd3aio as if it were one channel.

    A call goes to `leader` (set by _LeaderWatch) while that channel is connected; otherwise
    to the next endpoint (round robin) whose channel is connected, or to one that is
    connecting when none is. A unary call that fails in a way a leader change explains
    (see `_hints_leader_change`) forgets the leader and calls `on_leader_lost`: it is not resent
    (a Txn whose answer was lost may have committed), only the next call goes elsewhere. A
    unary call rejected for a stale token (see _STALE_TOKEN) is sent once more with a fresh
    one from `reauthenticate`."""

    def __init__(self, channels: list[Any]) -> None:
        self.channels = channels
        self._next = 0
        #: The channel to the member that leads, when known.
        self.leader: Any = None
        self.on_leader_lost: Callable[[], None] | None = None
        self.reauthenticate: Callable[[str | None], Awaitable[str | None]] | None = None
        #: Multi-callables by channel, then by (kind, method): built once per channel.
        self._calls: dict[Any, dict[tuple[str, str], Any]] = {}

    def pick(self) -> Any:
        import grpc

        leader = self.leader
        if leader is not None:
            state = leader.get_state(try_to_connect=True)
            if state == grpc.ChannelConnectivity.READY:
                return leader
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                self.leader_lost()
        count = len(self.channels)
        fallback = None
        for step in range(count):
            index = (self._next + step) % count
            state = self.channels[index].get_state(try_to_connect=True)
            if state == grpc.ChannelConnectivity.READY:
                self._next = (index + 1) % count
                return self.channels[index]
            if fallback is None and state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                fallback = self.channels[index]
        self._next = (self._next + 1) % count
        return fallback if fallback is not None else self.channels[self._next]

    def leader_lost(self) -> None:
        if self.leader is not None:
            self.leader = None
            log.debug("etcd leader unreachable or changed: round robin until it is found again")
        if self.on_leader_lost is not None:
            self.on_leader_lost()

    @staticmethod
    def _hints_leader_change(exc: Any) -> bool:
        """Whether a failed call hints that the leader moved or went away."""
        import grpc

        code, details = exc.code(), exc.details() or ""
        return code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ) or any(s in details for s in _LEADER_LOST)

    def forget(self, channel: Any) -> None:
        """Drop the multi-callables built on a channel that is being closed."""
        self._calls.pop(channel, None)

    def _callable(self, channel: Any, kind: str, method: str, args: Any, kwargs: Any) -> Any:
        calls = self._calls.setdefault(channel, {})
        found = calls.get((kind, method))
        if found is None:
            found = calls[kind, method] = getattr(channel, kind)(method, *args, **kwargs)
        return found

    async def wait_ready(self, timeout: float) -> None:
        """Until one endpoint is connected, all have failed, or `timeout` passes."""
        import grpc

        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            states = [c.get_state(try_to_connect=True) for c in self.channels]
            if grpc.ChannelConnectivity.READY in states or all(
                s == grpc.ChannelConnectivity.TRANSIENT_FAILURE for s in states
            ):
                return
            await asyncio.sleep(0.02)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def on(channel: Any) -> Any:
            return self._callable(channel, "unary_unary", method, args, kwargs)

        async def call(request: Any, *, metadata: Any = None, **options: Any) -> Any:
            import grpc

            try:
                return await on(self.pick())(request, metadata=metadata, **options)
            except grpc.aio.AioRpcError as exc:
                if self._hints_leader_change(exc):
                    self.leader_lost()
                details = exc.details() or ""
                if self.reauthenticate is None or not _refuses_token(details):
                    raise
                token = await self.reauthenticate(_token_of(metadata))
                fresh = tuple((n, v) for n, v in metadata or () if n != "token")
                fresh += (("token", token),) if token else ()
                return await on(self.pick())(request, metadata=fresh or None, **options)

        return call

    def _stream(self, kind: str, method: str, *args: Any, **kwargs: Any) -> Any:
        def call(*call_args: Any, **call_kwargs: Any) -> Any:
            multi = self._callable(self.pick(), kind, method, args, kwargs)
            return multi(*call_args, **call_kwargs)

        return call

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._stream("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._stream("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._stream("stream_stream", method, *args, **kwargs)

    async def close(self) -> None:
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.close()
        self._calls.clear()


async def _resolve(endpoint: str) -> list[str]:
    """The gRPC targets (`ipv4:a:port`, `ipv6:[a]:port`) `host:port` resolves to (OSError if
    it does not)."""
    import socket

    host, _, port = endpoint.rpartition(":")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    return list(
        dict.fromkeys(
            f"ipv6:[{ip}]:{port}" if family == socket.AF_INET6 else f"ipv4:{ip}:{port}"
            for family, *_, (ip, *_) in infos
        )
    )


class _LeaderWatch:
    """Which member leads, asked of every configured endpoint (Maintenance.Status: the
    answering member's own id and the leader's), pointing `channels.leader` at the channel
    that reaches it.

    Members are matched by the id each one gives for itself through the configured
    endpoints, never by the client URLs in the member list (they may be names this host
    cannot use, or certificates may not list them). An endpoint whose name resolves to one
    address is asked through its own channel; one resolving to several (a name for the
    whole cluster, or `localhost` on IPv4 and IPv6) is asked address by address on channels
    of its own (certificate checked against the endpoint's host), so the leader's address
    is known exactly. Looks every LEADER_REFRESH seconds while a leader is known, every
    LEADER_RETRY seconds while none is, and at once (at most every LEADER_RETRY) when a
    call failed the way a leader change explains; never on the path of a call."""

    def __init__(
        self,
        channels: _Channels,
        endpoints: list[str],
        dial: Callable[[str, str], Any],
        timeout: float,
    ) -> None:
        self.channels = channels
        self.endpoints = endpoints
        self.dial = dial
        self.timeout = timeout
        #: Channels to single addresses of endpoints that resolve to several, by
        #: (endpoint, address); owned here, unlike the endpoint channels.
        self._own: dict[tuple[str, str], Any] = {}
        self._services: dict[Any, Any] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        channels.on_leader_lost = self._wake.set

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(LEADER_RETRY)
            wait = LEADER_REFRESH if self.channels.leader is not None else 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait - LEADER_RETRY))
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # a look that fails is retried; calls go round robin
                log.debug("looking for the etcd leader failed: %s", grpc_detail(exc)[1])

    async def _targets(self) -> list[tuple[str, Any]]:
        """Every channel to ask, with what it reaches: endpoint channels, or per-address
        ones (see the class)."""
        resolved = await asyncio.gather(
            *(_resolve(e) for e in self.endpoints), return_exceptions=True
        )
        targets: list[tuple[str, Any]] = []
        own: dict[tuple[str, str], Any] = {}
        for endpoint, channel, addresses in zip(
            self.endpoints, self.channels.channels, resolved, strict=True
        ):
            if isinstance(addresses, BaseException) or len(addresses) <= 1:
                targets.append((endpoint, channel))
                continue
            for address in addresses:
                key = (endpoint, address)
                own[key] = self._own.pop(key, None) or self.dial(endpoint, address)
                targets.append((f"{endpoint} at {address}", own[key]))
        stale, self._own = self._own, own
        for channel in stale.values():
            await self._close(channel)
        return targets

    async def refresh(self) -> None:
        """Ask every member now; point `channels.leader` at the leader, or at None."""
        from etcd3aio.maintenance import MaintenanceService

        targets = await self._targets()

        async def status(channel: Any) -> Any:
            service = self._services.get(channel)
            if service is None:
                service = self._services[channel] = MaintenanceService(channel, max_attempts=1)
            with contextlib.suppress(Exception):
                return await service.status(timeout=min(self.timeout, 2.0))
            return None

        answers = await asyncio.gather(*(status(c) for _, c in targets))
        # The leader most members name (a member cut off may still name an old one).
        votes = Counter(
            (int(a.leader), int(a.raftTerm)) for a in answers if a is not None and a.leader
        )
        found = None
        if votes:
            (leader_id, _), _ = max(votes.items(), key=lambda v: (v[1], v[0][1]))
            reaching = [
                (name, c)
                for (name, c), a in zip(targets, answers, strict=True)
                if a is not None and int(a.header.member_id) == leader_id
            ]
            if reaching:
                current = self.channels.leader
                found = next((t for t in reaching if t[1] is current), reaching[0])
        if found is None:
            self.channels.leader = None
        elif found[1] is not self.channels.leader:
            log.debug("etcd leader is member %x, reached at %s", leader_id, found[0])
            self.channels.leader = found[1]

    async def _close(self, channel: Any) -> None:
        if self.channels.leader is channel:
            self.channels.leader = None
        self.channels.forget(channel)
        self._services.pop(channel, None)
        with contextlib.suppress(Exception):
            await channel.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for channel in list(self._own.values()):
            await self._close(channel)
        self._own.clear()
        self._services.clear()


class _Manager:
    """Stands in for etcd3aio's ConnectionManager, which builds one `ipv4:` channel."""

    def __init__(self, channels: _Channels) -> None:
        self.channels = channels

    def get_channel(self, **_: Any) -> _Channels:
        return self.channels


class EtcdConnectError(Exception):  # raised as StoreCannotConnect by EtcdStore.open
    """The cluster cannot be used as configured; the message is one line, without secrets."""


class EtcdConnection:
    """An etcd3aio client over one channel per endpoint, authenticated when a user is set."""

    def __init__(self, endpoints: Sequence[str], access: EtcdAccess, *, timeout: float) -> None:
        self.endpoints = list(endpoints)
        self.access = access
        self.timeout = timeout
        self.client: Any = None
        self._channels: _Channels | None = None
        self._leader: _LeaderWatch | None = None
        self._auth: Any = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    def channel(
        self, endpoint: str, *, tls: bool, address: str | None = None, fresh: bool = False
    ) -> Any:
        """A channel to one `host:port`, with this connection's TLS settings when `tls`.

        With `address` (a gRPC `ipv4:`/`ipv6:` target) it connects there but checks the
        certificate against the host of `endpoint`, as the channel to the name would.
        With `fresh` it dials on connections of its own: gRPC otherwise shares subchannels
        process-wide by target and options, so a probe would reuse the store's connection to
        a member that was down, still waiting out its reconnect backoff (1 s growing x1.6 up
        to 120 s), and report the member dead for that long after it is back."""
        import grpc

        target = address or f"dns:///{endpoint}"
        options = list(_CHANNEL_OPTIONS)
        if fresh:
            options.append(("grpc.use_local_subchannel_pool", 1))
        if not tls:
            return grpc.aio.insecure_channel(target, options=options)
        access = self.access
        credentials = grpc.ssl_channel_credentials(
            root_certificates=access.ca, private_key=access.key, certificate_chain=access.cert
        )
        server_name = access.server_name or (_host(endpoint) if address else None)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _diagnose(self) -> list[str]:
        """Why each address fails, asked one by one: a channel reports only its last error,
        which may be about an address nobody listens on (localhost's ::1 when etcd listens
        on 127.0.0.1) rather than the TLS problem on the one that matters. Each probe dials
        on its own connection (`fresh`), not on the failed channel's, which may still be
        waiting out a reconnect backoff and would only repeat its last error."""
        from etcd3aio.maintenance import MaintenanceService

        async def probe(endpoint: str, address: str) -> str | None:
            channel = self.channel(endpoint, tls=self.access.tls, address=address, fresh=True)
            try:
                await MaintenanceService(channel, max_attempts=1).status(timeout=2.0)
                return None
            except Exception as exc:
                return grpc_detail(exc)[1]
            finally:
                await channel.close()

        found: list[str] = []
        probes = []
        for endpoint in self.endpoints:
            try:
                addresses = await _resolve(endpoint)
            except OSError as exc:
                found.append(f"errors resolving {endpoint}: {exc}")
                continue
            probes += [probe(endpoint, address) for address in addresses]
        found += [d for d in await asyncio.gather(*probes) if d is not None]
        return found

    async def open(self, prefix: str) -> Any:
        """Connect, authenticate and read one key of `prefix`: the client, or EtcdConnectError
        saying what is wrong (no TLS, untrusted certificate, wrong password, ...)."""
        from etcd3aio import Etcd3Client
        from etcd3aio.auth import AuthService

        channels = _Channels([self.channel(e, tls=self.access.tls) for e in self.endpoints])
        self._channels = channels
        # No library retries: a Txn whose answer was lost may have committed (notes §3).
        client: Any = Etcd3Client(self.endpoints, rpc_max_attempts=1)
        client._manager = _Manager(channels)
        await client.connect()
        self.client = client
        await channels.wait_ready(self.timeout)
        tls = self.access.tls
        leader = _LeaderWatch(
            channels,
            self.endpoints,
            lambda endpoint, address: self.channel(endpoint, tls=tls, address=address),
            self.timeout,
        )
        self._leader = leader
        with contextlib.suppress(Exception):  # no leader known yet: round robin for now
            await leader.refresh()
        leader.start()
        try:
            if self.access.user is not None:
                # A service of its own, never given the token: etcd refuses an Authenticate
                # that carries a stale one.
                self._auth = AuthService(channels, max_attempts=1)
                await self._authenticate()
                channels.reauthenticate = self.reauthenticate
            # A read inside the prefix: connected, trusted, and allowed there.
            await client.kv.get(prefix.encode(), keys_only=True, timeout=self.timeout)
        except Exception as exc:
            import grpc

            code, detail = grpc_detail(exc)
            details = [detail]
            if code == grpc.StatusCode.UNAVAILABLE:
                details += await self._diagnose()
            raise EtcdConnectError(self.explain(code, details, prefix)) from None
        return client

    async def _authenticate(self) -> str | None:
        import grpc
        from etcd3aio.errors import EtcdError

        assert self.access.user is not None and self.access.password is not None
        try:
            resp = await self._auth.authenticate(
                self.access.user, self.access.password, timeout=self.timeout
            )
        except (EtcdError, grpc.aio.AioRpcError) as exc:
            if "authentication is not enabled" not in grpc_detail(exc)[1]:
                raise
            log.warning(
                "etcd authentication is not enabled on the cluster: user %r is not used",
                self.access.user,
            )
            return None
        self._token = str(resp.token)
        self.client.set_token(self._token)
        return self._token

    async def reauthenticate(self, stale: str | None) -> str | None:
        """A fresh token, asking etcd once however many calls found `stale` rejected."""
        async with self._auth_lock:
            if self._token != stale:
                return self._token
            log.info("etcd rejected the auth token; authenticating again")
            return await self._authenticate()

    async def renew_stale_token(self, exc: BaseException) -> bool:
        """Authenticate again if `exc` is etcd refusing this connection's token (True then).

        For the watches: _Channels resends a unary call itself, but a watch opened with a
        stale token is refused at creation (a restarted member has forgotten every token),
        and reopening it with the same token would be refused forever. False too when the
        authentication fails (etcd away): the watch then retries as after any failure."""
        if self._auth is None or not _refuses_token(grpc_detail(exc)[1]):
            return False
        try:
            await self.reauthenticate(self._token)
        except Exception as failed:
            log.warning("etcd: authenticating again failed: %s", grpc_detail(failed)[1])
            return False
        return True

    async def keep_alive(self, lease_id: int) -> None:
        """Renew a lease once (one request on the keep-alive stream)."""
        import grpc

        for attempt in range(2):
            stream = self.client.lease.keep_alive(lease_id)
            try:
                async with asyncio.timeout(self.timeout):
                    async for _ in stream:
                        return
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if attempt or self._auth is None or not _refuses_token(details):
                    raise
                await self.reauthenticate(self._token)
            finally:
                stream.cancel()

    def explain(self, code: Any, details: list[str], prefix: str) -> str:
        """One line for the operator about why the first calls failed (never a secret):
        the most specific of `details` (the call's own, then each address's)."""
        import grpc

        def has(*needles: str) -> str | None:
            return next((d for d in details if any(n in d for n in needles)), None)

        hosts = ",".join(self.endpoints)
        tls, user = self.access.tls, self.access.user
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"etcd at {hosts} did not answer within {self.timeout:g} s"
        if has("authentication failed"):
            return f"etcd refused user {user!r}: wrong user name or password"
        if found := has("permission denied"):
            who = f"user {user!r}" if user else "this client"
            return (
                f"etcd denies {who} access to prefix {prefix}: grant it a role with readwrite "
                f"permission on that prefix ({found})"
            )
        if has("user name is empty"):
            return (
                "etcd requires authentication: set BLIXARD_ETCD_USER and BLIXARD_ETCD_PASSWORD "
                "(or _FILE), or present a client certificate whose CN is an etcd user"
            )
        if has("CERTIFICATE_VERIFY_FAILED"):
            return (
                f"the TLS certificate of etcd at {hosts} is not trusted: give the CA that "
                "signed it (ca= in the storage URL or BLIXARD_ETCD_CA_CERT)"
            )
        if has("Hostname Verification", "Peer name", "not in peer certificate"):
            return (
                f"the TLS certificate of etcd at {hosts} does not name that host: use a name "
                "it lists, or server_name= in the storage URL"
            )
        if tls and has("WRONG_VERSION_NUMBER"):
            return f"etcd at {hosts} does not speak TLS: use etcd:// instead of etcds://"
        if tls and has("TSI_DATA_CORRUPTED", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED"):
            if self.access.cert is None:
                return (
                    f"etcd at {hosts} requires a client certificate: set BLIXARD_ETCD_CLIENT_CERT "
                    "and BLIXARD_ETCD_CLIENT_KEY (or cert= and key= in the storage URL)"
                )
            return f"etcd at {hosts} refused the client certificate (is it signed by its CA?)"
        if not tls and has("Socket closed"):
            return f"etcd at {hosts} closed the connection: if it serves TLS, use etcds://"
        if found := has("errors resolving", "DNS resolution"):
            return f"cannot resolve the etcd host names in {hosts} ({found})"
        return f"cannot reach etcd at {hosts} ({details[0]})"

    async def close(self) -> None:
        if self._leader is not None:
            await self._leader.close()
            self._leader = None
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._channels is not None:
            await self._channels.close()
        self.client = None
        self._channels = None
