"""Executing runs: a bounded pool of workers, one run per workspace at a time.

Each phase (plan, apply) gets its own temporary work directory holding a copy of the run's
configuration, pointed at this very server through the http backend with a short-lived key
that may only write the run's workspace. So a run locks and writes state through the normal
protocol, and history and audit name the run that wrote each version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from blixard.auth.keyring import KeyRing
from blixard.config import Settings
from blixard.domain.access import Actor, Role
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
from blixard.runs.logs import LiveLog
from blixard.runs.workdir import backend_env, prepare_workdir
from blixard.store.protocol import Store

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
        self, store: Store, service: StateService, keyring: KeyRing, settings: Settings
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
        #: Stable across restarts of this node, distinct between nodes sharing a store.
        self.node_id = f"{socket.gethostname()}:{settings.data_dir.resolve()}"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True)
        for leftover in self.work_root.iterdir():  # work dirs of runs a crash interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        await self.recover()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"blixard-run-worker-{index}")
            for index in range(self.settings.run_workers)
        ]

    async def stop(self) -> None:
        for process in list(self._processes.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    async def recover(self) -> None:
        """After a restart: executing runs were interrupted; queued and approved ones go on."""
        executing = tuple(status.value for status in EXECUTING)
        for run in await self.store.list_runs(statuses=executing, limit=10_000):
            if run.executor not in (None, self.node_id):
                continue  # another node's run; claims with leases will cover dead nodes
            _kill_leftovers(run)
            await self._save(run, lambda r: r.failed("interrupted"))
            await self._release_lock(run)
            log.warning("run %s was interrupted by a restart", run.id)
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

    # -- phases --------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> None:
        run = await self.store.get_run(job.run_id)
        if run is None or run.status in (RunStatus.cancelled, RunStatus.discarded):
            return
        if job.run_id in self._cancelling or run.cancel_requested:
            await self._save(run, lambda r: r.request_cancel(r.cancelled_by))
            return
        live = LiveLog(lambda chunk: self.store.append_run_log(job.run_id, chunk))
        self.live[job.run_id] = live
        flusher = asyncio.create_task(self._flush_periodically(live))
        claimed = True
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
            claimed = False
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
            self.keyring.drop_ephemeral(run.credential_name)
            if claimed:  # never touch the lock of a run someone else is executing
                await self._release_lock(run)

    async def _finish_failed(self, run_id: str, reason: str, live: LiveLog) -> None:
        run = await self.store.get_run(run_id)
        if run is None or run.status in FINISHED:
            return
        cancelled = run_id in self._cancelling or run.cancel_requested
        outcome = "cancelled" if cancelled else f"failed: {reason}"
        await live.write(f"\n[blixard] run {outcome}\n".encode())

        def finish(current: Run) -> Run:
            if cancelled and current.status in EXECUTING:
                return current.cancelled()
            return current.failed(reason)

        await self._save(run, finish)

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
        async with self._workdir(run) as work:
            config = work / "config"
            await self._materialize(run, work, config)
            env = self._env(run, work)
            await self._step(run, binary, ["init", "-input=false", "-no-color"], config, env, live)
            args = ["plan", "-input=false", "-no-color", f"-out={PLAN_FILE}", "-detailed-exitcode"]
            if run.destroy:
                args.append("-destroy")
            args += [f"-target={target}" for target in run.targets]
            await self._step(run, binary, args, config, env, live, ok=(0, 2))
            shown = await self._capture(binary, ["show", "-json", PLAN_FILE], config, env)
            summary = summarize_plan(orjson.loads(shown))
            await self.store.put_run_blob(run.id, "plan", (config / PLAN_FILE).read_bytes())
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
        async with self._workdir(run) as work:
            config = work / "config"
            await self._materialize(run, work, config)
            (config / PLAN_FILE).write_bytes(plan)
            env = self._env(run, work)
            await self._step(run, binary, ["init", "-input=false", "-no-color"], config, env, live)
            await self._step(
                run, binary, ["apply", "-input=false", "-no-color", PLAN_FILE], config, env, live
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
        already started elsewhere (several nodes, or a restart re-queueing it)."""
        try:
            return await self._save(run, lambda r: replace(start(r), executor=self.node_id))
        except RunConflict:
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
    async def _workdir(self, run: Run) -> AsyncIterator[Path]:
        work = Path(tempfile.mkdtemp(prefix=f"{run.id}-", dir=self.work_root))
        try:
            yield work
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _materialize(self, run: Run, work: Path, config: Path) -> None:
        """The configuration as reviewed: the archive stored with the run."""
        archive = await self.store.get_run_blob(run.id, "config")
        if archive is None:
            raise RunFailed("the run's configuration is missing")
        source = work / "source"
        await asyncio.to_thread(
            extract_archive, archive, source, max_bytes=self.settings.max_config_bytes
        )
        await asyncio.to_thread(prepare_workdir, source, config)

    def _env(self, run: Run, work: Path) -> dict[str, str]:
        secret = self.keyring.issue_ephemeral(run.credential_name, Role.writer, (run.workspace,))
        env = {
            name: os.environ[name]
            for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")
            if name in os.environ
        }
        env.update(
            backend_env(
                self.settings.self_url,
                run.workspace,
                run.id,
                secret,
                ca_certificate_pem=self._server_ca(),
            )
        )
        env["TF_DATA_DIR"] = str(work / "tfdata")
        # Variables travel in the environment, not argv, where `ps` would show their values.
        env.update({f"TF_VAR_{name}": value for name, value in run.variables.items()})
        return env

    def _server_ca(self) -> str | None:
        """What a run trusts when this server speaks HTTPS: BLIXARD_RUN_CA_FILE, else the
        server's own certificate chain (Terraform accepts a pinned leaf as a trust anchor)."""
        source = self.settings.run_ca_file or self.settings.tls_cert
        return source.read_text() if source is not None else None

    async def _spawn(
        self, binary: TerraformBinary, args: list[str], cwd: Path, env: dict[str, str]
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *_DIE_WITH_PARENT,
            *binary.argv,
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: signals reach the whole tree
        )

    async def _step(
        self,
        run: Run,
        binary: TerraformBinary,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        live: LiveLog,
        ok: tuple[int, ...] = (0,),
    ) -> int:
        if run.id in self._cancelling:
            raise RunFailed("cancelled")
        await live.write(f"\n$ {binary.name} {' '.join(args)}\n".encode())
        process = await self._spawn(binary, args, cwd, env)
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
        self, binary: TerraformBinary, args: list[str], cwd: Path, env: dict[str, str]
    ) -> bytes:
        process = await asyncio.create_subprocess_exec(
            *binary.argv,
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RunFailed(f"`{binary.name} {args[0]}` failed: {err.decode(errors='replace')}")
        return out

    async def _flush_periodically(self, live: LiveLog) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_SECONDS)
            try:
                await live.flush()
            except Exception:
                log.warning("could not store run log", exc_info=True)

    async def _release_lock(self, run: Run) -> None:
        """A killed or crashed Terraform leaves its lock behind: release it if it is ours."""
        ws = await self.store.get_workspace(run.workspace)
        if ws is not None and ws.lock is not None and ws.lock.owner == run.credential_name:
            await self.service.force_unlock(run.workspace, actor=SYSTEM)
            log.info("run %s: released the state lock it left behind", run.id)


#: If the server dies (kill -9), so does Terraform: util-linux's setpriv sets the parent-death
#: signal and execs (no Python preexec_fn, which is unsafe in a threaded server). Terraform's
#: own children (provisioners) are killed by process group when the server starts again.
_DIE_WITH_PARENT: tuple[str, ...] = (
    (setpriv, "--pdeathsig", "KILL", "--") if (setpriv := shutil.which("setpriv")) else ()
)


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
