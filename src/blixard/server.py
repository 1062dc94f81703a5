"""`blixard serve`: settings → app → uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from blixard import access_log
from blixard.config import Settings
from blixard.datadir import PRIVATE_UMASK, make_private
from blixard.domain.events import EventBus


class TlsConfigError(ValueError):
    """A TLS setting that cannot work; the message is one line for the operator."""


def _check_readable(flag: str, path: Path) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except IsADirectoryError:
        raise TlsConfigError(f"{flag} {path}: is a directory, expected a PEM file") from None
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run keyword arguments for HTTPS / mutual TLS, checked before anything starts.

    Returns {} when TLS is not configured. Raises TlsConfigError for a combination that cannot
    work (certificate without key, client CA without certificate), for files that cannot be
    read, and for PEM content that the TLS library refuses (e.g. a key that does not match).
    """
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None and key is None and client_ca is None:
        return {}
    if cert is None and key is not None:
        raise TlsConfigError("--tls-key (BLIXARD_TLS_KEY) needs --tls-cert (BLIXARD_TLS_CERT)")
    if cert is None:
        raise TlsConfigError(
            "--tls-client-ca (BLIXARD_TLS_CLIENT_CA) needs --tls-cert and --tls-key: "
            "mutual TLS runs over HTTPS"
        )
    if key is None:
        raise TlsConfigError("--tls-cert (BLIXARD_TLS_CERT) needs --tls-key (BLIXARD_TLS_KEY)")
    _check_readable("--tls-cert", cert)
    _check_readable("--tls-key", key)
    if client_ca is not None:
        _check_readable("--tls-client-ca", client_ca)

    def no_password() -> bytes:
        # Called only for an encrypted key, which uvicorn would otherwise prompt for on a tty.
        raise TlsConfigError(
            f"--tls-key {key}: encrypted private keys are not supported; "
            "decrypt it (e.g. openssl pkey -in KEY -out PLAIN_KEY) and restrict its permissions"
        )

    # Load everything once here so bad PEM content fails now, in one line, not as a traceback
    # from inside uvicorn after the app has been built.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=no_password)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"--tls-cert {cert} / --tls-key {key}: not a valid PEM certificate chain and "
            f"matching unencrypted private key ({exc.reason or 'no usable PEM data'})"
        ) from None
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise TlsConfigError(
                f"--tls-client-ca {client_ca}: not a PEM CA bundle "
                f"({exc.reason or 'no usable PEM data'})"
            ) from None
        options.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def startup_line(settings: Settings, auth_on: bool) -> str:
    """The one line a new user needs: where to click, where data lives, whether keys count."""
    url = settings.self_url
    storage = settings.resolved_storage_url
    if storage.startswith("sqlite:///"):
        where = str(Path(storage.removeprefix("sqlite:///")).resolve())
    else:  # never print credentials or options an operator put in the URL
        scheme, _, rest = storage.partition("://")
        where = f"{scheme}://{rest.rpartition('@')[2].split('?')[0]}"
    auth = (
        "on (sign in with an API key)"
        if auth_on
        else "OFF (no API key exists: anyone who reaches this address is admin)"
    )
    return f"Blixard: web UI {url}/ui/ · API docs {url}/docs · data {where} · authentication {auth}"


def serve(overrides: dict[str, Any] | None = None) -> None:
    try:
        settings = Settings.load(overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"blixard: invalid configuration: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        tls = tls_options(settings)
    except TlsConfigError as exc:
        print(f"blixard: invalid TLS configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Everything the server writes (database, WAL, runs' work directories) is private from
    # the start; what an earlier start, a restore or a hand left looser is tightened now.
    os.umask(PRIVATE_UMASK)
    try:
        make_private(settings.data_dir)
    except OSError as exc:
        print(
            f"blixard: cannot make the data directory {settings.data_dir} private (0700): "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    from blixard.api.limits import http_protocol
    from blixard.preflight import StartupRefused, preflight

    def build_app() -> Any:
        """Called by uvicorn inside its loop, once the preflight has passed."""
        from blixard.api.app import asgi_app, create_app

        app = create_app(settings)
        access_log.install()  # no variable values in access log lines
        app.state.announce = lambda auth_on: print(startup_line(settings, auth_on), flush=True)
        server.events = app.state.events
        return asgi_app(app, limited_protocol=True)

    config = uvicorn.Config(
        build_app,
        factory=True,
        # Request heads capped in size and time while they are received.
        http=http_protocol(head_timeout=settings.body_timeout_seconds),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
        lifespan="on",  # a store that cannot open must stop the server, not be skipped
        timeout_graceful_shutdown=10,
        **tls,
    )
    server = _Server(config, before=lambda: preflight(settings))
    try:
        server.run()
    except StartupRefused as exc:
        print(f"blixard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _Server(uvicorn.Server):
    """uvicorn, with the preflight on its own loop, ending the live event streams when asked
    to stop: a graceful shutdown waits for open responses, and a stream would otherwise hold
    it until the timeout.

    The preflight runs on the server's loop, not one of its own before it: gRPC's asyncio
    layer delivers a call's completion to the loop that started it, and an etcd call cut
    short when the preflight's loop closed would reach the server's loop as a traceback."""

    def __init__(self, config: uvicorn.Config, before: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self.before = before
        #: The app's event bus, once uvicorn has built the app.
        self.events: EventBus | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await self.before()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: hand the work to the loop (no loop yet: nothing is streaming).
        if self.events is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon_threadsafe(self.events.close)
        super().handle_exit(sig, frame)
