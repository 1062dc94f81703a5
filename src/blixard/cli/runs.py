"""Runs: plan, apply, plans, logs, discard, cancel (the server plans and applies)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from blixard.cli import common
from blixard.cli.client import API_PREFIX, Client
from blixard.cli.common import DEFAULT_URL, ApiKeyOpt, JsonOpt, UrlOpt, relative_age
from blixard.domain.shapes import human_size

#: Nothing more will happen to a run in these statuses.
RUN_FINISHED = frozenset({"no_changes", "applied", "errored", "discarded", "cancelled"})
PLAN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
FOLLOW_POLL_SECONDS = 0.5
STATUS_POLL_SECONDS = 1.0


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RunClient(Client):
    """The Client, plus archive uploads, log streams and run-specific error hints."""

    def error_message(self, status: int, content: bytes) -> str:
        body = _json_object(content)
        code, message = body.get("error"), body.get("message")
        if not isinstance(message, str) or not message:
            return super().error_message(status, content)
        if code == "stale_plan":
            return f"stale plan: {message} (stale_plan, HTTP {status})"
        if code == "runner_unavailable":
            return f"the server cannot run plans: {message} (runner_unavailable, HTTP {status})"
        if status == 403 and "BLIXARD_PLAN_ROOTS" in message:
            return f"{message} (forbidden, HTTP 403)"
        if status == 403:
            return (
                f"{message} (forbidden, HTTP 403); creating, applying, discarding and "
                "cancelling plans needs an operator key: pass it with --api-key or "
                "BLIXARD_API_KEY"
            )
        return super().error_message(status, content)

    def upload(self, path: str, params: list[tuple[str, str]], archive: bytes) -> dict[str, Any]:
        """POST a tar.gz body; return the JSON object of the 2xx answer."""
        import httpx

        try:
            resp = self.http.post(
                API_PREFIX + path,
                params=tuple(params),
                content=archive,
                headers={"Content-Type": "application/gzip"},
            )
        except httpx.TransportError as exc:
            self._unreachable(exc)
        if resp.status_code >= 400:
            common.fail(self.error_message(resp.status_code, resp.content))
        body = _json_object(resp.content)
        if not body.get("plan_id"):
            common.fail(f"unexpected answer from {self.base}: {resp.content[:200]!r}")
        return body

    def run(self, plan_id: str) -> dict[str, Any]:
        raw, body = self.request("GET", f"/plan/{quote(plan_id, safe='')}")
        if not isinstance(body, dict) or "status" not in body:
            common.fail(f"unexpected answer from {self.base}: {raw[:200]!r}")
        return body

    def log_size(self, plan_id: str) -> int:
        raw, _ = self.request("GET", f"/plan/{quote(plan_id, safe='')}/logs")
        return len(raw)

    def follow_log(self, plan_id: str, skip: int, write: Any) -> int:
        """Stream the log (?follow=1) until the server ends it, passing every byte after the
        first `skip` to `write`; return how many bytes of the log have been seen."""
        import httpx

        seen = 0
        try:
            with self.http.stream(
                "GET",
                f"{API_PREFIX}/plan/{quote(plan_id, safe='')}/logs",
                params={"follow": "1"},
                timeout=httpx.Timeout(None, connect=5.0),  # a quiet run may say nothing for long
            ) as resp:
                if resp.status_code >= 400:
                    common.fail(self.error_message(resp.status_code, resp.read()))
                for chunk in resp.iter_bytes():
                    start = max(0, skip - seen)
                    seen += len(chunk)
                    if start < len(chunk):
                        write(chunk[start:])
        except httpx.TransportError as exc:
            self._unreachable(exc)
        return max(seen, skip)


@contextmanager
def _run_client(url: str, api_key: str | None) -> Iterator[RunClient]:
    client = RunClient(url, api_key)
    try:
        yield client
    finally:
        client.close()


def _check_plan_id(plan_id: str) -> str:
    if not PLAN_ID_RE.match(plan_id):
        common.fail(
            f"invalid plan id {plan_id!r}: expected something like run-0192a3b4c5d6e7f8a9b0"
        )
    return plan_id


def _awaiting_approval(run: dict[str, Any]) -> bool:
    approval = ("auto_approve", "approved_at", "approved_by", "approver_comment")
    return run.get("status") == "planned" and not any(run.get(field) for field in approval)


class _LogSink:
    """Writes a run's log: raw bytes to stdout, or whole lines above a live status line."""

    def __init__(self, console: Any | None = None) -> None:
        import codecs

        self.console = console
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def write(self, chunk: bytes) -> None:
        if self.console is None:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            return
        *lines, self._pending = (self._pending + self._decoder.decode(chunk)).split("\n")
        for line in lines:
            self.console.out(line, highlight=False)

    def close(self) -> None:
        if self.console is not None:
            rest = self._pending + self._decoder.decode(b"", final=True)
            if rest:
                self.console.out(rest, highlight=False)
            self._pending = ""


