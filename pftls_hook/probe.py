"""A mail client's view: which certificate does Postfix serve right now?

Contract: `served(endpoint)` does EHLO, STARTTLS (or TLS from the first byte) and returns
the SHA-256 of the leaf the server sent, or raises `ProbeError`. `wait_for(endpoints,
expected, timeout)` retries until every endpoint serves `expected` and raises `ProbeError`
at the deadline, naming a 454 if that was the last answer: smtpd answers STARTTLS with 454
when it could not load its key, and keeps advertising STARTTLS, so EHLO alone proves
nothing. A 454 is retried like a wrong certificate: after a reload an old idle smtpd that
could not load the previous (broken) key may still take one more connection, and giving up
on its answer would roll a repair back. The client checks no chain or name (that was done
on the files); it only identifies the leaf. `posttls-finger` is not used: it always exits 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
from collections.abc import Sequence
from typing import BinaryIO

from pftls_hook.config import Endpoint
from pftls_hook.errors import ProbeError, TlsBrokenError
from pftls_hook.fsutil import attempts

_RETRY_SECONDS = 0.05
_HELO_NAME = "pftls-hook.probe"
_MAX_LINE = 1024  # RFC 5321 allows 512 octets a reply line; a longer one is no SMTP


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Identification only: the files were verified before install; here we want the leaf
    # whatever it is, to compare fingerprints.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served(endpoint: Endpoint, *, timeout: float = 5.0) -> str:
    """SHA-256 (hex) of the leaf certificate the endpoint serves."""
    return hashlib.sha256(fetch(endpoint, timeout=timeout)).hexdigest()


def _reply(reader: BinaryIO, endpoint: Endpoint) -> tuple[int, list[str]]:
    """One SMTP reply (RFC 5321 4.2): its code and the text of each of its lines."""
    lines = []
    while True:
        line = reader.readline(_MAX_LINE).decode("latin-1").rstrip("\r\n")
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            raise ProbeError(f"{endpoint}: not an SMTP reply: {line[:60]!r}")
        lines.append(line[4:])
        if line[3:4] != "-":
            return int(line[:3]), lines


def _starttls(sock: socket.socket, endpoint: Endpoint) -> None:
    """Greeting, EHLO, STARTTLS: up to the point where the TLS handshake begins."""
    # Nothing is read past the 220 to STARTTLS: the server says nothing until our
    # ClientHello, so the buffered reader can go before the handshake.
    with sock.makefile("rb") as reader:
        _exchange(sock, reader, endpoint)


def _exchange(sock: socket.socket, reader: BinaryIO, endpoint: Endpoint) -> None:
    code, _ = _reply(reader, endpoint)
    if code != 220:
        raise ProbeError(f"{endpoint}: greeting {code}, not 220")
    sock.sendall(f"EHLO {_HELO_NAME}\r\n".encode())
    code, lines = _reply(reader, endpoint)
    if code != 250:
        raise ProbeError(f"{endpoint}: EHLO answered {code}")
    if not any(line.upper().split()[:1] == ["STARTTLS"] for line in lines[1:]):
        raise TlsBrokenError(f"{endpoint}: STARTTLS not offered after EHLO")
    sock.sendall(b"STARTTLS\r\n")
    code, lines = _reply(reader, endpoint)
    if code == 454:
        raise TlsBrokenError(
            f"{endpoint}: STARTTLS refused with 454 ({' '.join(lines)}): "
            "smtpd could not load its key or certificate"
        )
    if code != 220:
        raise TlsBrokenError(f"{endpoint}: STARTTLS answered {code}")


def fetch(endpoint: Endpoint, *, timeout: float = 5.0) -> bytes:
    """The DER leaf certificate the endpoint serves. A few lines of SMTP rather than
    smtplib, which would load the email package into every deploy hook run."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            if not endpoint.implicit_tls:
                _starttls(sock, endpoint)
            with _context().wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
                with contextlib.suppress(OSError):
                    tls.sendall(b"QUIT\r\n")  # the certificate is what we came for
    except ssl.SSLError as exc:
        raise TlsBrokenError(f"{endpoint}: TLS handshake failed: {exc}") from None
    except OSError as exc:
        raise ProbeError(f"{endpoint}: {type(exc).__name__}: {exc}") from None
    if not der:
        raise TlsBrokenError(f"{endpoint}: no certificate served")
    return der


def wait_for(endpoints: Sequence[Endpoint], expected: str | None, *, timeout: float) -> None:
    """Return once every endpoint serves `expected` (any certificate, for None: configure's
    proof that TLS works). `postfix reload` is asynchronous and busy smtpd processes finish
    their session with the old certificate, so retry until the deadline; the error raised
    then is the last one seen (a `TlsBrokenError` for a 454 at the deadline)."""
    pending = list(endpoints)
    last: ProbeError | None = None
    for final in attempts(timeout, _RETRY_SECONDS):
        still = []
        for endpoint in pending:
            try:
                got = served(endpoint, timeout=max(1.0, min(5.0, timeout)))
            except ProbeError as exc:
                last = exc
                still.append(endpoint)
                continue
            if expected is not None and got != expected:
                last = ProbeError(f"{endpoint}: serves {got[:16]}…, expected {expected[:16]}…")
                still.append(endpoint)
        pending = still
        if not pending:
            return
        if final and last is not None:
            raise type(last)(f"after {timeout:g} s: {last}")
