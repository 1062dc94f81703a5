"""State and LockInfo parsing: what is accepted, what is read, and that bytes are never changed."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blixard.domain.errors import (
    InvalidInput,
    InvalidLockInfo,
    InvalidState,
    InvalidWorkspaceName,
)
from blixard.domain.parsing import (
    check_utf8,
    check_workspace_name,
    parse_count,
    parse_lock_info,
    parse_state,
    with_serial,
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def test_reads_terraform_metadata() -> None:
    body = orjson.dumps(
        {
            "version": 4,
            "terraform_version": "1.15.5",
            "serial": 12,
            "lineage": "abc",
            "resources": [{"mode": "managed"}, {"mode": "data"}],
        }
    )
    meta = parse_state(body)
    assert (meta.serial, meta.lineage, meta.terraform_version, meta.resource_count) == (
        12,
        "abc",
        "1.15.5",
        2,
    )


@given(extra=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_object_with_serial_and_lineage_is_accepted(extra: dict[str, object]) -> None:
    document = {**extra, "serial": 3, "lineage": "L"}
    meta = parse_state(orjson.dumps(document))
    assert meta.serial == 3 and meta.lineage == "L"


@given(value=json_values)
def test_unfamiliar_resources_and_version_never_reject(value: object) -> None:
    body = orjson.dumps(
        {"serial": 1, "lineage": "L", "resources": value, "terraform_version": value}
    )
    meta = parse_state(body)
    assert meta.resource_count is None or isinstance(value, list)
    assert meta.terraform_version is None or isinstance(value, str)


@pytest.mark.parametrize(
    "body",
    [b"", b"null", b"[]", b'"x"', b'{"serial": 1}', b'{"lineage": "x"}', b"{", b'{"serial":1,'],
)
def test_rejects_non_states(body: bytes) -> None:
    with pytest.raises(InvalidState):
        parse_state(body)


def test_rejects_absurd_nesting_cleanly() -> None:
    deep = b'{"serial": 1, "lineage": "L", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidState, match="nested too deeply"):
        parse_state(deep)
    with pytest.raises(InvalidLockInfo):
        parse_lock_info(b'{"ID": "x", "y": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@given(
    serial=st.integers(0, 2**40),
    new_serial=st.integers(0, 2**40),
    before=st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3),
    after=st.dictionaries(st.sampled_from(["x", "y", "z"]), json_values, max_size=3),
    indent=st.booleans(),
)
def test_with_serial_changes_only_the_serial(
    serial: int, new_serial: int, before: dict[str, object], after: dict[str, object], indent: bool
) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    document = {**before, "serial": serial, "lineage": "L", **after}
    body = orjson.dumps(document, option=option)
    edited = with_serial(body, new_serial)
    assert orjson.loads(edited) == {**document, "serial": new_serial}
    expected = orjson.dumps({**document, "serial": new_serial}, option=option)
    assert edited == expected


def test_with_serial_ignores_nested_serial_keys_and_tricky_strings() -> None:
    body = (
        b'{"a": {"serial": 1, "s": "\\"serial\\": 5 }"}, "list": [{"serial": 2}],'
        b' "lineage": "L", "serial": 9}'
    )
    assert with_serial(body, 10) == body.replace(b'"serial": 9}', b'"serial": 10}')


@pytest.mark.parametrize("name", ["default", "a", "A.b_c-d", "x" * 128, "-", "_x"])
def test_valid_workspace_names(name: str) -> None:
    assert check_workspace_name(name) == name


@pytest.mark.parametrize("name", ["", ".", ".x", "x" * 129, "a/b", "a b", "é", "a\n"])
def test_invalid_workspace_names(name: str) -> None:
    with pytest.raises(InvalidWorkspaceName):
        check_workspace_name(name)


def test_lock_info_rules() -> None:
    assert parse_lock_info(b'{"ID": "x", "Who": "me"}') == {"ID": "x", "Who": "me"}
    assert parse_lock_info(b"  ", allow_empty=True) is None
    for bad in (b"", b"{}", b'{"ID": ""}', b'{"ID": null}', b"[]", b"nope"):
        with pytest.raises(InvalidLockInfo):
            parse_lock_info(bad)


def test_utf8_is_checked_across_slice_boundaries() -> None:
    """A character split by the 1 MiB slicing is still one valid character; a truncated one
    at the very end, or a lone continuation byte in the middle, is not."""
    mib = 1024 * 1024
    for cut in range(1, 4):
        body = b"x" * (mib - cut) + "€".encode() + b"tail"
        check_utf8(body)
        check_utf8(bytearray(body))
    for bad in (b"x" * mib + b"\xe2\x82", b"x" * (mib - 1) + b"\x82" + b"x"):
        with pytest.raises(InvalidState, match="UTF-8"):
            check_utf8(bad)


@given(st.binary(max_size=64))
def test_utf8_check_agrees_with_decode(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InvalidState):
            check_utf8(data)
    else:
        check_utf8(data)


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ("1", True),
        ("9223372036854775807", True),
        ("9223372036854775808", False),
        ("0", False),
        ("-1", False),
        ("+1", False),
        (" 1", False),
        ("1_000", False),
        ("\u0663", False),
        ("\u00b2", False),
        ("", False),
        ("1e3", False),
    ],
)
def test_counts_are_ascii_digits_within_int64(raw: str, valid: bool) -> None:
    if valid:
        assert parse_count(raw, "n") == int(raw)
    else:
        with pytest.raises(InvalidInput, match="whole number from 1 to 9223372036854775807"):
            parse_count(raw, "n")
