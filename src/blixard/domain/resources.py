"""Resource instances and outputs read out of a stored state, for the explorer and its index.

A state body is never rewritten: this module parses a copy (orjson) to describe what it holds.
Shapes follow Terraform's state format version 4 (also written by OpenTofu): a `resources` list
of `{module?, mode, type, name, provider, each?, instances: [...]}`, each instance with
`index_key?` (a number for `count`, a string for `for_each`), `status?` ("tainted"),
`deposed?` (the key of an object kept by create_before_destroy), `attributes`,
`sensitive_attributes` (paths into `attributes`) and `dependencies`.

Anything else (OpenTofu's client-side-encrypted envelope, older formats, odd values) yields no
instances rather than an error: the explorer describes what it can read and never refuses a
state the backend accepted.

Sensitive values are masked by default: the paths in an instance's `sensitive_attributes` and
every output marked `sensitive` read `"(sensitive)"` unless the caller asks to reveal them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from blixard.domain.models import Body

MASK = "(sensitive)"

#: Attributes that identify the real-world object a resource instance manages, in the order
#: they are looked for; the explorer shows them and search/duplicates index them.
IDENTITY_ATTRIBUTES = ("id", "arn", "self_link", "name")

#: A path into an attribute value: object keys (str) and list/tuple indexes (int).
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ResourceInstance:
    """One resource instance (or a deposed object of one) of a state."""

    address: str  # as Terraform prints it: module.a["x"].aws_s3_bucket.b[0]
    module: str  # "" for the root module, else e.g. module.a["x"].module.b
    mode: str  # "managed" or "data"
    type: str
    name: str
    index_key: str | int | None
    provider: str
    status: str | None  # "tainted", "deposed" or None
    deposed_key: str | None
    dependencies: tuple[str, ...]
    raw_attributes: bytes = field(repr=False)  # the attributes' JSON as stored
    sensitive_paths: tuple[Path, ...] = ()
    #: What is worked out only when asked for (most views of a large state never ask).
    _lazy: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def attributes(self) -> dict[str, Any]:
        """The attributes, parsed on first use."""
        found: dict[str, Any] | None = self._lazy.get("attributes")
        if found is None:
            value = orjson.loads(self.raw_attributes) if self.raw_attributes else {}
            found = self._lazy["attributes"] = value if isinstance(value, dict) else {}
        return found

    @property
    def identity(self) -> dict[str, str]:
        """IDENTITY_ATTRIBUTES present as non-empty strings (sensitive ones left out)."""
        found: dict[str, str] | None = self._lazy.get("identity")
        if found is None:
            if "attributes" in self._lazy:
                found = identity_of(self._lazy["attributes"], self.sensitive_paths)
            else:
                found = _identity(self.raw_attributes, self.sensitive_paths)
            self._lazy["identity"] = found
        return found

    @property
    def digest(self) -> str:
        """SHA-256 of the attributes' canonical JSON (sorted keys): equal digests, equal
        attributes, however a writer formatted them (`attributes_digest`)."""
        found: str | None = self._lazy.get("digest")
        if found is None:
            found = self._lazy["digest"] = attributes_digest(self.attributes)
        return found

    @property
    def key(self) -> str:
        """Unique within a state: the address, plus the deposed key for a deposed object."""
        return f"{self.address} (deposed {self.deposed_key})" if self.deposed_key else self.address

    def as_dict(self, *, attributes: bool = False) -> dict[str, Any]:
        """The instance as the explorer lists it; `attributes` adds them, masked, and the
        sensitive paths (named, never valued)."""
        shown: dict[str, Any] = {
            "address": self.address,
            "module": self.module,
            "mode": self.mode,
            "type": self.type,
            "name": self.name,
            "index_key": self.index_key,
            "provider": self.provider,
            "status": self.status,
            "deposed_key": self.deposed_key,
            "dependencies": list(self.dependencies),
            "identity": self.identity,
            "digest": self.digest,
        }
        if attributes:
            shown["attributes"] = self.masked_attributes()
            shown["sensitive_attributes"] = [format_path(p) for p in self.sensitive_paths]
        return shown

    def masked_attributes(self, *, reveal: bool = False) -> dict[str, Any]:
        """The attributes with every sensitive path replaced by MASK (unless `reveal`)."""
        if reveal or not self.sensitive_paths:
            return self.attributes
        masked: dict[str, Any] = mask_paths(self.attributes, self.sensitive_paths)
        return masked


@dataclass(frozen=True, slots=True)
class Output:
    name: str
    value: Any
    type: Any
    sensitive: bool

    def shown_value(self, *, reveal: bool = False) -> Any:
        return MASK if self.sensitive and not reveal else self.value

    def as_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "value": self.shown_value(reveal=reveal),
            "sensitive": self.sensitive,
        }


@dataclass(frozen=True, slots=True)
class StateContents:
    """What a state holds, as the explorer reads it."""

    serial: int | None
    lineage: str | None
    terraform_version: str | None
    instances: tuple[ResourceInstance, ...]
    outputs: tuple[Output, ...]
    readable: bool  # False for a state whose resources could not be read (e.g. encrypted)

    def by_key(self) -> dict[str, ResourceInstance]:
        return {instance.key: instance for instance in self.instances}


class _Instance(msgspec.Struct):
    attributes: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    sensitive_attributes: list[Any] = []
    index_key: str | int | None = None
    status: str | None = None
    deposed: str | None = None
    dependencies: list[str] = []


class _Resource(msgspec.Struct):
    type: str
    name: str
    module: str = ""
    mode: str = "managed"
    provider: str = ""
    instances: list[_Instance] = []


class _Document(msgspec.Struct):
    serial: Any = None
    lineage: Any = None
    terraform_version: Any = None
    outputs: Any = None
    resources: list[_Resource] | None = None
    encrypted_data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Identity(msgspec.Struct):
    id: Any = None
    arn: Any = None
    self_link: Any = None
    name: Any = None


_document_decoder = msgspec.json.Decoder(_Document)
_identity_decoder = msgspec.json.Decoder(_Identity)


def read_contents(body: Body) -> StateContents:
    """Parse a stored state body into its instances and outputs (never raises on shape).

    Attributes are not built into Python objects here: each instance keeps its attributes'
    JSON as stored, so reading a 10 MiB state costs tens of milliseconds. A state whose parts
    have unexpected types takes a slower, tolerant path.
    """
    try:
        document = _document_decoder.decode(body)
    except msgspec.ValidationError:
        return _read_tolerantly(body)
    except msgspec.DecodeError:
        return StateContents(None, None, None, (), (), readable=False)
    instances: list[ResourceInstance] = []
    append = instances.append
    for resource in document.resources or ():
        mode = resource.mode or "managed"
        prefix = instance_address(resource.module, mode, resource.type, resource.name, None)
        for instance in resource.instances:
            key = instance.index_key
            deposed = instance.deposed or None
            append(
                ResourceInstance(
                    address=prefix if key is None else prefix + format_index_key(key),
                    module=resource.module,
                    mode=mode,
                    type=resource.type,
                    name=resource.name,
                    index_key=key,
                    provider=resource.provider,
                    status="deposed" if deposed else (instance.status or None),
                    deposed_key=deposed,
                    dependencies=tuple(instance.dependencies),
                    raw_attributes=bytes(instance.attributes),
                    sensitive_paths=sensitive_paths(instance.sensitive_attributes)
                    if instance.sensitive_attributes
                    else (),
                )
            )
    return StateContents(
        serial=_int_or_none(document.serial),
        lineage=_str_or_none(document.lineage),
        terraform_version=_str_or_none(document.terraform_version),
        instances=tuple(instances),
        outputs=tuple(_outputs(document.outputs)),
        readable=document.resources is not None or not len(document.encrypted_data),
    )


def _read_tolerantly(body: Body) -> StateContents:
    """read_contents for a state whose parts have unexpected types: what can be read is."""
    document = orjson.loads(body)
    if not isinstance(document, dict):
        return StateContents(None, None, None, (), (), readable=False)
    resources = document.get("resources")
    return StateContents(
        serial=_int_or_none(document.get("serial")),
        lineage=_str_or_none(document.get("lineage")),
        terraform_version=_str_or_none(document.get("terraform_version")),
        instances=tuple(_instances(resources if isinstance(resources, list) else [])),
        outputs=tuple(_outputs(document.get("outputs"))),
        readable=isinstance(resources, list) or "encrypted_data" not in document,
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def format_index_key(key: str | int | None) -> str:
    """`[0]` for a count index, `["k"]` for a for_each key (JSON-quoted), "" for none."""
    if key is None:
        return ""
    if isinstance(key, str):
        return "[" + orjson.dumps(key).decode() + "]"
    return f"[{key}]"


def instance_address(module: str, mode: str, type_: str, name: str, key: str | int | None) -> str:
    local = f"{type_}.{name}" if mode == "managed" else f"data.{type_}.{name}"
    prefix = f"{module}." if module else ""
    return f"{prefix}{local}{format_index_key(key)}"


def attributes_digest(attributes: Any) -> str:
    return hashlib.sha256(orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS)).hexdigest()


def mask_paths(value: Any, paths: Iterable[Path]) -> Any:
    """A copy of `value` with each path's value replaced by MASK (missing paths are ignored).

    Only the containers along the paths are copied; the rest is shared with `value`.
    """
    result = value
    for path in paths:
        result = _mask_one(result, path)
    return result


def _mask_one(value: Any, path: Path) -> Any:
    if not path:
        return MASK
    step, rest = path[0], path[1:]
    if _is_dynamic_wrapper(value) and not (isinstance(step, str) and step in value):
        copy = dict(value)
        copy["value"] = _mask_one(value["value"], path)
        return copy
    if isinstance(value, dict) and isinstance(step, str) and step in value:
        copy = dict(value)
        copy[step] = _mask_one(value[step], rest)
        return copy
    if isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
        items = list(value)
        items[step] = _mask_one(value[step], rest)
        return items
    return value


def resolve_path(value: Any, path: Path) -> Path:
    """The path as it runs through the stored JSON: a sensitive path names steps of the
    attribute's value, and where it crosses a dynamically typed value (`{"value", "type"}`)
    the stored JSON has an extra `"value"` step. Follows `_mask_one`'s reading exactly, so a
    resolved path masks what the sensitive path masks; steps past a missing one are kept."""
    resolved: list[str | int] = []
    for position, step in enumerate(path):
        if _is_dynamic_wrapper(value) and not (isinstance(step, str) and step in value):
            resolved.append("value")
            value = value["value"]
        if not _has_step(value, step):
            resolved.extend(path[position:])
            break
        value = value[step]
        resolved.append(step)
    return tuple(resolved)


def _has_step(value: Any, step: str | int) -> bool:
    if isinstance(value, dict):
        return isinstance(step, str) and step in value
    return isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value)


def format_path(path: Path) -> str:
    """A path as Terraform prints one: `tags["Name"]`, `ingress[0].cidr_blocks`."""
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif _IDENTIFIER.fullmatch(step):
            text += f".{step}" if text else step
        else:
            text += "[" + orjson.dumps(step).decode() + "]"
    return text


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _is_dynamic_wrapper(value: Any) -> bool:
    """A value of a dynamically typed attribute, stored as `{"value": ..., "type": ...}`
    (e.g. terraform_data's `input`): sensitive paths address the inner value."""
    return isinstance(value, dict) and len(value) == 2 and "value" in value and "type" in value


def sensitive_paths(raw: Any) -> tuple[Path, ...]:
    """Paths from an instance's `sensitive_attributes`.

    Terraform writes each path as a list of steps `{"type": "get_attr", "value": "name"}` or
    `{"type": "index", "value": {"value": 0 | "key", "type": "number" | "string"}}`; a step
    this module does not understand ends the path there (masking the whole value above it,
    the safe side).
    """
    if not isinstance(raw, list):
        return ()
    paths: list[Path] = []
    for item in raw:
        steps = item if isinstance(item, list) else []
        path: list[str | int] = []
        for step in steps:
            decoded = _path_step(step)
            if decoded is None:
                break
            path.append(decoded)
        paths.append(tuple(path))
    return tuple(paths)


def _path_step(step: Any) -> str | int | None:
    if not isinstance(step, dict):
        return None
    kind, value = step.get("type"), step.get("value")
    if kind == "get_attr" and isinstance(value, str):
        return value
    if kind == "index" and isinstance(value, dict):
        inner = value.get("value")
        if isinstance(inner, bool):
            return None
        if isinstance(inner, str):
            return inner
        if isinstance(inner, int | float) and float(inner).is_integer():
            return int(inner)
    return None


def identity_of(attributes: dict[str, Any], masked: tuple[Path, ...] = ()) -> dict[str, str]:
    """The identity attributes present as plain strings (a sensitive one is left out)."""
    hidden = {path[0] for path in masked if len(path) == 1}
    if () in masked:
        return {}
    return {
        name: value
        for name in IDENTITY_ATTRIBUTES
        if isinstance(value := attributes.get(name), str) and value and name not in hidden
    }


def _instances(resources: list[Any]) -> Iterator[ResourceInstance]:
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        instances = resource.get("instances")
        for instance in instances if isinstance(instances, list) else []:
            if not isinstance(instance, dict):
                continue
            attributes = instance.get("attributes")
            if not isinstance(attributes, dict):
                attributes = {}
            built = _instance(
                resource.get("module"),
                resource.get("mode"),
                resource.get("type"),
                resource.get("name"),
                resource.get("provider"),
                instance.get("index_key"),
                instance.get("status"),
                instance.get("deposed"),
                instance.get("dependencies"),
                instance.get("sensitive_attributes"),
                orjson.dumps(attributes),
                attributes,
            )
            if built is not None:
                yield built


def _instance(
    module: Any,
    mode: Any,
    type_: Any,
    name: Any,
    provider: Any,
    key: Any,
    status: Any,
    deposed: Any,
    dependencies: Any,
    sensitive: Any,
    raw: bytes,
    attributes: dict[str, Any] | None,
) -> ResourceInstance | None:
    """One instance from its parts as found (None when type or name is missing); `attributes`
    are the parsed `raw` when the caller already has them."""
    module = module or ""
    if not (isinstance(module, str) and isinstance(type_, str) and isinstance(name, str)):
        return None
    mode = mode if isinstance(mode, str) and mode else "managed"
    if isinstance(key, bool) or not isinstance(key, str | int | None):
        key = str(key)
    paths = sensitive_paths(sensitive)
    deposed = deposed if isinstance(deposed, str) and deposed else None
    status = "deposed" if deposed else (status if isinstance(status, str) else None)
    instance = ResourceInstance(
        address=instance_address(module, mode, type_, name, key),
        module=module,
        mode=mode,
        type=type_,
        name=name,
        index_key=key,
        provider=provider if isinstance(provider, str) else "",
        status=status or None,
        deposed_key=deposed,
        dependencies=tuple(d for d in dependencies if isinstance(d, str))
        if isinstance(dependencies, list)
        else (),
        raw_attributes=raw,
        sensitive_paths=paths,
    )
    if attributes is not None:
        instance._lazy["attributes"] = attributes
    return instance


def _identity(raw: bytes, masked: tuple[Path, ...]) -> dict[str, str]:
    try:
        found = _identity_decoder.decode(raw)
    except msgspec.MsgspecError:
        return {}  # attributes that are not an object: no identity
    return identity_of({name: getattr(found, name) for name in IDENTITY_ATTRIBUTES}, masked)


def _outputs(raw: Any) -> Iterator[Output]:
    if not isinstance(raw, dict):
        return
    for name in sorted(raw):
        entry = raw[name]
        if not isinstance(entry, dict):
            continue
        yield Output(
            name=name,
            value=entry.get("value"),
            type=entry.get("type"),
            sensitive=bool(entry.get("sensitive", False)),
        )
