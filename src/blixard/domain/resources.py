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
    identity: dict[str, str]  # IDENTITY_ATTRIBUTES present as strings
    attributes: dict[str, Any] = field(repr=False)
    sensitive_paths: tuple[Path, ...] = ()
    digest: str = ""  # SHA-256 of the attributes' canonical JSON (sorted keys)

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


def read_contents(body: Body) -> StateContents:
    """Parse a stored state body into its instances and outputs (never raises on shape)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return StateContents(None, None, None, (), (), readable=False)
    if not isinstance(document, dict):
        return StateContents(None, None, None, (), (), readable=False)
    serial = document.get("serial")
    lineage = document.get("lineage")
    version = document.get("terraform_version")
    resources = document.get("resources")
    readable = isinstance(resources, list) or "encrypted_data" not in document
    return StateContents(
        serial=serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
        lineage=lineage if isinstance(lineage, str) else None,
        terraform_version=version if isinstance(version, str) else None,
        instances=tuple(_instances(resources if isinstance(resources, list) else [])),
        outputs=tuple(_outputs(document.get("outputs"))),
        readable=readable,
    )


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
        module = resource.get("module") or ""
        mode = resource.get("mode") or "managed"
        type_ = resource.get("type")
        name = resource.get("name")
        if not (isinstance(module, str) and isinstance(type_, str) and isinstance(name, str)):
            continue
        mode = mode if isinstance(mode, str) else "managed"
        provider = resource.get("provider")
        provider = provider if isinstance(provider, str) else ""
        instances = resource.get("instances")
        for instance in instances if isinstance(instances, list) else []:
            if not isinstance(instance, dict):
                continue
            key = instance.get("index_key")
            if isinstance(key, bool) or not isinstance(key, str | int | None):
                key = str(key)
            attributes = instance.get("attributes")
            if not isinstance(attributes, dict):
                attributes = {}
            paths = sensitive_paths(instance.get("sensitive_attributes"))
            deposed = instance.get("deposed")
            deposed = deposed if isinstance(deposed, str) and deposed else None
            status = instance.get("status")
            status = "deposed" if deposed else (status if isinstance(status, str) else None)
            dependencies = instance.get("dependencies")
            yield ResourceInstance(
                address=instance_address(module, mode, type_, name, key),
                module=module,
                mode=mode,
                type=type_,
                name=name,
                index_key=key,
                provider=provider,
                status=status or None,
                deposed_key=deposed,
                dependencies=tuple(d for d in dependencies if isinstance(d, str))
                if isinstance(dependencies, list)
                else (),
                identity=identity_of(attributes, paths),
                attributes=attributes,
                sensitive_paths=paths,
                digest=attributes_digest(attributes),
            )


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
