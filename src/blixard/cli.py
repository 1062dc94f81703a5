"""The `blixard` command line: `serve` plus client commands that talk to a server over HTTP."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="blixard",
    help="Blixard: a remote state server for OpenTofu and Terraform.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Blixard: a remote state server for OpenTofu and Terraform."""


@app.command()
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
) -> None:
    """Run the Blixard server."""
    from blixard.server import serve as run_server

    flags: dict[str, object | None] = {
        "listen": listen,
        "storage_url": storage_url,
        "data_dir": data_dir,
        "max_state_bytes": max_state_bytes,
        "log_level": log_level,
    }
    run_server({k: v for k, v in flags.items() if v is not None})


def main() -> None:
    app()
