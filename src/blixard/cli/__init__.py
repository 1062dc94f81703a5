"""The `blixard` command line: `serve` plus client commands that talk to a server over HTTP.

Client commands read the server address from `--url` or `BLIXARD_URL` (default
http://127.0.0.1:8080) and an optional API key from `--api-key` or `BLIXARD_API_KEY`
(sent as `Authorization: Bearer <key>`). Errors go to stderr as one line, exit code 1.

This package holds the `app` and registers every command; the commands live in
serve.py, state.py, explorer.py, keys.py (keys and audit), runs.py, encryption.py and
backup.py, and share client.py (the HTTP Client, errors and formatting).
"""

from __future__ import annotations

import os

import typer

from blixard.cli.backup import backup_app
from blixard.cli.encryption import encryption_app
from blixard.cli.explorer import diff, outputs, resources
from blixard.cli.keys import audit, keys_app
from blixard.cli.runs import apply, cancel, discard, logs, plan, plans
from blixard.cli.search import duplicates, reindex, search
from blixard.cli.serve import serve
from blixard.cli.state import (
    backend_config,
    history,
    lock,
    rollback,
    show,
    unlock,
    workspaces,
)

app = typer.Typer(
    name="blixard",
    help="Blixard: a remote state server for OpenTofu and Terraform.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Blixard: a remote state server for OpenTofu and Terraform."""


# Commands are listed in `blixard --help` in this order, then the groups below.
app.command()(serve)
app.command()(workspaces)
app.command()(history)
app.command()(show)
app.command()(rollback)
app.command()(lock)
app.command()(unlock)
app.command("backend-config")(backend_config)
app.command()(resources)
app.command()(outputs)
app.command()(diff)
app.command()(audit)
app.command()(plan)
app.command()(apply)
app.command()(plans)
app.command()(logs)
app.command()(discard)
app.command()(cancel)
app.command()(search)
app.command()(duplicates)
app.command()(reindex)

app.add_typer(encryption_app)
app.add_typer(backup_app)  # backup, restore, migrate
app.add_typer(keys_app, name="keys")


def main() -> None:
    # gRPC (the etcd engine) logs TLS handshake failures and the like to stderr at INFO;
    # Blixard reports them itself, in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()
