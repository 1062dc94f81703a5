"""What changed between two states: resources, their attributes, outputs and top-level fields.

Built from two `StateContents` (domain/resources.py), so it works on any two stored versions,
of one workspace or of two, including versions written before the explorer existed.

Instances are matched by key (address, plus the deposed key of a deposed object). Their
attributes' JSON as stored is compared first (as bytes, cheaper than any digest); only
instances whose attributes (or status, provider or dependencies) differ have their
attributes parsed and walked. An instance that disappeared from one
address while an instance of the same mode and type with the same identity `id` appeared at
another is reported once, as `moved` (what a `moved` block or `terraform state mv` does).

Masking: a path that is sensitive in either state is masked in both (`before` and `after`
read "(sensitive)"), so a value that stopped being sensitive does not leak its old value; a
sensitive value that changed is still reported as changed. Outputs likewise: sensitive on
either side means masked on both. `reveal=True` shows everything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from blixard.domain.resources import (
    MASK,
    Output,
    Path,
    ResourceInstance,
    StateContents,
    format_path,
    mask_paths,
    resolve_path,
)

ResourceChangeKind = Literal["added", "removed", "changed", "moved"]
ValueChangeKind = Literal["added", "removed", "changed"]

#: The top-level fields of a state that a diff compares.
TOP_LEVEL_FIELDS = ("terraform_version", "lineage", "serial")


class _Absent:
    """The value on the side of a change where the path (or output) does not exist."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class AttributeChange:
    """One attribute path whose value differs (`before`/`after` are ABSENT when missing)."""

    path: Path
    kind: ValueChangeKind
    before: Any
    after: Any

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "path": list(self.path),
            "attribute": format_path(self.path),
            "kind": self.kind,
        }
        if self.before is not ABSENT:
            shown["before"] = self.before
        if self.after is not ABSENT:
            shown["after"] = self.after
        return shown


@dataclass(frozen=True, slots=True)
class ResourceChange:
    """One instance (or deposed object) that was added, removed, changed or moved."""

    change: ResourceChangeKind
    address: str  # the address in the `to` state (the `from` one when removed)
    previous_address: str | None  # moved: the address in the `from` state
    deposed_key: str | None
    module: str
    mode: str
    type: str
    name: str
    index_key: str | int | None
    identity: dict[str, str]
    status_before: str | None
    status_after: str | None
    digest_before: str | None  # attribute digests (domain/resources.py), None where absent
    digest_after: str | None
    attributes: tuple[AttributeChange, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "address": self.address,
            "previous_address": self.previous_address,
            "deposed_key": self.deposed_key,
            "module": self.module,
            "mode": self.mode,
            "type": self.type,
            "name": self.name,
            "index_key": self.index_key,
            "identity": self.identity,
            "status_before": self.status_before,
            "status_after": self.status_after,
            "digest_before": self.digest_before,
            "digest_after": self.digest_after,
            "attributes": [change.as_dict() for change in self.attributes],
        }


@dataclass(frozen=True, slots=True)
class OutputChange:
    name: str
    kind: ValueChangeKind
    before: Any
    after: Any
    sensitive: bool  # on either side: then both values read MASK unless revealed

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, "kind": self.kind, "sensitive": self.sensitive}
        if self.before is not ABSENT:
            shown["before"] = self.before
        if self.after is not ABSENT:
            shown["after"] = self.after
        return shown


@dataclass(frozen=True, slots=True)
class StateDiff:
    added: int
    removed: int
    changed: int
    moved: int
    unchanged: int
    resources: tuple[ResourceChange, ...]
    outputs: tuple[OutputChange, ...]
    top_level: dict[str, dict[str, Any]] = field(default_factory=dict)
    readable: tuple[bool, bool] = (True, True)  # False: that side's resources are unreadable

    @property
    def empty(self) -> bool:
        return not (self.resources or self.outputs or self.top_level)

    def summary(self) -> dict[str, int]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "moved": self.moved,
            "unchanged": self.unchanged,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "resources": [change.as_dict() for change in self.resources],
            "outputs": [change.as_dict() for change in self.outputs],
            "top_level": self.top_level,
            "readable": {"from": self.readable[0], "to": self.readable[1]},
        }


