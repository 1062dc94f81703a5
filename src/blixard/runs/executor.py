"""Executing runs: a bounded pool of workers, one run per workspace at a time.

Each phase (plan, apply) gets its own temporary work directory holding a copy of the run's
configuration, pointed at this very server through the http backend with a short-lived key
that may only write the run's workspace. So a run locks and writes state through the normal
protocol, and history and audit name the run that wrote each version.

Several nodes may share one store: any node executes any queued run, a phase is claimed by a
compare-and-set on the run's revision that records the node, and every node holds a lease in
the store (nodes.py). A periodic sweep on every node interrupts the runs of nodes whose lease
expired (releasing the state lock they held) and adopts queued and approved runs that no
node is executing, so a node that dies loses no run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from blixard import __version__
from blixard.auth.keyring import KeyRing
from blixard.config import Settings
from blixard.domain.access import Action, Actor, Role, audit_event
from blixard.domain.errors import StorageUnavailable
from blixard.domain.roles import RunHost
from blixard.domain.runs import (
    EXECUTING,
    FINISHED,
    Run,
    RunConflict,
    RunStatus,
    summarize_plan,
)
from blixard.domain.service import StateService
from blixard.runs.archive import extract_archive
from blixard.runs.binary import BinaryNotFound, TerraformBinary, resolve_binary
from blixard.runs.logs import LiveLog, Redactor
from blixard.runs.nodes import NodePresence
from blixard.runs.sandbox import RunPaths, RunSandbox, SandboxUnavailable, describe_off
from blixard.runs.workdir import (
    UnsupportedConfig,
    backend_env,
    cli_config_text,
    prepare_workdir,
    step_environment,
)

log = logging.getLogger("blixard.runs")

PLAN_FILE = "blixard-run.tfplan"
LOG_FLUSH_SECONDS = 0.5
#: The actor the server acts as when it cleans up after a run (releasing its lock).
SYSTEM = Actor(name="blixard", role=Role.admin, source="blixard")


@dataclass(frozen=True, slots=True)
class _Job:
    run_id: str
    workspace: str
    phase: str  # "plan" or "apply"


class RunFailed(Exception):
    """A phase failed; the message is the run's error."""


class ClaimedElsewhere(Exception):
    """Another worker (or node) started this phase first: leave the run alone."""


