"""Index rows read out of states: the same instances, addresses, identities and digests as the
explorer's reader (domain/resources.py), whatever the shape; queries and cursors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blixard.domain.errors import InvalidInput
from blixard.domain.resource_index import (
    DIGEST_CHARS,
    AttributeFilter,
    IndexRow,
    ResourceQuery,
    index_rows,
)
from blixard.domain.resources import read_contents
from blixard.store.resource_index import Cursor, HeadIndex, IndexDoc, pack, unpack


def rows_by_explorer(body: bytes) -> list[IndexRow]:
    return [
        IndexRow(
            i.address,
            i.type,
            i.name,
            i.module,
            i.mode,
            i.provider,
            i.status,
            i.identity.get("id"),
            i.identity.get("arn"),
            i.identity.get("self_link"),
            "",
        )
        for i in read_contents(body).instances
    ]


def without_digests(rows: list[IndexRow]) -> list[IndexRow]:
    return [row._replace(digest="") for row in rows]


SHAPES: list[Any] = [
    {
        "resources": [
            {
                "module": 'module.a["x"]',
                "mode": "managed",
                "type": "aws_s3_bucket",
                "name": "b",
                "provider": "p",
                "instances": [
                    {"index_key": 0, "attributes": {"id": "b1", "arn": "arn:b1"}},
                    {"index_key": "k", "status": "tainted", "attributes": {"id": "b2"}},
                    {"deposed": "d1", "attributes": {"id": "b3"}},
                    {
                        "attributes": {"id": "hidden", "self_link": "https://x"},
                        "sensitive_attributes": [[{"type": "get_attr", "value": "id"}]],
                    },
                ],
            },
            {"mode": "data", "type": "aws_ami", "name": "a", "instances": [{"attributes": {}}]},
        ]
    },
    {"serial": 1, "lineage": "x", "encrypted_data": "zz", "encryption_version": "v0"},
    {"resources": [1, "x", None, {"type": 3}]},
    {"resources": [{"type": "t", "name": "n", "instances": [1, {"attributes": [1]}]}]},
    {"resources": [{"type": "t", "name": "n", "instances": [{"index_key": True}]}]},
    {"resources": "nope"},
    [],
]


@pytest.mark.parametrize("document", SHAPES)
def test_rows_match_the_explorers_reader(document: Any) -> None:
    body = orjson.dumps(document)
    assert without_digests(index_rows(body)) == rows_by_explorer(body)


def test_digests_change_with_the_attributes_only() -> None:
    def digests(ident: str, extra: str) -> list[str]:
        document = {
            "serial": 1 if extra else 2,
            "resources": [
                {"type": "t", "name": "a", "instances": [{"attributes": {"id": ident}}]},
                {"type": "t", "name": "b", "instances": [{"attributes": {"id": "same"}}]},
            ],
        }
        return [row.digest for row in index_rows(orjson.dumps(document))]

    first, second = digests("x", "1"), digests("y", "")
    assert first[1] == second[1] and first[0] != second[0]
    assert all(len(d) == DIGEST_CHARS for d in first)


def test_a_sensitive_identity_is_not_indexed() -> None:
    rows = index_rows(orjson.dumps(SHAPES[0]))
    hidden = [r for r in rows if r.self_link == "https://x"]
    assert len(hidden) == 1 and hidden[0].id is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "module": json_values,
                "mode": json_values,
                "type": st.text(max_size=4) | json_values,
                "name": st.text(max_size=4),
                "provider": json_values,
                "instances": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "index_key": json_values,
                            "status": json_values,
                            "deposed": json_values,
                            "attributes": json_values,
                        },
                    ),
                    max_size=3,
                ),
            },
        ),
        max_size=4,
    )
)
def test_rows_match_the_explorer_on_any_shape(resources: list[dict[str, Any]]) -> None:
    body = orjson.dumps({"resources": resources})
    assert without_digests(index_rows(body)) == rows_by_explorer(body)


any_resources = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "module": json_values,
            "type": st.sampled_from(["t", "u"]) | json_values,
            "name": st.sampled_from(["a", "b"]),
            "instances": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "index_key": st.integers(0, 2) | st.sampled_from(["k"]),
                        "attributes": json_values,
                    },
                ),
                max_size=2,
            )
            | json_values,
        },
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(any_resources, any_resources, st.lists(st.integers(0, 4), max_size=3))
def test_a_write_reusing_the_heads_resources_gets_the_rows_of_a_full_read(
    first: list[dict[str, Any]], others: list[dict[str, Any]], kept: list[int]
) -> None:
    """Rows built from the previous version's per-resource rows (reused where a resource's
    bytes are unchanged, at the same place or moved) are exactly the rows of reading the
    new state whole, whatever was added, removed, reordered or malformed."""
    from blixard.store.resource_index import build_doc

    # The second version keeps some of the first's resources (in another order) among others.
    second = [*[first[i] for i in kept if i < len(first)], *others]
    one = orjson.dumps({"serial": 1, "lineage": "l", "resources": first})
    two = orjson.dumps({"serial": 2, "lineage": "l", "resources": second})
    packed, _, resources = build_doc(1, one)
    previous = (resources, packed) if resources is not None else None
    packed_two, doc, _ = build_doc(2, two, previous)
    assert doc.rows == index_rows(two) or doc.same_as_head
    assert unpack(packed_two) == IndexDoc(2, index_rows(two))


def test_attribute_filter_paths_values_and_sensitive_paths() -> None:
    attributes = {
        "tags": {"Name": "web"},
        "ports": [80, 443],
        "input": {"value": {"size": 3}, "type": ["object", {"size": "number"}]},
        "password": "hunter2",
        "enabled": True,
    }
    sensitive = (("password",),)
    assert AttributeFilter.parse("tags.Name=web").matches(attributes, sensitive)
    assert AttributeFilter.parse("ports.1=443").matches(attributes, sensitive)
    assert AttributeFilter.parse("input.size=3").matches(attributes, sensitive)
    assert AttributeFilter.parse("enabled=true").matches(attributes, sensitive)
    assert AttributeFilter.parse("tags.Name=a=b").value == "a=b"
    assert not AttributeFilter.parse("tags.Name=db").matches(attributes, sensitive)
    assert not AttributeFilter.parse("ports.7=443").matches(attributes, sensitive)
    assert not AttributeFilter.parse("password=hunter2").matches(attributes, sensitive)
    for bad in ("tags.Name", "=x", "a..b=x", ".a=x"):
        with pytest.raises(InvalidInput):
            AttributeFilter.parse(bad)


def test_queries_need_a_filter_and_match_wildcards_literally() -> None:
    with pytest.raises(InvalidInput):
        ResourceQuery()
    with pytest.raises(InvalidInput):
        ResourceQuery(attr=AttributeFilter(("a",), "b"))
    row = IndexRow(
        'module.m["a[1]"].t.n[0]',
        "t",
        "n",
        'module.m["a[1]"]',
        "managed",
        "p",
        None,
        "i",
        None,
        None,
        "d",
    )
    assert ResourceQuery(address='module.m["a[1]"].*').matches(row)
    assert not ResourceQuery(address="module.m?*").matches(row)
    assert ResourceQuery(mode="managed").matches(row)
    assert ResourceQuery(module="").matches(row) is False


def test_cursors_round_trip_and_refuse_garbage() -> None:
    cursor = Cursor("ws", 3, 'a["x"]')
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "!!!", "bm90IGpzb24", Cursor("w", 1, "a").encode()[:-2] + "zz"):
        assert Cursor.decode(bad) is None


def test_head_index_keeps_the_newest_document_and_its_postings() -> None:
    index = HeadIndex()
    row = IndexRow("t.a", "t", "a", "", "managed", "p", None, "id-1", None, None, "d")
    index.put("w", pack(2, [row]))
    index.put("w", pack(1, [row._replace(id="old")]))  # older: ignored
    assert unpack(pack(2, [row])).rows == [row]
    assert [m.row.id for m in index.search(ResourceQuery(id="id-1"), lambda _: True)] == ["id-1"]
    assert list(index.search(ResourceQuery(id="old"), lambda _: True)) == []
    index.put("w", pack(3, [row._replace(type="u", id="id-2")]))
    assert list(index.search(ResourceQuery(type="t"), lambda _: True)) == []
    assert list(index.search(ResourceQuery(id="id-1"), lambda _: True)) == []
    assert len(list(index.search(ResourceQuery(type="u"), lambda _: True))) == 1


def test_a_write_with_unchanged_resources_reuses_the_previous_rows() -> None:
    from blixard.store.resource_index import build_doc

    def state(serial: int, ident: str) -> bytes:
        resource = {"type": "t", "name": "a", "instances": [{"attributes": {"id": ident}}]}
        return orjson.dumps({"serial": serial, "outputs": {"o": serial}, "resources": [resource]})

    packed, doc, slices = build_doc(1, state(1, "x"))
    assert slices is not None and [r.id for r in doc.rows] == ["x"]
    restamped, same, slices2 = build_doc(2, state(2, "x"), (slices, packed))
    assert slices2 == slices and same.same_as_head and same.version == 2
    assert unpack(restamped) == IndexDoc(2, doc.rows)
    changed, other, slices3 = build_doc(3, state(3, "y"), (slices, packed))
    assert slices3 != slices and [r.id for r in other.rows] == ["y"]
    assert unpack(changed).version == 3


def test_a_write_with_unchanged_resources_restamps_the_heads_document() -> None:
    """build_doc's fast path (same resources as the head): the document is the head's with
    the new version number, and the in-memory index keeps its postings and moves on."""
    from blixard.store.resource_index import build_doc

    def state(serial: int, bucket: str) -> bytes:
        return orjson.dumps(
            {
                "version": 4,
                "serial": serial,
                "lineage": "l",
                "resources": [
                    {
                        "mode": "managed",
                        "type": "aws_s3_bucket",
                        "name": "b",
                        "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
                        "instances": [{"attributes": {"id": bucket, "arn": f"arn:{bucket}"}}],
                    }
                ],
            }
        )

    index = HeadIndex()
    packed, doc, slices = build_doc(1, state(1, "one"))
    index.put("ws", packed, doc, slices)
    packed, doc, slices = build_doc(2, state(2, "one"), index.reusable("ws"))
    assert doc.same_as_head and doc.rows == []
    index.put("ws", packed, doc, slices)
    assert index.version_of("ws") == 2
    assert unpack(packed) == IndexDoc(2, index_rows(state(2, "one")))
    found = list(index.search(ResourceQuery(id="arn:one"), lambda _: True))
    assert [(m.workspace, m.version, m.row.address) for m in found] == [
        ("ws", 2, "aws_s3_bucket.b")
    ]
    # Changed resources take the full path: new rows, new postings.
    packed, doc, slices = build_doc(3, state(3, "two"), index.reusable("ws"))
    assert not doc.same_as_head
    index.put("ws", packed, doc, slices)
    assert not list(index.search(ResourceQuery(id="one"), lambda _: True))
    assert [m.version for m in index.search(ResourceQuery(id="two"), lambda _: True)] == [3]


def test_the_slices_parse_state_reads_are_the_ones_the_index_compares() -> None:
    """parse_state keeps the resources as slices of the body in the pass that validates it:
    the very slices resource_slices gives (history search, writes without a StateMeta),
    equal exactly when the resources are byte-identical, absent when not a list."""
    from blixard.domain.parsing import parse_state, resource_slices

    def state(serial: int, resources: Any, **extra: Any) -> bytes:
        return orjson.dumps({"serial": serial, "lineage": "l", "resources": resources, **extra})

    resources = [{"type": "t", "name": "a", "instances": [{"attributes": {"id": "x"}}]}]
    first = parse_state(state(1, resources))
    assert first.resources == resource_slices(state(1, resources))
    assert first.resources is not None and first.resource_count == 1
    assert parse_state(state(2, resources, outputs={"o": 1})).resources == first.resources
    moved = [{**resources[0], "name": "b"}]
    assert parse_state(state(3, moved)).resources != first.resources
    two = parse_state(state(1, [{"a": 1}, {"b": 2}]))
    assert two.resource_count == 2 and two.resources != first.resources
    for odd in ({"not": "a list"}, "text", None):
        meta = parse_state(state(1, odd))
        assert meta.resources is None and meta.resource_count is None
    assert parse_state(state(1, [1, 2])).resource_count is None  # not objects: not counted


def test_documents_of_the_first_format_are_still_read_and_restamped() -> None:
    """Stored documents written before the header format (one compressed JSON object)."""
    import zstandard

    from blixard.store.resource_index import restamp

    row = IndexRow("t.a", "t", "a", "", "managed", "p", None, "id-1", None, None, "d")
    plain = orjson.dumps({"v": 1, "version": 7, "rows": [list(row)]})
    legacy = zstandard.ZstdCompressor().compress(plain)
    assert unpack(legacy) == IndexDoc(7, [row])
    assert unpack(restamp(legacy, 8)) == IndexDoc(8, [row])
    assert unpack(restamp(pack(8, [row]), 2**63 - 1)) == IndexDoc(2**63 - 1, [row])


def test_a_document_the_watch_delivered_first_still_learns_its_slices() -> None:
    """On etcd a node's own write can reach its index through the watch before the write
    returns: the write's slices must still be kept, or every later write of unchanged
    resources rebuilds its rows instead of restamping the head's document."""
    from blixard.store.resource_index import build_doc

    body = orjson.dumps(
        {"serial": 1, "lineage": "l", "resources": [{"type": "t", "name": "a", "instances": []}]}
    )
    packed, doc, slices = build_doc(5, body)
    index = HeadIndex()
    index.put("ws", packed)  # the watch: document only
    assert index.reusable("ws") is None
    assert slices is not None
    index.put("ws", packed, doc, slices, len(body))  # the write itself, a moment later
    assert index.reusable("ws") == (slices, packed)
    again, same, _ = build_doc(6, body, index.reusable("ws"))
    assert same.same_as_head and unpack(again).version == 6