EMPTY_STATE = StateContents(None, None, None, (), (), readable=True)


def diff_states(before: StateContents, after: StateContents, *, reveal: bool = False) -> StateDiff:
    """Everything that differs from `before` to `after` (masked unless `reveal`)."""
    old = before.by_key()
    new = after.by_key()
    changes: list[ResourceChange] = []
    unchanged = 0
    for key in old.keys() & new.keys():
        a, b = old[key], new[key]
        change = None if _same(a, b) else _resource_change("changed", a, b, reveal)
        if change is None or _reformatted_only(a, b, change):
            unchanged += 1
        else:
            changes.append(change)
    removed = [old[key] for key in old.keys() - new.keys()]
    added = [new[key] for key in new.keys() - old.keys()]
    moves = _match_moves(removed, added)
    moved_from = {id(a) for a, _ in moves}
    moved_to = {id(b) for _, b in moves}
    changes.extend(_resource_change("moved", a, b, reveal) for a, b in moves)
    changes.extend(
        _resource_change("removed", a, None, reveal) for a in removed if id(a) not in moved_from
    )
    changes.extend(
        _resource_change("added", None, b, reveal) for b in added if id(b) not in moved_to
    )
    changes.sort(key=lambda change: (change.address, change.deposed_key or ""))
    counts: defaultdict[str, int] = defaultdict(int, {"unchanged": unchanged})
    for change in changes:
        counts[change.change] += 1
    return StateDiff(
        added=counts["added"],
        removed=counts["removed"],
        changed=counts["changed"],
        moved=counts["moved"],
        unchanged=counts["unchanged"],
        resources=tuple(changes),
        outputs=tuple(_output_changes(before.outputs, after.outputs, reveal)),
        top_level={
            name: {"before": getattr(before, name), "after": getattr(after, name)}
            for name in TOP_LEVEL_FIELDS
            if getattr(before, name) != getattr(after, name)
        },
        readable=(before.readable, after.readable),
    )


def _same(a: ResourceInstance, b: ResourceInstance) -> bool:
    return (
        a.raw_attributes == b.raw_attributes
        and a.status == b.status
        and a.provider == b.provider
        and a.dependencies == b.dependencies
    )


def _reformatted_only(a: ResourceInstance, b: ResourceInstance, change: ResourceChange) -> bool:
    """The stored attribute JSON differs only because a writer reformatted equal attributes:
    nothing changed."""
    return (
        not change.attributes
        and a.status == b.status
        and a.provider == b.provider
        and (a.dependencies == b.dependencies)
    )


def _match_moves(
    removed: list[ResourceInstance], added: list[ResourceInstance]
) -> list[tuple[ResourceInstance, ResourceInstance]]:
    """Pairs (old, new) of current objects with the same mode, type and identity `id`, one to
    one, in address order (deposed objects are never moves)."""
    candidates: dict[tuple[str, str, str], list[ResourceInstance]] = defaultdict(list)
    for a in sorted(removed, key=lambda i: i.key, reverse=True):
        if a.deposed_key is None and "id" in a.identity:
            candidates[(a.mode, a.type, a.identity["id"])].append(a)
    moves: list[tuple[ResourceInstance, ResourceInstance]] = []
    for b in sorted(added, key=lambda i: i.key):
        if b.deposed_key is None and "id" in b.identity:
            found = candidates.get((b.mode, b.type, b.identity["id"]))
            if found:
                moves.append((found.pop(), b))
    return moves


