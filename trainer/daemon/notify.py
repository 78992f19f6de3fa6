"""sd_notify, in-house: one AF_UNIX datagram of KEY=VALUE lines to $NOTIFY_SOCKET.

Not PyPI's sdnotify: it swallows every error in a bare ``except`` (even KeyboardInterrupt)
and encodes as Latin-1, so a STATUS with non-Latin text silently never arrives. Here errors
are raised, text is UTF-8, abstract sockets (a leading ``@``) work, and without
NOTIFY_SOCKET (a terminal, a test) every call is a no-op: the null object of the pattern.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        self.watchdog_usec = _watchdog_usec(env)

    def send(self, **fields: object) -> None:
        """Send ``KEY=VALUE`` lines (keys upper-cased); raises OSError if systemd cannot be told."""
        if self.address is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(self.address)
            sock.sendall(message.encode("utf-8"))

    def ready(self, status: str) -> None:
        # With the watchdog's own timeout: after a restart of the worker group, which asked for
        # longer (``watchdog_timeout``) while the model loaded again, it is back to the unit's.
        timeout = {"watchdog_usec": self.watchdog_usec} if self.watchdog_usec is not None else {}
        self.send(ready=1, status=_one_line(status), **timeout)

    def watchdog_timeout(self, seconds: float) -> None:
        """Change the watchdog's timeout from now on (until the next READY restores the unit's);
        nothing when systemd does not watch (it would arm a watchdog nobody feeds)."""
        if self.watchdog_usec is not None:
            self.send(watchdog_usec=int(seconds * 1_000_000))

    def status(self, status: str) -> None:
        self.send(status=_one_line(status))

    def watchdog(self) -> None:
        """Only when systemd watches this process (WATCHDOG_USEC set, WATCHDOG_PID unset or ours)."""
        if self.watchdog_usec is not None:
            self.send(watchdog=1)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time to start or stop (a long model load, a checkpoint save)."""
        self.send(extend_timeout_usec=int(seconds * 1_000_000))

    def stopping(self, status: str = "stopping") -> None:
        self.send(stopping=1, status=_one_line(status))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _watchdog_usec(env) -> int | None:
    """WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID unset or ours)."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit():
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec)