def _follow_run(
    client: RunClient,
    plan_id: str,
    sink: _LogSink,
    settled: Any,
    skip: int = 0,
) -> dict[str, Any]:
    """Stream the run's log until `settled(run)`; return the run as last seen."""
    seen = skip
    while True:
        seen = client.follow_log(plan_id, seen, sink.write)
        run = client.run(plan_id)
        if settled(run):
            sink.close()
            return run
        time.sleep(FOLLOW_POLL_SECONDS)  # e.g. between the plan and its auto-approved apply


def _watch(url: str, api_key: str | None, plan_id: str, skip: int, settled: Any) -> dict[str, Any]:
    """Follow a run: its log, and on a terminal a live status line below it."""
    console = common.console()
    with _run_client(url, api_key) as client:
        if not console.is_terminal:
            return _follow_run(client, plan_id, _LogSink(), settled, skip)
        import threading

        from rich.markup import escape

        started = time.monotonic()
        stop = threading.Event()
        with console.status(f"{escape(plan_id)}: ...", spinner="dots") as status:

            def poll() -> None:
                with _run_client(url, api_key) as poller:
                    current = "..."
                    while not stop.is_set():
                        try:
                            resp = poller.http.get(f"{API_PREFIX}/plan/{quote(plan_id, safe='')}")
                            current = str(_json_object(resp.content).get("status") or current)
                        except Exception:
                            pass  # the status line is a nicety; the log stream reports errors
                        elapsed = common.format_duration(time.monotonic() - started)
                        status.update(f"{escape(plan_id)}: [bold]{escape(current)}[/] ({elapsed})")
                        stop.wait(STATUS_POLL_SECONDS)

            thread = threading.Thread(target=poll, name="blixard-status", daemon=True)
            thread.start()
            try:
                return _follow_run(client, plan_id, _LogSink(console), settled, skip)
            finally:
                stop.set()
                thread.join(5)


def _following(call: Any) -> dict[str, Any]:
    """Run a follow; Ctrl-C stops watching (the run goes on)."""
    try:
        run: dict[str, Any] = call()
    except KeyboardInterrupt:
        typer.echo("\nstopped following; the run goes on on the server.", err=True)
        raise typer.Exit(code=130) from None
    return run


def _counts(summary: dict[str, Any] | None) -> str:
    s = summary or {}
    return (
        f"{s.get('add', 0)} to add, {s.get('change', 0)} to change, "
        f"{s.get('destroy', 0)} to destroy"
    )


def _action_symbol(actions: list[str]) -> str:
    if "create" in actions and "delete" in actions:
        return "-/+"
    if "create" in actions:
        return "+"
    if "delete" in actions:
        return "-"
    return "~"