class RunExecutor:
    def __init__(
        self, store: RunHost, service: StateService, keyring: KeyRing, settings: Settings
    ) -> None:
        self.store = store
        self.service = service
        self.keyring = keyring
        self.settings = settings
        self._pending: list[_Job] = []
        self._busy: set[str] = set()
        self._changed = asyncio.Condition()
        self._workers: list[asyncio.Task[None]] = []
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._cancelling: set[str] = set()
        self.live: dict[str, LiveLog] = {}
        self.work_root = settings.data_dir / "runs"
        self.plugin_cache_root = settings.data_dir / "plugin-cache"
        self.sandbox = RunSandbox(
            enabled=settings.run_sandbox == "on",
            network=settings.run_network,
            hidden=_secret_paths(settings),
            extra_readonly=[os.environ["SSL_CERT_FILE"]] if "SSL_CERT_FILE" in os.environ else [],
        )
        #: Stable across restarts of this node, distinct between nodes sharing a store (the
        #: data directory as a digest: the id is shown on unauthenticated /health/hiqlite).
        digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:6]
        self.node_id = f"{socket.gethostname()}-{digest}"
        self.presence = NodePresence(
            store,
            self.node_id,
            settings.node_ttl,
            {"version": __version__, "started_at": time.time()},
            self._lease_lost,
        )
        #: Runs whose phase this process claimed (added just before the claim's CAS).
        self._claimed: set[str] = set()
        #: Why a claimed run is being stopped when it is not a user's cancel.
        self._interrupted: dict[str, str] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True)
        state = await asyncio.to_thread(self.sandbox.probe)
        if state.sandbox == "off":
            log.warning(describe_off())
            if state.network == "none":
                log.warning("BLIXARD_RUN_NETWORK=none has no effect without the sandbox")
        elif not state.available:
            log.error("runs are unavailable: %s", state.reason)
        else:
            log.info("runs execute in a bubblewrap sandbox (network: %s)", state.network)
        for leftover in self.work_root.iterdir():  # work dirs of runs a crash interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        await self.presence.start()
        await self.recover()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"blixard-run-worker-{index}")
            for index in range(self.settings.run_workers)
        ]
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="blixard-run-sweep")

    async def stop(self) -> None:
        tasks = [*self._workers, *self._background, *([self._sweeper] if self._sweeper else [])]
        for process in list(self._processes.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers, self._sweeper = [], None
        # Last, once its processes are dead: the other nodes take its runs over at once.
        await self.presence.stop()

    async def recover(self) -> None:
        """After a restart: executing runs were interrupted; queued and approved ones go on."""
        executing = tuple(status.value for status in EXECUTING)
        for run in await self.store.list_runs(statuses=executing, limit=10_000):
            if run.executor not in (None, self.node_id):
                continue  # another node's: the sweep interrupts it if that node is gone
            _kill_leftovers(run)
            await self._interrupt(run, "interrupted")
        for run in reversed(await self.store.list_runs(statuses=("queued",), limit=10_000)):
            self.enqueue(run, "plan")
        for run in reversed(await self.store.list_runs(statuses=("planned",), limit=10_000)):
            if run.approved_at is not None:
                self.enqueue(run, "apply")

    # -- queue ---------------------------------------------------------------------------

    def enqueue(self, run: Run, phase: str) -> None:
        self._pending.append(_Job(run.id, run.workspace, phase))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _take_runnable(self) -> _Job | None:
        for index, job in enumerate(self._pending):
            if job.workspace not in self._busy:
                self._busy.add(job.workspace)
                return self._pending.pop(index)
        return None

    async def _worker(self) -> None:
        while True:
            await self.presence.held.wait()  # without a lease, other nodes may take the run
            async with self._changed:
                job = self._take_runnable()
                while job is None:
                    await self._changed.wait()
                    job = self._take_runnable()
            try:
                await self._run_job(job)
            except Exception:
                log.exception("run %s: unexpected failure", job.run_id)
            finally:
                self._busy.discard(job.workspace)
                await self._notify()

    # -- control -------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> None:
        """Interrupt the run's process: SIGINT, then SIGKILL after the grace period."""
        if run_id not in self._claimed:
            return  # executing on another node: its sweep sees the cancel request
        self._cancelling.add(run_id)
        process = self._processes.get(run_id)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), self.settings.cancel_grace_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    # -- across nodes --------------------------------------------------------------------

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_ttl / 3)
            try:
                await self.sweep()
            except StorageUnavailable as exc:
                log.warning("run sweep skipped: %s", exc)
            except Exception:
                log.exception("run sweep failed")

    async def sweep(self) -> None:
        """Interrupt the runs of dead nodes, queue runs no node is executing, and pass cancel
        requests made through other nodes to this node's processes."""
        if not self.presence.held.is_set():
            return  # this node may be the one cut off: judge nobody
        statuses = ("queued", "planned", *(status.value for status in EXECUTING))
        # Runs first, then the nodes: a run claimed by a node that was live when the runs
        # were read is still listed with it, unless that node's lease really expired.
        runs = await self.store.list_runs(statuses=statuses, limit=10_000)
        live = await self.store.live_nodes()
        busy: set[str] = set()
        for run in runs:
            if run.status not in EXECUTING:
                continue
            mine = run.executor == self.node_id and run.id in self._claimed
            if mine and run.cancel_requested and run.id not in self._cancelling:
                self._in_background(self.cancel(run.id))
            # Not live, or this node's but no job of this process executes it.
            gone = not mine and (run.executor not in live or run.executor == self.node_id)
            if not (gone and await self._interrupt(run, self._gone(run))):
                busy.add(run.workspace)
        known = {job.run_id for job in self._pending} | set(self.live)
        for run in reversed(runs):  # oldest first: one runnable run per workspace
            if run.status == RunStatus.queued:
                phase = "plan"
            elif run.status == RunStatus.planned and run.approved_at is not None:
                phase = "apply"
            else:
                continue
            if run.workspace in busy or run.cancel_requested:
                continue
            busy.add(run.workspace)
            if run.id not in known:
                self.enqueue(run, phase)

    def _gone(self, run: Run) -> str:
        if run.executor == self.node_id:
            return f"interrupted: node {run.executor} lost track of it"
        if run.executor is None:
            return "interrupted: its node is gone"
        return f"interrupted: node {run.executor} is gone (its lease expired)"

    async def _interrupt(self, run: Run, reason: str) -> bool:
        """End a run whose process is gone (a compare-and-set on the revision it was read
        with: one node does it) and release the state lock it held; False if the run
        changed meanwhile."""
        audit = audit_event(
            SYSTEM,
            Action.plan_apply,
            time.time(),
            workspace=run.workspace,
            detail=f"{run.id} {reason}",
        )
        ended = await self.store.update_run(
            run.failed(reason), expect_revision=run.revision, audit=audit
        )
        if ended is None:
            return False
        _kill_leftovers(run)
        await self._release_lock(run)
        log.warning("run %s %s", run.id, reason)
        return True

    async def _lease_lost(self) -> None:
        """The other nodes may already treat this node's runs as interrupted: stop them."""
        for run_id in list(self._claimed):
            self._interrupted[run_id] = f"interrupted: node {self.node_id} lost its lease"
            self._in_background(self.cancel(run_id))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- phases --------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> None:
        run = await self.store.get_run(job.run_id)
        wanted = RunStatus.queued if job.phase == "plan" else RunStatus.planned
        if run is None or run.status != wanted:
            return  # done already, or another node took it first
        if job.run_id in self._cancelling or run.cancel_requested:
            await self._save(run, lambda r: r.request_cancel(r.cancelled_by))
            return
        live = LiveLog(
            lambda chunk: self.store.append_run_log(job.run_id, chunk),
            Redactor(run.variables.values()),
        )
        self.live[job.run_id] = live
        flusher = asyncio.create_task(self._flush_periodically(live))
        try:
            if job.phase == "plan":
                run = await self._plan(run, live)
                if run.status == RunStatus.planned and run.auto_approve:
                    run = await self._save(
                        run, lambda r: r.approve(r.created_by, "auto-approved", r.plan_serial)
                    )
                    run = await self._apply(run, live)
            else:
                run = await self._apply(run, live)
        except ClaimedElsewhere:
            pass
        except RunFailed as failure:
            await self._finish_failed(job.run_id, str(failure), live)
        except Exception as exc:
            log.exception("run %s failed", job.run_id)
            await self._finish_failed(job.run_id, f"internal error: {exc}", live)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await live.close()
            self.live.pop(job.run_id, None)
            self._cancelling.discard(job.run_id)
            self._interrupted.pop(job.run_id, None)
            self.keyring.drop_ephemeral(run.credential_name)
            if job.run_id in self._claimed:  # never touch the lock of another node's run
                self._claimed.discard(job.run_id)
                await self._release_lock(run)

    async def _finish_failed(self, run_id: str, reason: str, live: LiveLog) -> None:
        run = await self.store.get_run(run_id)
        if run is None or run.status in FINISHED or not self._ours(run):
            return
        interrupted = self._interrupted.get(run_id)
        cancelled = interrupted is None and (run_id in self._cancelling or run.cancel_requested)
        reason = live.redactor.text(interrupted or reason)
        outcome = "cancelled" if cancelled else f"failed: {reason}"
        await live.write(f"\n[blixard] run {outcome}\n".encode())

        def finish(current: Run) -> Run:
            if not self._ours(current):
                raise ClaimedElsewhere(run_id)
            if cancelled and current.status in EXECUTING:
                return current.cancelled()
            return current.failed(reason)

        with contextlib.suppress(ClaimedElsewhere):
            await self._save(run, finish)

    def _ours(self, run: Run) -> bool:
        """A failure before this job's claim must not end a phase another node executes."""
        return run.status not in EXECUTING or run.executor == self.node_id

    async def _plan(self, run: Run, live: LiveLog) -> Run:
        binary = await self._binary()
        ws = await self.store.get_workspace(run.workspace)
        head = ws.head if ws else None
        run = await self._claim(
            run,
            lambda r: r.start_planning(
                binary.version, head.serial if head else None, head.lineage if head else None
            ),
        )
        await live.write(f"[blixard] planning {run.workspace} with {binary.version}\n".encode())
        async with self._workdir(run) as paths:
            await self._materialize(run, paths)
            env = self._env(run, paths)
            live.redactor.add(env["TF_HTTP_PASSWORD"])
            await self._step(run, binary, ["init", "-input=false", "-no-color"], paths, env, live)
            args = ["plan", "-input=false", "-no-color", f"-out={PLAN_FILE}", "-detailed-exitcode"]
            if run.destroy:
                args.append("-destroy")
            args += [f"-target={target}" for target in run.targets]
            await self._step(run, binary, args, paths, env, live, ok=(0, 2))
            shown = await self._capture(run, binary, ["show", "-json", PLAN_FILE], paths, env)
            summary = live.redactor.summary(summarize_plan(orjson.loads(shown)))
            plan = await asyncio.to_thread(_read_run_file, paths.host_run, "config", PLAN_FILE)
            await self.store.put_run_blob(run.id, "plan", plan)
        await live.write(
            f"[blixard] plan: {summary.add} to add, {summary.change} to change, "
            f"{summary.destroy} to destroy\n".encode()
        )
        return await self._save(run, lambda r: r.planned(summary))

    async def _apply(self, run: Run, live: LiveLog) -> Run:
        ws = await self.store.get_workspace(run.workspace)
        serial = ws.head.serial if ws and ws.head else None
        if serial != run.plan_serial:
            raise RunFailed(
                f"stale plan: planned against serial {run.plan_serial}, the workspace is now at "
                f"serial {serial}"
            )
        binary = await self._binary()
        run = await self._claim(run, lambda r: r.start_applying())
        await live.write(f"[blixard] applying {run.workspace} with {binary.version}\n".encode())
        plan = await self.store.get_run_blob(run.id, "plan")
        if plan is None:
            raise RunFailed("the stored plan file is missing")
        async with self._workdir(run) as paths:
            await self._materialize(run, paths)
            (paths.host_run / "config" / PLAN_FILE).write_bytes(plan)
            env = self._env(run, paths)
            live.redactor.add(env["TF_HTTP_PASSWORD"])
            await self._step(run, binary, ["init", "-input=false", "-no-color"], paths, env, live)
            await self._step(
                run, binary, ["apply", "-input=false", "-no-color", PLAN_FILE], paths, env, live
            )
        ws = await self.store.get_workspace(run.workspace)
        version = ws.head.version if ws and ws.head else None
        await live.write(f"[blixard] applied; state version {version}\n".encode())
        return await self._save(run, lambda r: r.applied(version))

    # -- helpers -------------------------------------------------------------------------

    async def _binary(self) -> TerraformBinary:
        try:
            return await asyncio.to_thread(resolve_binary, self.settings.tofu_bin)
        except BinaryNotFound as exc:
            raise RunFailed(str(exc)) from None

    async def _claim(self, run: Run, start: Callable[[Run], Run]) -> Run:
        """Start a phase, recording this node as its executor; a conflict means the run was
        already started elsewhere (several nodes, or a restart re-queueing it).

        One run per workspace at a time across nodes too: while another run of the
        workspace executes, this one stays where it is and a later sweep queues it again."""
        # An auto-approved run's plan phase ended here: if another node takes the apply,
        # the lock its Terraform holds (with the run's key) is not this node's to release.
        self._claimed.discard(run.id)
        if not self.presence.held.is_set():
            raise ClaimedElsewhere(run.id)  # without a lease, another node may take it
        executing = tuple(status.value for status in EXECUTING)
        others = await self.store.list_runs(workspace=run.workspace, statuses=executing, limit=2)
        if any(other.id != run.id for other in others):
            log.info("run %s waits: another run of %s is executing", run.id, run.workspace)
            raise ClaimedElsewhere(run.id)
        self._claimed.add(run.id)  # before the CAS: the sweep must never see it unclaimed
        try:
            return await self._save(run, lambda r: replace(start(r), executor=self.node_id))
        except RunConflict:
            self._claimed.discard(run.id)
            raise ClaimedElsewhere(run.id) from None

    async def _save(self, run: Run, change: Callable[[Run], Run]) -> Run:
        """Apply a transition to the freshest copy of the run (others may have touched it)."""
        for _ in range(20):
            current = await self.store.get_run(run.id)
            if current is None:
                raise RunFailed(f"run {run.id} vanished")
            updated = await self.store.update_run(change(current), expect_revision=current.revision)
            if updated is not None:
                return updated
        raise RunConflict(f"run {run.id} keeps changing")

    @contextlib.asynccontextmanager
    async def _workdir(self, run: Run) -> AsyncIterator[RunPaths]:
        """A phase's work directory: `run/` is what the run may write (its configuration,
        Terraform's data directory, its home); the CLI configuration and the API socket
        next to it are the server's."""
        try:
            await asyncio.to_thread(self.sandbox.require)
        except SandboxUnavailable as exc:
            raise RunFailed(f"runner unavailable: {exc}") from None
        work = Path(tempfile.mkdtemp(prefix=f"{run.id}-", dir=self.work_root))
        cache = self._plugin_cache(run.workspace)
        paths = self.sandbox.paths(work, cache)
        forwarder: asyncio.Server | None = None
        try:
            (paths.host_run / "home").mkdir(parents=True)
            paths.host_cli_config.write_text(cli_config_text(paths.plugin_cache))
            if self.sandbox.forwarding:
                forwarder = await asyncio.start_unix_server(
                    self._forward_to_api, sock=_unix_listener(paths.host_socket)
                )
            yield paths
        finally:
            if forwarder is not None:
                forwarder.close()
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _plugin_cache(self, workspace: str) -> Path:
        """One provider cache per workspace: a run can only ever poison its own
        workspace's cache (which its configuration controls anyway)."""
        digest = hashlib.sha256(workspace.encode()).hexdigest()[:32]
        cache = self.plugin_cache_root / digest
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cache

    async def _forward_to_api(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A connection from a sandbox without network: to this server's API, nowhere else."""
        target = urlsplit(self.settings.self_url)
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            up_reader, up_writer = await asyncio.open_connection(target.hostname, port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def _forward_port(self) -> int | None:
        if not self.sandbox.forwarding:
            return None
        target = urlsplit(self.settings.self_url)
        return target.port or (443 if target.scheme == "https" else 80)

    async def _materialize(self, run: Run, paths: RunPaths) -> None:
        """The configuration as reviewed: the archive stored with the run."""
        archive = await self.store.get_run_blob(run.id, "config")
        if archive is None:
            raise RunFailed("the run's configuration is missing")
        source = paths.work / "source"
        await asyncio.to_thread(
            extract_archive, archive, source, max_bytes=self.settings.max_config_bytes
        )
        try:
            await asyncio.to_thread(prepare_workdir, source, paths.host_run / "config")
        except UnsupportedConfig as exc:
            raise RunFailed(str(exc)) from None
        await asyncio.to_thread(shutil.rmtree, source, True)

    def _env(self, run: Run, paths: RunPaths) -> dict[str, str]:
        """The whole environment of a step, with a credential of its own (step_environment:
        nothing of the server's but PATH, locale and TLS roots)."""
        secret = self.keyring.issue_ephemeral(run.credential_name, Role.writer, (run.workspace,))
        backend = backend_env(
            self.settings.self_url,
            run.workspace,
            run.id,
            secret,
            ca_certificate_pem=self._server_ca(),
        )
        return step_environment(
            backend,
            run_dir=paths.run,
            tmpdir="/tmp" if self.sandbox.enabled else str(paths.host_run / "home"),
            cli_config=paths.cli_config,
            variables=run.variables,
        )

    def _server_ca(self) -> str | None:
        """What a run trusts when this server speaks HTTPS: BLIXARD_RUN_CA_FILE, else the
        server's own certificate chain (Terraform accepts a pinned leaf as a trust anchor)."""
        source = self.settings.run_ca_file or self.settings.tls_cert
        return source.read_text() if source is not None else None

    def _argv(self, binary: TerraformBinary, args: list[str], paths: RunPaths) -> list[str]:
        """The step's command line: from the run directory, never from the configuration
        (`-chdir`), in the sandbox unless BLIXARD_RUN_SANDBOX=off."""
        inner = [*binary.argv, f"-chdir={paths.run}/config", *args]
        if not self.sandbox.enabled:
            return [*_DIE_WITH_PARENT, *inner]
        sandboxed = self.sandbox.command(
            inner,
            paths,
            binary=binary.argv[0],
            forward_port=self._forward_port(),
        )
        # bwrap must outlive a cancel's SIGINT (sent to the whole process group) so that
        # Terraform stops gracefully: it starts with SIGINT ignored, which Terraform and the
        # embedded engine undo for themselves.
        return [*_DIE_WITH_PARENT, "/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *sandboxed]

    async def _spawn(
        self,
        binary: TerraformBinary,
        args: list[str],
        paths: RunPaths,
        env: dict[str, str],
        *,
        stderr: int = asyncio.subprocess.STDOUT,
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self._argv(binary, args, paths),
            # Sandboxed, bwrap chooses the directory: no host path in the run's $PWD.
            cwd="/" if self.sandbox.enabled else paths.host_run,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # its own process group: signals reach the whole tree
        )

    async def _step(
        self,
        run: Run,
        binary: TerraformBinary,
        args: list[str],
        paths: RunPaths,
        env: dict[str, str],
        live: LiveLog,
        ok: tuple[int, ...] = (0,),
    ) -> int:
        if run.id in self._cancelling:
            raise RunFailed("cancelled")
        await live.write(f"\n$ {binary.name} {' '.join(args)}\n".encode())
        process = await self._spawn(binary, args, paths, env)
        self._processes[run.id] = process
        marker = f"{boot_id()}:{process.pid}"
        if run.process_group != marker:
            run = await self._save(run, lambda r: replace(r, process_group=marker))
        try:
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                await live.write(chunk)
            code = await process.wait()
        finally:
            self._processes.pop(run.id, None)
        if run.id in self._cancelling:
            raise RunFailed("cancelled")
        if code not in ok:
            raise RunFailed(f"`{binary.name} {args[0]}` exited with status {code}")
        return code

    async def _capture(
        self,
        run: Run,
        binary: TerraformBinary,
        args: list[str],
        paths: RunPaths,
        env: dict[str, str],
    ) -> bytes:
        process = await self._spawn(binary, args, paths, env, stderr=asyncio.subprocess.PIPE)
        self._processes[run.id] = process
        try:
            out, err = await process.communicate()
        finally:
            self._processes.pop(run.id, None)
        if process.returncode != 0:
            detail = Redactor(run.variables.values()).text(err.decode(errors="replace"))
            raise RunFailed(f"`{binary.name} {args[0]}` failed: {detail}")
        return out

    async def _flush_periodically(self, live: LiveLog) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_SECONDS)
            try:
                await live.flush()
            except Exception:
                log.warning("could not store run log", exc_info=True)

    async def _release_lock(self, run: Run) -> None:
        """A killed or crashed Terraform leaves its lock behind: release it while it is still
        the run's (taken with the run's own key), never a lock someone took since, nor the
        lock of the run's next phase if another node executes it already."""
        current = await self.store.get_run(run.id)
        if current is not None and not self._ours(current):
            return
        if await self.service.release_lock_of(run.workspace, run.credential_name, actor=SYSTEM):
            log.info("run %s: released the state lock it left behind", run.id)


#: If the server dies (kill -9), so does Terraform: util-linux's setpriv sets the parent-death
#: signal and execs (no Python preexec_fn, which is unsafe in a threaded server). Terraform's
#: own children (provisioners) are killed by process group when the server starts again.
_DIE_WITH_PARENT: tuple[str, ...] = (
    (setpriv, "--pdeathsig", "KILL", "--") if (setpriv := shutil.which("setpriv")) else ()
)


def _read_run_file(directory: Path, *parts: str) -> bytes:
    """A file the run wrote, read without following any link it may have planted there
    (a plan file replaced by a link to the server's database must not be stored)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    name = "/".join(parts)
    fd = os.open(directory, flags | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                next_fd = os.open(part, flags | (0 if last else os.O_DIRECTORY), dir_fd=fd)
            except OSError as exc:
                raise RunFailed(f"the run left no readable {name}: {exc.strerror}") from None
            os.close(fd)
            fd = next_fd
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFailed(f"the run's {name} is not a file")
        with os.fdopen(fd, "rb") as file:
            fd = -1
            return file.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _unix_listener(path: Path) -> socket.socket:
    """A unix socket bound at `path`, however long (a socket address holds 107 bytes: bind
    through /proc/self/fd/<directory>, which the kernel resolves)."""
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(f"/proc/self/fd/{directory}/{path.name}")
    except OSError:
        listener.close()
        raise
    finally:
        os.close(directory)
    return listener


def _secret_paths(settings: Settings) -> list[Path]:
    """What a sandboxed run must never see, even inside a directory it is given."""
    paths = [settings.data_dir]
    for path in (
        settings.tls_key,
        settings.encryption_key_file,
        settings.etcd_password_file,
        settings.etcd_client_key,
    ):
        if path is not None:
            paths.append(path)
    url = settings.resolved_storage_url
    if url.startswith("sqlite:///"):
        paths.append(Path(url.removeprefix("sqlite:///").split("?", 1)[0]).parent)
    return paths


def boot_id() -> str:
    """Identifies this boot of the machine: a process group id means nothing across reboots."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _kill_leftovers(run: Run) -> None:
    """Processes of a run that a server crash orphaned (e.g. a provisioner's `sleep`)."""
    if not run.process_group:
        return
    boot, _, pgid = run.process_group.partition(":")
    if boot != boot_id() or not pgid.isdigit():
        return  # another boot: that group id now belongs to someone else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(pgid), signal.SIGKILL)
        log.warning("run %s: killed the processes it left behind", run.id)
