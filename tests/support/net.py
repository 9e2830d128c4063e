"""Loopback port helpers shared by the process wrappers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


# Ports already handed out in this process. pebble's http01 port is only
# reserved, not bound, until certbot --standalone binds it; without this the
# kernel could hand the same number to a later Postfix instance.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, never the same twice.

    The kernel picks it (bind to port 0). There is a small race until the
    caller binds it; tests run one at a time, so that is acceptable.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port on 127.0.0.1 after 100 tries")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll condition until it holds; raise TimeoutError naming what we waited for.

    on_timeout may return extra text (a log tail) so a failure explains itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}\n{detail}")
        time.sleep(interval)