def _report_run(run: dict[str, Any]) -> None:
    """What became of a run, and what to do next; exit 1 unless it went well."""
    console = common.console()
    plan_id, ws, status = run.get("plan_id"), run.get("workspace"), run.get("status")
    summary = run.get("summary")
    if status == "planned":
        console.print(f"Plan {plan_id} for {ws}: {_counts(summary)}.", markup=False)
        for change in (summary or {}).get("resource_changes") or []:
            actions = list(change.get("actions") or [])
            console.print(
                f"  {_action_symbol(actions)} {change.get('address')} ({', '.join(actions)})",
                markup=False,
            )
        console.print("Review it, then apply it with:", markup=False)
        console.print(f"  blixard apply {plan_id}", markup=False)
        console.print(f"or throw it away with: blixard discard {plan_id}", markup=False)
    elif status == "no_changes":
        console.print(
            f"No changes: {ws} already matches the configuration (plan {plan_id}).", markup=False
        )
    elif status == "applied":
        console.print(
            f"Applied {plan_id} to {ws}: {_counts(summary)}; "
            f"state version {run.get('state_version') or '-'}.",
            markup=False,
        )
    elif status == "errored":
        common.fail(f"run {plan_id} errored: {run.get('error') or 'unknown error'}")
    elif status == "cancelled":
        common.fail(f"run {plan_id} was cancelled by {run.get('cancelled_by') or 'an operator'}")
    elif status == "discarded":
        common.fail(f"run {plan_id} was discarded by {run.get('discarded_by') or 'an operator'}")
    else:
        console.print(
            f"Run {plan_id} is {status}; follow it with: blixard logs {plan_id} --follow",
            markup=False,
        )


def _parse_vars(items: list[str]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not sep or not name.strip():
            common.fail(f"invalid --var {item!r}: use NAME=VALUE")
        params.append(("var", item))
    return params


def plan(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="Configuration directory; uploaded as a tar.gz (.terraform and state files "
            "are left out).",
            exists=True,
            file_okay=False,
            dir_okay=True,
            resolve_path=True,
        ),
    ],
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply at once if the plan has changes.")
    ] = False,
    destroy: Annotated[
        bool, typer.Option("--destroy", help="Plan destroying every resource.")
    ] = False,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", metavar="NAME=VALUE", help="An input variable (repeatable)."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", metavar="ADDR", help="Limit the plan to ADDR (repeatable)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Stream the log until the plan is ready (or the run ends)."
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Have the server plan DIR against WORKSPACE's state (a run, reviewed before apply)."""
    common.check_workspace(workspace)
    params = [
        ("workspace", workspace),
        ("auto_approve", "true" if auto_approve else "false"),
        ("destroy", "true" if destroy else "false"),
        *_parse_vars(var or []),
        *(("target", address) for address in target or []),
    ]
    from blixard.runs.archive import make_archive

    try:
        archive = make_archive(directory)
    except Exception as exc:  # unreadable files, a link pointing outside, ...
        common.fail(f"cannot archive {directory}: {exc}")
    with _run_client(url, api_key) as client:
        run = client.upload("/plan", params, archive)
    plan_id = str(run["plan_id"])
    if not follow:
        if as_json:
            common.print_json(json.dumps(run, indent=2).encode())
            return
        common.console().print(
            f"Queued plan {plan_id} for {workspace} ({human_size(len(archive))} uploaded).\n"
            f"Follow it with: blixard logs {plan_id} --follow",
            markup=False,
        )
        return
    if not as_json:
        common.console().print(f"Queued plan {plan_id} for {workspace}.", markup=False)
    final = _following(
        lambda: _watch(
            url,
            api_key,
            plan_id,
            0,
            lambda r: r.get("status") in RUN_FINISHED or _awaiting_approval(r),
        )
    )
    if as_json:
        common.print_json(json.dumps(final, indent=2).encode())
        return
    _report_run(final)


