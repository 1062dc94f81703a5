"""`blixard serve`: run the server."""

from __future__ import annotations

import typer


def serve(
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT to listen on (env BLIXARD_LISTEN; 127.0.0.1:8080)."
    ),
    storage_url: str | None = typer.Option(
        None,
        "--storage-url",
        help="Storage URL, e.g. sqlite:///./data/blixard.db (env BLIXARD_STORAGE_URL).",
    ),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Data directory of the embedded store (env BLIXARD_DATA_DIR)."
    ),
    max_state_bytes: int | None = typer.Option(
        None,
        "--max-state-bytes",
        help="Largest accepted state body in bytes (env BLIXARD_MAX_STATE_BYTES).",
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", help="debug, info, warning or error (env BLIXARD_LOG_LEVEL)."
    ),
    tls_cert: str | None = typer.Option(
        None,
        "--tls-cert",
        help="PEM certificate chain: serve HTTPS (env BLIXARD_TLS_CERT; needs --tls-key).",
    ),
    tls_key: str | None = typer.Option(
        None, "--tls-key", help="PEM private key of --tls-cert (env BLIXARD_TLS_KEY)."
    ),
    tls_client_ca: str | None = typer.Option(
        None,
        "--tls-client-ca",
        help="PEM CA bundle: require client certificates signed by it, i.e. mutual TLS "
        "(env BLIXARD_TLS_CLIENT_CA).",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Allow listening beyond loopback with authentication off (env BLIXARD_INSECURE).",
    ),
) -> None:
    """Run the Blixard server."""
    from blixard.server import serve as run_server

    flags: dict[str, object | None] = {
        "listen": listen,
        "storage_url": storage_url,
        "data_dir": data_dir,
        "max_state_bytes": max_state_bytes,
        "log_level": log_level,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_client_ca": tls_client_ca,
        "insecure": True if insecure else None,
    }
    run_server({k: v for k, v in flags.items() if v is not None})
