"""systemd's notification protocol (sd_notify(3)) without libsystemd or any other dependency.

Contract: `Notifier.from_environ(os.environ, os.getpid())` reads `$NOTIFY_SOCKET` and the
watchdog settings once; `send("READY=1", "STATUS=...")` sends the assignments as one
datagram and returns whether it was sent. Without `$NOTIFY_SOCKET` (not started by systemd)
every call does nothing. A failed send (or one that waits over SEND_TIMEOUT) is logged and
otherwise ignored: a notification must never stop or hang the daemon it reports on.

The protocol, as in systemd's man/notify-selfcontained-example.py: one `AF_UNIX` datagram of
newline-separated `KEY=value` lines to the socket named by `$NOTIFY_SOCKET`; a leading `@`
names an abstract socket (a leading NUL byte). The watchdog is on when `$WATCHDOG_USEC` is
set and `$WATCHDOG_PID` is unset or ours (sd_watchdog_enabled(3)); systemd wants a
`WATCHDOG=1` at least every `WATCHDOG_USEC`, and recommends every half of it.

The environment is read, never changed: the children we run (postconf, postfix) get a fixed
environment from runner.py, so they cannot inherit `$NOTIFY_SOCKET` and talk for us.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("pftls-hook")
SEND_TIMEOUT = 1.0


@dataclass(frozen=True)
class Notifier:
    address: str | None = None  # what connect() takes: a path, or "\0name" (abstract)
    watchdog_usec: int | None = None  # systemd's WatchdogSec, when it applies to us
    send_timeout: float = SEND_TIMEOUT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@") and len(raw) > 1:
            address = "\0" + raw[1:]
        elif raw:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: ignored", raw)
        return cls(address, _watchdog_usec(environ, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two WATCHDOG=1 pings (half of WatchdogSec), or None when off."""
        if self.watchdog_usec is None or self.address is None:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *assignments: str) -> bool:
        if self.address is None or not assignments:
            return False
        # One line per assignment: a newline inside a value would start a bogus one.
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # A receiver that stops reading fills its queue (net.unix.max_dgram_qlen, often
                # 10 datagrams) and a blocking send would then hang the main loop for good.
                sock.settimeout(self.send_timeout)
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            log.debug("sd_notify %s: %s", assignments[0], exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this to the SIGHUP;
        # older systemd ignores both lines until the READY=1 that ends the reload.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(pid)):
        return None
    return usec
