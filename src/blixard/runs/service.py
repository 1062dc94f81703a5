"""RunService: creating, approving, discarding and cancelling runs, and reading them back.

The rules of a run's lifecycle live on the Run itself (domain/runs.py); this service checks
where configuration may come from, stores what a run needs, and hands work to the executor.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from blixard.config import Settings
from blixard.domain.access import Action, Actor, AuditEvent, audit_event
from blixard.domain.errors import InvalidInput, NotFound, PermissionDenied, RunnerUnavailable
from blixard.domain.parsing import check_workspace_name
from blixard.domain.roles import RunHost
from blixard.domain.runs import EXECUTING, Run, RunConflict, RunStatus, new_run_id
from blixard.runs.archive import UnsafeArchive, extract_archive, make_archive
from blixard.runs.binary import BinaryNotFound, resolve_binary
from blixard.runs.executor import RunExecutor
from blixard.runs.sandbox import SandboxUnavailable
from blixard.runs.workdir import REFUSED_IN_UPLOADS, OutsideRoots, UnsupportedConfig, walk_config


@dataclass(frozen=True, slots=True)
class RunRequest:
    workspace: str
    config_dir: str | None = None
    archive: bytes | None = None
    auto_approve: bool = False
    destroy: bool = False
    variables: dict[str, str] | None = None
    targets: tuple[str, ...] = ()


class RunService:
    def __init__(self, store: RunHost, executor: RunExecutor, settings: Settings) -> None:
        self.store = store
        self.executor = executor
        self.settings = settings

    async def create(self, request: RunRequest, actor: Actor) -> Run:
        check_workspace_name(request.workspace)
        if self.settings.tls_client_ca is not None:
            raise RunnerUnavailable(
                "Runs cannot reach this server while it requires client certificates "
                "(BLIXARD_TLS_CLIENT_CA); run plans locally or on a server without mTLS."
            )
        try:
            await asyncio.to_thread(resolve_binary, self.settings.tofu_bin)
        except BinaryNotFound as exc:
            raise RunnerUnavailable(str(exc)) from None
        try:
            await asyncio.to_thread(self.executor.sandbox.require)
        except SandboxUnavailable as exc:
            raise RunnerUnavailable(f"Runs cannot be sandboxed: {exc}") from None
        now = time.time()
        run = Run(
            id=new_run_id(now),
            workspace=request.workspace,
            status=RunStatus.queued,
            created_at=now,
            created_by=actor.name,
            destroy=request.destroy,
            auto_approve=request.auto_approve,
            variables=dict(request.variables or {}),
            targets=tuple(request.targets),
        )
        if request.archive is not None:
            await asyncio.to_thread(self._check_archive, request.archive)
            archive = request.archive
        elif request.config_dir is not None:
            directory = self._allowed_dir(request.config_dir)
            run = replace(run, source="dir", config_dir=str(directory))
            archive = await asyncio.to_thread(self._archive_dir, request.config_dir, directory)
            if len(archive) > self.settings.max_archive_bytes:
                raise InvalidInput("The configuration directory is larger than the archive limit.")
        else:
            raise InvalidInput("A run needs either 'config_dir' or an uploaded tar.gz archive.")
        await self.store.put_run_blob(run.id, "config", archive)
        run = await self.store.create_run(run)
        await self.store.append_audit(
            [audit_event(actor, Action.plan_create, now, workspace=run.workspace, detail=run.id)]
        )
        self.executor.enqueue(run, "plan")
        return run

    def _allowed_dir(self, config_dir: str) -> Path:
        roots = self.settings.plan_root_paths
        if not roots:
            raise PermissionDenied(
                "config_dir is disabled: set BLIXARD_PLAN_ROOTS to the directories runs may "
                "read configuration from, or upload the configuration as a tar.gz archive."
            )
        directory = Path(config_dir).resolve()
        if not any(directory.is_relative_to(root) for root in roots):
            raise PermissionDenied(
                f"config_dir {config_dir} is outside BLIXARD_PLAN_ROOTS; runs may only read "
                "configuration under those directories."
            )
        if not directory.is_dir():
            raise InvalidInput(f"config_dir {config_dir} is not a directory.")
        return directory

    def _archive_dir(self, config_dir: str, directory: Path) -> bytes:
        """The archive of a config_dir, checked on the very walk that builds it."""
        try:
            return make_archive(directory, allowed_roots=self.settings.plan_root_paths)
        except OutsideRoots as exc:
            raise PermissionDenied(
                f"config_dir {config_dir}: {exc}; runs may only read configuration under "
                "those directories."
            ) from None
        except UnsupportedConfig as exc:
            raise InvalidInput(f"config_dir {config_dir}: {exc}.") from None

    def _check_archive(self, archive: bytes) -> None:
        """Refuse an unsafe archive at once, rather than when the run starts."""
        scratch = Path(tempfile.mkdtemp(prefix="blixard-check-"))
        try:
            extract_archive(archive, scratch / "x", max_bytes=self.settings.max_config_bytes)
            for _ in walk_config(scratch / "x", refused_names=REFUSED_IN_UPLOADS):
                pass
        except UnsafeArchive as exc:
            raise InvalidInput(f"Unsafe or invalid archive: {exc}") from None
        except UnsupportedConfig as exc:
            raise InvalidInput(f"Refused archive: {exc}.") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def get(self, run_id: str, actor: Actor | None = None) -> Run:
        run = await self.store.get_run(run_id)
        if run is None or (actor is not None and not actor.can_see(run.workspace)):
            raise NotFound(f"Plan {run_id} does not exist.")
        return run

    async def list(self, workspace: str, *, before: str | None, limit: int) -> list[Run]:
        check_workspace_name(workspace)
        return await self.store.list_runs(workspace=workspace, before=before, limit=limit)

    async def approve(self, run: Run, actor: Actor, comment: str | None) -> Run:
        ws = await self.store.get_workspace(run.workspace)
        serial = ws.head.serial if ws and ws.head else None
        approved = await self._save(
            run,
            lambda r: r.approve(actor.name, comment, serial),
            audit_event(
                actor,
                Action.plan_apply,
                time.time(),
                workspace=run.workspace,
                detail=f"approved {run.id}" + (f": {comment}" if comment else ""),
            ),
        )
        self.executor.enqueue(approved, "apply")
        return approved

    async def discard(self, run: Run, actor: Actor) -> Run:
        return await self._save(
            run,
            lambda r: r.discard(actor.name),
            audit_event(
                actor,
                Action.plan_apply,
                time.time(),
                workspace=run.workspace,
                detail=f"discarded {run.id}",
            ),
        )

    async def cancel(self, run: Run, actor: Actor) -> Run:
        cancelled = await self._save(
            run,
            lambda r: r.request_cancel(actor.name),
            audit_event(
                actor,
                Action.plan_apply,
                time.time(),
                workspace=run.workspace,
                detail=f"cancelled {run.id}",
            ),
        )
        if run.status in EXECUTING or cancelled.status in EXECUTING:
            await self.executor.cancel(run.id)
            for _ in range(200):  # until the worker has recorded the outcome
                cancelled = await self.get(run.id)
                if cancelled.status not in EXECUTING:
                    break
                await asyncio.sleep(0.05)
        return cancelled

    async def _save(self, run: Run, change: Callable[[Run], Run], audit: AuditEvent) -> Run:
        for _ in range(20):
            current = await self.store.get_run(run.id)
            if current is None:
                raise NotFound(f"Plan {run.id} does not exist.")
            updated = await self.store.update_run(
                change(current), expect_revision=current.revision, audit=audit
            )
            if updated is not None:
                return updated
        raise RunConflict(f"Plan {run.id} keeps changing; try again.")

    async def read_log(self, run: Run) -> bytes:
        live = self.executor.live.get(run.id)
        if live is None:
            return await self.store.read_run_log(run.id)
        async with live.lock:
            stored = await self.store.read_run_log(run.id)
            return stored + bytes(live.data[live.flushed :])
