"""`blixard search`, `blixard duplicates` and `blixard reindex` against a live server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner, Result

from blixard import cli
from tests.harness import ServerProcess

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blixard-cli-search")
    srv = ServerProcess(root / "data", log_path=root / "server.log").start()
    try:
        with httpx.Client(base_url=srv.url + "/api/tofu", timeout=30) as http:
            for ws, vpc_id in (("net-a", "vpc-shared"), ("net-b", "vpc-shared"), ("db", "v-db")):
                resources = [
                    {
                        "mode": "managed",
                        "type": "aws_vpc",
                        "name": "main",
                        "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
                        "instances": [{"attributes": {"id": vpc_id, "tags": {"team": ws}}}],
                    }
                ]
                doc = {"version": 4, "serial": 1, "lineage": str(uuid.uuid4())}
                body = json.dumps({**doc, "resources": resources}).encode()
                assert http.post(f"/state/{ws}", content=body).status_code == 200
        yield srv
    finally:
        srv.stop()


def invoke(server: ServerProcess, *args: str) -> Result:
    return runner.invoke(cli.app, list(args), env={"BLIXARD_URL": server.url})


def test_search_prints_matches_and_json(server: ServerProcess) -> None:
    result = invoke(server, "search", "--type", "aws_vpc")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[0][:3] == ["WORKSPACE", "VERSION", "ADDRESS"]
    assert [line[0] for line in lines[1:4]] == ["db", "net-a", "net-b"]
    result = invoke(server, "search", "--id", "v-db", "--json")
    assert result.exit_code == 0, result.output
    matches = json.loads(result.output)["matches"]
    assert [(m["workspace"], m["address"]) for m in matches] == [("db", "aws_vpc.main")]
    result = invoke(server, "search", "--type", "aws_vpc", "--attr", "tags.team=net-b", "--json")
    assert [m["workspace"] for m in json.loads(result.output)["matches"]] == ["net-b"]
    assert "No matches." in invoke(server, "search", "--type", "nothing").output
    refused = invoke(server, "search")
    assert refused.exit_code == 1 and "at least one filter" in refused.output


def test_duplicates_and_reindex(server: ServerProcess) -> None:
    result = invoke(server, "duplicates")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert rows == [
        ["id", "vpc-shared", "net-a", "aws_vpc.main"],
        ["id", "vpc-shared", "net-b", "aws_vpc.main"],
    ]
    result = invoke(server, "reindex")
    assert result.exit_code == 0, result.output
    assert "Resource index rebuilt: 3 versions." in result.output
