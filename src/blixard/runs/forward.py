"""`python -I -m blixard.runs.forward PORT SOCKET -- PROGRAM ARGS...`, inside a run's sandbox
when it has no network (BLIXARD_RUN_NETWORK=none).

Listens on 127.0.0.1:PORT of the sandbox's own network namespace, relays every connection
to SOCKET (a unix socket the executor serves, which connects only to this server's API),
runs PROGRAM and exits with its status. Interrupts are the program's to handle: SIGINT
reaches the whole process group, this process waits for the program to stop.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading

BUFFER = 65536


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (sink, source):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def _relay(client: socket.socket, target: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError:
        client.close()
        upstream.close()
        return
    threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
    _pipe(client, upstream)


def _serve(listener: socket.socket, target: str) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, target), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: python -m blixard.runs.forward PORT SOCKET -- PROGRAM ...\n")
        return 2
    port, target, program = int(argv[0]), argv[1], argv[3:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, target), daemon=True).start()
    process = subprocess.Popen(program, stdin=subprocess.DEVNULL)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored above
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
