"""What the resource index holds about each instance of a version, and how a search matches it.

An index row is the small part of a resource instance that search and duplicates look at:
address, type, name, module, mode, provider, status, the identity values (`id`, `arn`,
`self_link`) and a short digest of the attributes (which tells a changed instance from an
unchanged one without reading the state). Rows are read out of a stored body exactly as
`resources.read_contents` reads instances (same addresses, identities and digests), but without
holding the whole parsed document: only one instance's attributes are parsed at a time, so
indexing a large state costs little more memory than its bytes (the upgrade reindex streams
whole histories through this).

Attribute values other than the identities are not indexed: `attr=` searches read them from
the stored bytes of the candidate instances (see search.py), and never match a sensitive path.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import orjson

from blixard.domain.errors import InvalidInput
from blixard.domain.models import Body
from blixard.domain.resources import (
    Path,
    identity_of,
    instance_address,
    read_contents,
    sensitive_paths,
)

#: Hex digits of the attributes' SHA-256 kept per row: enough to tell versions apart.
DIGEST_CHARS = 16
#: Identity attributes that `id=` matches and duplicates report.
INDEXED_IDENTITIES = ("id", "arn", "self_link")


class IndexRow(NamedTuple):
    address: str
    type: str
    name: str
    module: str
    mode: str
    provider: str
    status: str | None
    id: str | None
    arn: str | None
    self_link: str | None
    digest: str

    def identities(self) -> Iterator[tuple[str, str]]:
        for kind in INDEXED_IDENTITIES:
            value = getattr(self, kind)
            if value:
                yield kind, value


class _Instance(msgspec.Struct):
    index_key: Any = None
    status: Any = None
    deposed: Any = None
    attributes: msgspec.Raw = msgspec.Raw(b"{}")
    sensitive_attributes: Any = None


class _Resource(msgspec.Struct):
    module: Any = None
    mode: Any = None
    type: Any = None
    name: Any = None
    provider: Any = None
    instances: list[_Instance] = []


class _Identity(msgspec.Struct):
    id: Any = None
    arn: Any = None
    self_link: Any = None


_IDENTITY = msgspec.json.Decoder(_Identity)


class _State(msgspec.Struct):
    resources: list[_Resource] | None = None


_DECODER = msgspec.json.Decoder(_State)
_ONE_RESOURCE = msgspec.json.Decoder(_Resource)


def index_rows(body: Body) -> list[IndexRow]:
    """The index rows of a state body (none for a state whose resources cannot be read)."""
    try:
        state = _DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _rows_from_contents(body)  # an unusual shape: the tolerant reader decides
    return [row for resource in state.resources or [] for row in _resource_rows(resource)]


def resource_rows(raw: msgspec.Raw) -> list[IndexRow] | None:
    """The rows of one resource, a slice of a state's `resources` (a resource's rows depend on
    its own bytes only); None when it is not of the shape index_rows reads, which then reads
    the whole state with the tolerant reader."""
    try:
        resource = _ONE_RESOURCE.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return _resource_rows(resource)


def _resource_rows(resource: _Resource) -> list[IndexRow]:
    module = resource.module or ""
    mode = resource.mode or "managed"
    type_, name = resource.type, resource.name
    if not (isinstance(module, str) and isinstance(type_, str) and isinstance(name, str)):
        return []
    mode = mode if isinstance(mode, str) else "managed"
    provider = resource.provider if isinstance(resource.provider, str) else ""
    rows: list[IndexRow] = []
    for instance in resource.instances:
        key = instance.index_key
        if isinstance(key, bool) or not isinstance(key, str | int | None):
            key = str(key)
        raw = memoryview(instance.attributes)
        try:
            identity: Any = _IDENTITY.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            identity = _Identity()  # not an object: no identity (the explorer reads {})
        deposed = instance.deposed if isinstance(instance.deposed, str) else None
        status = instance.status if isinstance(instance.status, str) else None
        values: tuple[Any, ...] = (identity.id, identity.arn, identity.self_link)
        if instance.sensitive_attributes:  # identity_of leaves sensitive ones out
            paths = sensitive_paths(instance.sensitive_attributes)
            found = identity_of(dict(zip(INDEXED_IDENTITIES, values, strict=True)), paths)
            values = tuple(found.get(kind) for kind in INDEXED_IDENTITIES)
        ident, arn, self_link = (v if isinstance(v, str) and v else None for v in values)
        rows.append(
            IndexRow(
                instance_address(module, mode, type_, name, key),
                type_,
                name,
                module,
                mode,
                provider,
                "deposed" if deposed else (status or None),
                ident,
                arn,
                self_link,
                raw_digest(raw),
            )
        )
    return rows


def raw_digest(raw: bytes | memoryview) -> str:
    """The row digest: the CRC-32 and length of the attributes' JSON as stored (Terraform
    writes it the same way for the same values), so an unchanged instance keeps its digest
    from version to version. It tells changes apart, it is no security hash; checksumming
    the stored bytes spares parsing the attributes on every write."""
    return f"{zlib.crc32(raw):08x}{len(raw) & 0xFFFFFFFF:08x}"


def _rows_from_contents(body: Body) -> list[IndexRow]:
    """Rows of a state of an unusual shape, read by the explorer's tolerant reader (the
    digest is then of the attributes re-serialised: such states are rare)."""
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
            raw_digest(orjson.dumps(i.attributes)),
        )
        for i in read_contents(body).instances
    ]


# -- queries ------------------------------------------------------------------------------

_LITERAL = {"[": "[[]", "?": "[?]"}
#: Longest accepted filter value (an ARN or a self_link fits easily).
MAX_FILTER_CHARS = 1024


@dataclass(frozen=True, slots=True)
class AttributeFilter:
    """`attr=<path>=<value>`: the attribute at a dotted path (`tags.Name`, `ports.0`) whose
    value is `value` (a string as is, anything else as its JSON text)."""

    path: tuple[str, ...]
    value: str

    @classmethod
    def parse(cls, text: str) -> AttributeFilter:
        path, sep, value = text.partition("=")
        steps = tuple(path.split("."))
        if not sep or not path or any(not step for step in steps):
            raise InvalidInput(
                "attr must be <path>=<value>, e.g. attr=tags.Name=web (a dotted attribute path)."
            )
        return cls(steps, value)

    def matches(self, attributes: dict[str, Any], sensitive: tuple[Path, ...]) -> bool:
        """True when the path's value equals `value`; never for a sensitive path (a search must
        not reveal what masking hides)."""
        taken: list[str | int] = []
        value: Any = attributes
        for step in self.path:
            if _is_wrapper(value) and step not in value:
                value = value["value"]  # terraform_data's {"value", "type"} wrapper
            if isinstance(value, dict) and step in value:
                value = value[step]
                taken.append(step)
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
                taken.append(int(step))
            else:
                return False
        if any(tuple(taken[: len(path)]) == path for path in sensitive):
            return False
        if isinstance(value, str):
            return value == self.value
        return bool(orjson.dumps(value).decode() == self.value)


def _is_wrapper(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 2 and "value" in value and "type" in value


@dataclass(frozen=True, slots=True)
class ResourceQuery:
    """A search's filters; every given one must match. `address` may hold `*` wildcards,
    `provider` matches a part of the provider address, the others match exactly; `id`
    matches any identity value (id, arn or self_link)."""

    type: str | None = None
    address: str | None = None
    name: str | None = None
    id: str | None = None
    module: str | None = None
    provider: str | None = None
    mode: str | None = None
    attr: AttributeFilter | None = None

    def __post_init__(self) -> None:
        for field in ("type", "address", "name", "id", "module", "provider", "mode"):
            value = getattr(self, field)
            if value is not None and len(value) > MAX_FILTER_CHARS:
                raise InvalidInput(f"{field} is longer than {MAX_FILTER_CHARS} characters.")
        if self.mode is not None and self.mode not in ("managed", "data"):
            raise InvalidInput("mode must be managed or data.")
        if self.attr is not None and not self.narrowed:
            raise InvalidInput(
                "attr needs another filter too (type, address, name, id, module or provider): "
                "attribute values are read from the stored states of the candidates."
            )
        if not self.narrowed and self.mode is None:
            raise InvalidInput(
                "Give at least one filter: type, address, name, id, module, provider or attr."
            )

    @property
    def narrowed(self) -> bool:
        return any(
            value is not None
            for value in (self.type, self.address, self.name, self.id, self.module, self.provider)
        )

    def matches(self, row: IndexRow) -> bool:
        if self.type is not None and row.type != self.type:
            return False
        if self.name is not None and row.name != self.name:
            return False
        if self.module is not None and row.module != self.module:
            return False
        if self.mode is not None and row.mode != self.mode:
            return False
        if self.id is not None and self.id not in (row.id, row.arn, row.self_link):
            return False
        if self.provider is not None and self.provider not in row.provider:
            return False
        if self.address is not None:
            if "*" in self.address:
                # Only * is a wildcard: [ and ? stand for themselves.
                pattern = "".join(_LITERAL.get(char, char) for char in self.address)
                if not fnmatch.fnmatchcase(row.address, pattern):
                    return False
            elif row.address != self.address:
                return False
        return True