def apply(
    plan_id: Annotated[str, typer.Argument(help="The plan to apply (from `blixard plan`).")],
    comment: Annotated[
        str | None,
        typer.Option("--comment", help="A note recorded with the approval (e.g. a ticket)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the apply's log until it ends.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a planned run and apply exactly that plan (refused if the state moved since)."""
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        skip = client.log_size(plan_id) if follow else 0  # the plan's log was seen already
        raw, body = client.request(
            "POST", f"/apply/{quote(plan_id, safe='')}", json_body={"approver": comment}
        )
    run = body if isinstance(body, dict) else {}
    if not follow:
        if as_json:
            common.print_json(raw)
            return
        common.console().print(
            f"Approved {plan_id} for {run.get('workspace')}"
            + (f" as {run['approved_by']}" if run.get("approved_by") else "")
            + f"; applying.\nFollow it with: blixard logs {plan_id} --follow",
            markup=False,
        )
        return
    final = _following(
        lambda: _watch(url, api_key, plan_id, skip, lambda r: r.get("status") in RUN_FINISHED)
    )
    if as_json:
        common.print_json(json.dumps(final, indent=2).encode())
        return
    _report_run(final)


def _changes_cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return f"+{summary.get('add', 0)} ~{summary.get('change', 0)} -{summary.get('destroy', 0)}"


def plans(
    workspace: Annotated[str, typer.Argument(help="Workspace name.")],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=1000, help="Runs to show (default 50).")
    ] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Only runs older than this plan id.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's plans (runs), newest first."""
    common.check_workspace(workspace)
    with _run_client(url, api_key) as client:
        raw, body = client.request("GET", f"/plans/{workspace}", {"limit": limit, "before": before})
    if as_json:
        common.print_json(raw)
        return
    runs = common.listed(raw, body, "plans", url)
    console = common.console()
    if not runs:
        console.print(f"No plans for {workspace}.", markup=False)
        return
    table = common.table(
        ("PLAN", "STATUS", "CHANGES", "CREATED", "BY", "APPROVED BY", "NODE", "NOTE")
    )
    for run in runs:
        status = str(run.get("status") or "-")
        if run.get("destroy"):
            status += " (destroy)"
        note = run.get("error") or run.get("approver_comment")
        if run.get("status") == "discarded":
            note = f"discarded by {run.get('discarded_by') or '-'}"
        elif run.get("status") == "cancelled":
            note = f"cancelled by {run.get('cancelled_by') or '-'}"
        table.add_row(
            common.text(run.get("plan_id")),
            common.text(status),
            common.text(_changes_cell(run.get("summary"))),
            relative_age(run.get("created_at")),
            common.text(run.get("created_by")),
            common.text(run.get("approved_by")),
            common.text(run.get("executor")),
            common.text(note),
        )
    console.print(table)
    common.print_older(console, body, "plans")


def logs(
    plan_id: Annotated[str, typer.Argument(help="The plan (run) id.")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep streaming until the run ends or awaits approval."
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a run's log (init, plan and apply output) to stdout."""
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        if not follow:
            client.stream_to(f"/plan/{quote(plan_id, safe='')}/logs", {}, sys.stdout.buffer)
            return
        _following(
            lambda: _follow_run(
                client,
                plan_id,
                _LogSink(),
                lambda r: r.get("status") in RUN_FINISHED or _awaiting_approval(r),
            )
        )


def _run_action(plan_id: str, action: str, url: str, api_key: str | None) -> dict[str, Any]:
    _check_plan_id(plan_id)
    with _run_client(url, api_key) as client:
        raw, body = client.request("POST", f"/plans/{quote(plan_id, safe='')}/{action}")
    if not isinstance(body, dict) or "status" not in body:
        common.fail(f"unexpected answer from {url}: {raw[:200]!r}")
    return body


def discard(
    plan_id: Annotated[str, typer.Argument(help="A queued or planned run.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Throw away a plan that is queued or awaiting approval."""
    run = _run_action(plan_id, "discard", url, api_key)
    if as_json:
        common.print_json(json.dumps(run, indent=2).encode())
        return
    common.console().print(f"Discarded {plan_id} ({run.get('workspace')}).", markup=False)


def cancel(
    plan_id: Annotated[str, typer.Argument(help="A queued, planning or applying run.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run: interrupt its plan or apply (its state lock is released)."""
    run = _run_action(plan_id, "cancel", url, api_key)
    if as_json:
        common.print_json(json.dumps(run, indent=2).encode())
        return
    if run.get("status") == "cancelled":
        common.console().print(f"Cancelled {plan_id} ({run.get('workspace')}).", markup=False)
    else:
        common.console().print(
            f"Cancel requested for {plan_id}; it is still {run.get('status')} "
            f"(check with: blixard logs {plan_id}).",
            markup=False,
        )
