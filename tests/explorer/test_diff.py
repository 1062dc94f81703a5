"""The diff and masking rules on their own (no server): property-based checks that a diff
is exactly what separates two states, and the masking and matching rules case by case."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blixard.domain.diff import ABSENT, diff_states
from blixard.domain.errors import InvalidInput
from blixard.domain.explorer import micros, parse_instant
from blixard.domain.resources import MASK, format_path, read_contents

# -- generated states --------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0]),
    st.text("ab", max_size=2),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text("xyz", max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)
attributes = st.fixed_dictionaries(
    {"id": st.sampled_from(["i-1", "i-2", "i-3", "i-4"])},
    optional={"tags": values, "size": values, "nested": values},
)
instances = st.fixed_dictionaries(
    {"attributes": attributes},
    optional={"status": st.just("tainted"), "deposed": st.sampled_from(["d1", "d2"])},
)
resources = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b", "c"]),
            "type": st.sampled_from(["terraform_data", "null_resource"]),
            "keys": st.lists(
                st.one_of(st.integers(0, 2), st.sampled_from(["k", "k 2"])), max_size=2, unique=True
            ),
            "instances": st.lists(instances, min_size=1, max_size=2),
        }
    ),
    max_size=4,
)
outputs = st.dictionaries(
    st.sampled_from(["o1", "o2"]),
    st.fixed_dictionaries({"value": values, "type": st.just("string")}),
    max_size=2,
)


def state(
    resource_specs: list[dict[str, Any]], output_specs: dict[str, Any], serial: int = 1
) -> bytes:
    """A v4 state from generated parts (duplicate addresses dropped, as Terraform has none)."""
    seen: set[tuple[str, str]] = set()
    blocks = []
    for spec in resource_specs:
        if (spec["type"], spec["name"]) in seen:
            continue
        seen.add((spec["type"], spec["name"]))
        objects = []
        for key in spec["keys"] or [None]:
            for number, instance in enumerate(spec["instances"]):
                obj = copy.deepcopy(instance)
                if key is not None:
                    obj["index_key"] = key
                if number and "deposed" not in obj:
                    continue  # one current object per address
                if number == 0:
                    obj.pop("deposed", None)
                objects.append(obj)
        blocks.append(
            {
                "mode": "managed",
                "type": spec["type"],
                "name": spec["name"],
                "provider": "p",
                "instances": objects,
            }
        )
    document = {
        "version": 4,
        "serial": serial,
        "lineage": "l",
        "terraform_version": "1.15.5",
        "outputs": output_specs,
        "resources": blocks,
    }
    return orjson.dumps(document)


def resource_set(body: bytes) -> dict[str, tuple[str, str | None, Any]]:
    return {i.key: (i.digest, i.status, i.attributes) for i in read_contents(body).instances}


def apply_changes(value: Any, changes: list[dict[str, Any]]) -> Any:
    """Apply attribute changes (as the API lists them) to a copy of `value`."""
    result = copy.deepcopy(value)
    removals = [c for c in changes if c["kind"] == "removed"]
    for change in [c for c in changes if c["kind"] != "removed"]:
        *parents, last = change["path"]
        target = result
        for step in parents:
            target = target[step]
        if isinstance(target, list) and last == len(target):
            target.append(change["after"])
        else:
            target[last] = change["after"]
    for change in reversed(removals):
        *parents, last = change["path"]
        target = result
        for step in parents:
            target = target[step]
        del target[last]
    return result


@settings(max_examples=300, deadline=None)
@given(resources, outputs, resources, outputs)
def test_a_diff_applied_to_the_first_state_gives_the_second(
    res_a: list[dict[str, Any]],
    out_a: dict[str, Any],
    res_b: list[dict[str, Any]],
    out_b: dict[str, Any],
) -> None:
    body_a, body_b = state(res_a, out_a, 1), state(res_b, out_b, 2)
    diff = diff_states(read_contents(body_a), read_contents(body_b)).as_dict()
    current = resource_set(body_a)
    target = resource_set(body_b)
    for entry in diff["resources"]:
        key = entry["address"] + (
            f" (deposed {entry['deposed_key']})" if entry["deposed_key"] else ""
        )
        if entry["change"] == "removed":
            assert current.pop(key)[0] == entry["digest_before"]
        elif entry["change"] == "added":
            assert key not in current
            current[key] = target[key]
        else:
            previous = entry["previous_address"] if entry["change"] == "moved" else key
            digest, status, attrs = current.pop(previous)
            assert (digest, status) == (entry["digest_before"], entry["status_before"])
            rebuilt = apply_changes(attrs, entry["attributes"])
            assert orjson.dumps(rebuilt, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
                target[key][2], option=orjson.OPT_SORT_KEYS
            )
            current[key] = (entry["digest_after"], entry["status_after"], rebuilt)
    assert {k: v[:2] for k, v in current.items()} == {k: v[:2] for k, v in target.items()}
    summary = diff["summary"]
    assert summary["unchanged"] + summary["changed"] + summary["moved"] + summary["removed"] == len(
        resource_set(body_a)
    )
    outputs_now = {name: spec["value"] for name, spec in out_a.items()}
    for change in diff["outputs"]:
        if change["kind"] == "removed":
            del outputs_now[change["name"]]
        else:
            outputs_now[change["name"]] = change["after"]
    assert orjson.dumps(outputs_now, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        {name: spec["value"] for name, spec in out_b.items()}, option=orjson.OPT_SORT_KEYS
    )


@settings(max_examples=200, deadline=None)
@given(resources, outputs)
def test_a_state_compared_with_itself_has_no_changes(
    res: list[dict[str, Any]], out: dict[str, Any]
) -> None:
    contents = read_contents(state(res, out))
    diff = diff_states(contents, contents)
    assert diff.empty
    assert diff.summary() == {
        "added": 0,
        "removed": 0,
        "changed": 0,
        "moved": 0,
        "unchanged": len(contents.instances),
    }


# -- rules, case by case ----------------------------------------------------------------


def one(
    attributes: dict[str, Any], sensitive: list[Any] | None = None, name: str = "r", **extra: Any
) -> bytes:
    instance = {"attributes": attributes, "sensitive_attributes": sensitive or [], **extra}
    return orjson.dumps(
        {
            "version": 4,
            "serial": 1,
            "lineage": "l",
            "resources": [
                {
                    "mode": "managed",
                    "type": "t",
                    "name": name,
                    "provider": "p",
                    "instances": [instance],
                }
            ],
        }
    )


def attr(name: str) -> dict[str, str]:
    return {"type": "get_attr", "value": name}


def test_a_path_sensitive_on_either_side_is_masked_on_both() -> None:
    plain = one({"id": "x", "password": "old-secret", "tags": {"a": "1"}})
    marked = one({"id": "x", "password": "new-secret", "tags": {"a": "2"}}, [[attr("password")]])
    for before, after in ((plain, marked), (marked, plain)):
        (entry,) = diff_states(read_contents(before), read_contents(after)).resources
        changes = {c.path: (c.before, c.after) for c in entry.attributes}
        assert changes[("password",)] == (MASK, MASK), "a changed secret is reported, not shown"
        assert changes[("tags", "a")] in (("1", "2"), ("2", "1"))
    revealed = diff_states(read_contents(plain), read_contents(marked), reveal=True)
    assert {c.path: c.after for c in revealed.resources[0].attributes}[
        ("password",)
    ] == "new-secret"


def test_a_change_above_a_sensitive_path_masks_inside_its_values() -> None:
    wrapped = {"value": {"user": "u", "pass": "p1"}, "type": ["object", {}]}
    before = one({"id": "x", "input": wrapped}, [[attr("input"), attr("pass")]])
    after = one(
        {"id": "x", "input": {"value": "now a string", "type": "string"}},
        [[attr("input"), attr("pass")]],
    )
    (entry,) = diff_states(read_contents(before), read_contents(after)).resources
    type_change, change = entry.attributes
    assert type_change.path == ("input", "type")
    assert change.path == ("input", "value")
    assert change.before == {"user": "u", "pass": MASK}
    assert change.after == "now a string"


def test_whole_value_sensitive_paths_and_added_or_removed_ones() -> None:
    before = one({"id": "x", "token": "t1"}, [[attr("token")]])
    after = one({"id": "x"}, [])
    (entry,) = diff_states(read_contents(before), read_contents(after)).resources
    (change,) = entry.attributes
    assert (change.kind, change.before, change.after) == ("removed", MASK, ABSENT)
    assert "after" not in change.as_dict()


def test_json_types_are_compared_strictly() -> None:
    before = one({"id": "x", "a": 1, "b": True, "c": 1})
    after = one({"id": "x", "a": 1.0, "b": 1, "c": 1})
    (entry,) = diff_states(read_contents(before), read_contents(after)).resources
    assert [(c.path, c.before, c.after) for c in entry.attributes] == [
        (("a",), 1, 1.0),
        (("b",), True, 1),
    ]


def test_moves_need_the_same_mode_type_and_id() -> None:
    def doc(name: str, type_: str) -> bytes:
        return orjson.dumps(
            {
                "version": 4,
                "serial": 1,
                "lineage": "l",
                "resources": [
                    {
                        "mode": "managed",
                        "type": type_,
                        "name": name,
                        "provider": "p",
                        "instances": [{"attributes": {"id": "bucket-1"}}],
                    }
                ],
            }
        )

    moved = diff_states(read_contents(doc("a", "s3")), read_contents(doc("b", "s3")))
    assert [(r.change, r.address, r.previous_address) for r in moved.resources] == [
        ("moved", "s3.b", "s3.a")
    ]
    assert moved.summary()["moved"] == 1
    other_type = diff_states(read_contents(doc("a", "s3")), read_contents(doc("b", "policy")))
    assert sorted(r.change for r in other_type.resources) == ["added", "removed"]


def test_an_unreadable_state_is_described_not_refused() -> None:
    envelope = orjson.dumps(
        {
            "serial": 3,
            "lineage": "l",
            "meta": {},
            "encrypted_data": "AAAA",
            "encryption_version": "v0",
        }
    )
    contents = read_contents(envelope)
    assert contents.readable is False and contents.instances == ()
    diff = diff_states(read_contents(one({"id": "x"})), contents)
    assert diff.readable == (True, False)


def test_paths_print_like_terraform() -> None:
    assert format_path(("tags", "Name")) == "tags.Name"
    assert format_path(("tags", "a b", 0)) == 'tags["a b"][0]'
    assert format_path(("ingress", 0, "cidr_blocks")) == "ingress[0].cidr_blocks"
    assert format_path(()) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-05T18:00:00Z", "2026-12-05T18:00:00+00:00"),
        ("2026-12-05T20:00:00+02:00", "2026-12-05T18:00:00+00:00"),
        ("2026-12-05t18:00:00.123456z", "2026-12-05T18:00:00.123456+00:00"),
    ],
)
def test_rfc3339_instants(text: str, expected: str) -> None:
    from datetime import datetime

    assert parse_instant(text) == micros(datetime.fromisoformat(expected).timestamp())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-12-05",
        "2026-12-05T18:00:00",
        "2026-13-05T18:00:00Z",
        "9" * 80,
        "2026-12-05T18:00:00Z\n",
    ],
)
def test_malformed_instants_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_instant(text)


def test_the_parsed_version_cache_is_bounded_by_stored_bytes() -> None:
    from blixard.domain.explorer import ParsedCache, _index
    from blixard.domain.models import VersionMeta

    def meta(version: int, size: int) -> VersionMeta:
        return VersionMeta(
            "ws", version, version, "l", size, f"sha{version}", "md5", 0.0, None, None, 0, "write"
        )

    contents = read_contents(one({"id": "x"}))  # one instance: weight = size + INSTANCE_BYTES
    weight = 40 + ParsedCache.INSTANCE_BYTES
    cache = ParsedCache(max_bytes=2 * weight + 10)
    for version in (1, 2):
        cache.put(_index(meta(version, 40), contents))
    assert cache.get(meta(1, 40)) is not None  # now the most recently used
    cache.put(_index(meta(3, 40), contents))
    assert cache.get(meta(2, 40)) is None, "the least recently used went first"
    assert cache.get(meta(1, 40)) is not None and cache.get(meta(3, 40)) is not None
    cache.put(_index(meta(4, 2 * weight), contents))
    assert cache.get(meta(4, 2 * weight)) is None, "a version larger than the cache is not kept"
    assert cache.get(meta(1, 40)) is not None, "and evicts nothing"
    other = VersionMeta("ws", 1, 1, "l", 40, "another-sha", "md5", 0.0, None, None, 0, "write")
    assert cache.get(other) is None, "keyed by content too: a recreated workspace misses"