def test_recent_slices_stay_within_their_byte_budget() -> None:
    """The resources kept for reuse hold their bodies and rows: the oldest go once the budget
    is full, and a workspace whose resources went simply indexes its next write in full."""
    from blixard.store.resource_index import build_doc

    def body(ident: str) -> bytes:
        resource = {"type": "t", "name": "a", "instances": [{"attributes": {"id": ident}}]}
        return orjson.dumps({"serial": 1, "lineage": "l", "resources": [resource]})

    from blixard.store.resource_index import ROW_BYTES

    index = HeadIndex(recent_bytes=2 * (100 + ROW_BYTES) + 50)  # a body of 100 and one row
    for n in range(3):
        state = body(f"id-{n}")
        packed, doc, slices = build_doc(1, state)
        index.put(f"w{n}", packed, doc, slices, 100)
    assert index.reusable("w0") is None  # the oldest went over the budget
    assert index.reusable("w1") is not None and index.reusable("w2") is not None
    packed, doc, _ = build_doc(2, body("id-0"), index.reusable("w0"))
    assert not doc.same_as_head and unpack(packed) == IndexDoc(2, doc.rows)
    index.drop("w1")
    assert index.reusable("w1") is None


def test_a_write_reads_only_the_resources_it_changed() -> None:
    """One resource of three changed, one added: the other two keep the rows the head's
    write built (the same lists, not rebuilt), the changed and the new one are read."""
    from blixard.store.resource_index import build_doc

    def resource(name: str, ident: str) -> dict[str, Any]:
        return {"type": "t", "name": name, "instances": [{"attributes": {"id": ident}}]}

    def state(serial: int, *resources: dict[str, Any]) -> bytes:
        return orjson.dumps({"serial": serial, "lineage": "l", "resources": list(resources)})

    a, b, c = resource("a", "1"), resource("b", "2"), resource("c", "3")
    packed, _, first = build_doc(1, state(1, a, b, c))
    assert first is not None and first.groups is not None
    changed = state(2, resource("new", "9"), a, resource("b", "2b"), c)
    packed, doc, second = build_doc(2, changed, (first, packed))
    assert second is not None and second.groups is not None
    assert second.groups[1] is first.groups[0]  # a, moved one place on
    assert second.groups[3] is first.groups[2]  # c
    assert second.groups[2] is not first.groups[1]  # b changed: read again
    assert [row.id for row in doc.rows] == ["9", "1", "2b", "3"]
    assert doc.rows == index_rows(changed)