def _resource_change(
    kind: ResourceChangeKind,
    before: ResourceInstance | None,
    after: ResourceInstance | None,
    reveal: bool,
) -> ResourceChange:
    shown = after or before
    assert shown is not None
    attributes: tuple[AttributeChange, ...] = ()
    if before is not None and after is not None and before.raw_attributes != after.raw_attributes:
        attributes = tuple(attribute_changes(before, after, reveal=reveal))
    return ResourceChange(
        change=kind,
        address=shown.address,
        previous_address=before.address if kind == "moved" and before else None,
        deposed_key=shown.deposed_key,
        module=shown.module,
        mode=shown.mode,
        type=shown.type,
        name=shown.name,
        index_key=shown.index_key,
        identity=shown.identity,
        status_before=before.status if before else None,
        status_after=after.status if after else None,
        digest_before=before.digest if before else None,
        digest_after=after.digest if after else None,
        attributes=attributes,
    )


def attribute_changes(
    before: ResourceInstance, after: ResourceInstance, *, reveal: bool = False
) -> list[AttributeChange]:
    """The paths whose values differ, deepest first reached (objects by key, lists by index),
    each value masked where either side marks it sensitive."""
    raw: list[AttributeChange] = []
    _walk(before.attributes, after.attributes, (), raw)
    if reveal:
        return raw
    sensitive = {resolve_path(before.attributes, p) for p in before.sensitive_paths} | {
        resolve_path(after.attributes, p) for p in after.sensitive_paths
    }
    if not sensitive:
        return raw
    return [_masked(change, sensitive) for change in raw]


def _masked(change: AttributeChange, sensitive: set[Path]) -> AttributeChange:
    path = change.path
    if any(path[: len(s)] == s for s in sensitive):
        return AttributeChange(
            path,
            change.kind,
            ABSENT if change.before is ABSENT else MASK,
            ABSENT if change.after is ABSENT else MASK,
        )
    inner = [s[len(path) :] for s in sensitive if s[: len(path)] == path]
    if not inner:
        return change
    return AttributeChange(
        path,
        change.kind,
        ABSENT if change.before is ABSENT else mask_paths(change.before, inner),
        ABSENT if change.after is ABSENT else mask_paths(change.after, inner),
    )


def _walk(before: Any, after: Any, path: Path, out: list[AttributeChange]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                out.append(AttributeChange((*path, key), "removed", before[key], ABSENT))
            elif key not in before:
                out.append(AttributeChange((*path, key), "added", ABSENT, after[key]))
            else:
                _walk(before[key], after[key], (*path, key), out)
    elif isinstance(before, list) and isinstance(after, list):
        for index in range(max(len(before), len(after))):
            if index >= len(after):
                out.append(AttributeChange((*path, index), "removed", before[index], ABSENT))
            elif index >= len(before):
                out.append(AttributeChange((*path, index), "added", ABSENT, after[index]))
            else:
                _walk(before[index], after[index], (*path, index), out)
    elif not _identical(before, after):
        out.append(AttributeChange(path, "changed", before, after))


def _identical(a: Any, b: Any) -> bool:
    """JSON equality of two leaves: `1`, `1.0` and `true` differ (Python's == says equal)."""
    return type(a) is type(b) and bool(a == b)


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _output_changes(
    before: tuple[Output, ...], after: tuple[Output, ...], reveal: bool
) -> list[OutputChange]:
    old = {output.name: output for output in before}
    new = {output.name: output for output in after}
    changes: list[OutputChange] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is not None and b is not None and _same_output(a, b):
            continue
        sensitive = bool((a and a.sensitive) or (b and b.sensitive))
        hide = sensitive and not reveal
        kind: ValueChangeKind = "added" if a is None else "removed" if b is None else "changed"
        changes.append(
            OutputChange(
                name=name,
                kind=kind,
                before=ABSENT if a is None else MASK if hide else a.value,
                after=ABSENT if b is None else MASK if hide else b.value,
                sensitive=sensitive,
            )
        )
    return changes


def _same_output(a: Output, b: Output) -> bool:
    return (
        a.sensitive == b.sensitive
        and _canonical(a.value) == _canonical(b.value)
        and _canonical(a.type) == _canonical(b.type)
    )
