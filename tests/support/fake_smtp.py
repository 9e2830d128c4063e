"""A tiny fake SMTP server on loopback, to show a STARTTLS client the wrong thing.

It speaks just enough SMTP for a probe: the 220 greeting, EHLO advertising STARTTLS,
STARTTLS answered either with 220 and a TLS handshake using a certificate of the test's
choosing (an impostor), or with `454 4.7.0 TLS not available due to local problem`, which
is what smtpd answers when it could not load its key. Each connection gets its own thread.
`hold_first_handshake`: the first session, after its 220 to STARTTLS, waits for
`release()` before the handshake, as a pre-reload smtpd waits for a stopped tlsmgr.

    with FakeSmtpServer(leaf, tmp_path) as server:
        ... probe 127.0.0.1:server.port ...
"""

from __future__ import annotations

import contextlib
import io
import os
import socketserver
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .net import LOOPBACK
from .pki import Leaf

REFUSAL = b"454 4.7.0 TLS not available due to local problem\r\n"
SESSION_TIMEOUT = 5.0


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__((LOOPBACK, 0), _Session)
        self.context = context  # None: refuse STARTTLS with 454
        self.connections = 0
        self.lock = threading.Lock()
        self.hold: threading.Event | None = None  # set: release the held first session
        self.holding = False  # the first session is held right now


def _dialogue(
    rfile: BinaryIO | io.BufferedIOBase, send: Callable[[bytes], object], server: _Server
) -> str:
    """Answer commands until STARTTLS or QUIT; returns the command that ended it."""
    while True:
        line = rfile.readline(1024)
        if not line:
            return "EOF"
        verb = line.strip().split(b" ", 1)[0].upper()
        if verb in (b"EHLO", b"HELO"):
            send(b"250-fake.test.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
        elif verb == b"STARTTLS":
            if server.context is None:
                send(REFUSAL)
                continue
            send(b"220 2.0.0 Ready to start TLS\r\n")
            return "STARTTLS"
        elif verb == b"QUIT":
            send(b"221 2.0.0 Bye\r\n")
            return "QUIT"
        else:
            send(b"250 2.0.0 Ok\r\n")


class _Session(socketserver.StreamRequestHandler):
    server: _Server
    timeout = SESSION_TIMEOUT

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
            first = self.server.connections == 1
        with contextlib.suppress(OSError, ssl.SSLError):
            self.wfile.write(b"220 fake.test.example ESMTP\r\n")
            self.wfile.flush()

            def send(data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            if _dialogue(self.rfile, send, self.server) != "STARTTLS":
                return
            # The client sends nothing before our 220, so no TLS bytes sit in rfile's buffer.
            assert self.server.context is not None
            if first and self.server.hold is not None:
                self.server.holding = True
                self.server.hold.wait(SESSION_TIMEOUT)
                self.server.holding = False
            with self.server.context.wrap_socket(self.request, server_side=True) as tls:
                tls.settimeout(SESSION_TIMEOUT)
                with tls.makefile("rb") as rfile:
                    _dialogue(rfile, tls.sendall, self.server)


class FakeSmtpServer:
    """Serves until the `with` block ends. `connections` counts sessions so far."""

    def __init__(
        self,
        leaf: Leaf,
        workdir: Path,
        *,
        refuse_tls: bool = False,
        hold_first_handshake: bool = False,
    ) -> None:
        context = None
        if not refuse_tls:
            pem = workdir / f"fake-smtp-{id(self)}.pem"
            fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(leaf.key_pem() + leaf.fullchain_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pem)
        self.leaf = leaf
        self._server = _Server(context)
        if hold_first_handshake:
            self._server.hold = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def connections(self) -> int:
        with self._server.lock:
            return self._server.connections

    @property
    def holding(self) -> bool:
        """The first session is held before its handshake right now."""
        return self._server.holding

    def release(self) -> None:
        if self._server.hold is not None:
            self._server.hold.set()

    def __enter__(self) -> FakeSmtpServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
