"""A mail client's view: which certificate does Postfix serve right now?

Contract: `served(endpoint)` does EHLO, STARTTLS (or TLS from the first byte) and returns
the SHA-256 of the leaf the server sent, or raises `ProbeError`. `wait_for(endpoints,
expected, timeout)` retries until every endpoint serves `expected` and raises `ProbeError`
at the deadline, naming a 454 if that was the last answer: smtpd answers STARTTLS with 454
when it could not load its key, and keeps advertising STARTTLS, so EHLO alone proves
nothing. A 454 is retried like a wrong certificate: after a reload an old idle smtpd that
could not load the previous (broken) key may still take one more connection, and giving up
on its answer would roll a repair back. The client checks no chain or name (that was done
on the files); it only identifies the leaf. `checked(endpoint, anchors)` is the one client
that verifies the chain as an MTA would: the no-op deploy hook's proof (hook.py).
`posttls-finger` is not used: it always exits 0.

An endpoint with an `algorithm` is probed by a client that can accept only that key
algorithm's certificate: Python's ssl cannot restrict the signature algorithms it offers,
so the client caps at TLS 1.2 and offers only the cipher suites authenticated by that
algorithm (`aECDSA`, `aRSA`); in TLS 1.2 the suite decides which certificate the server
may send, so a server with both chains must answer with the one asked for. Another
algorithm (Ed25519) has no suites of its own; it is selected only where no RSA or ECDSA
chain is (select.py), so its client offers everything. An endpoint with a `servername`
sends that name by SNI (tls_server_sni_maps answers it).

A proof after a reload does not wait out a held handshake. An smtpd started before the
reload can still accept a connection in the milliseconds after it; on STARTTLS it asks the
tlsmgr the reload has just stopped for a seed, and sleeps a second before asking again
(docs/benchmarks.md), then serves the old certificate anyway. So `wait_for_each` gives
each handshake a short patience (0.25 s, doubled every round, and the whole timeout in the
last round, so a slow server is still waited for) and then opens a new connection: a held
handshake costs a quarter of a second, not a second and a retry. The SMTP part before it
keeps the whole timeout (postscreen may hold its greeting for seconds).

`fetch_all(endpoints)` probes many endpoints (a thousand SNI names) a few at a time: each
probe waits mostly on the network and on smtpd, which serves every connection in its own
process (up to master.cf's process limit, 100 by default), so a handful at once costs Postfix
little and divides the wall time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import ssl
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from pftls_hook.config import Endpoint
from pftls_hook.errors import ProbeError, TlsBrokenError
from pftls_hook.fsutil import attempts

_RETRY_SECONDS = 0.05
_HELO_NAME = "pftls-hook.probe"
_MAX_LINE = 1024  # RFC 5321 allows 512 octets a reply line; a longer one is no SMTP
_SUITES = {"ecdsa": "aECDSA", "rsa": "aRSA"}  # OpenSSL cipher strings, by key algorithm
_AT_ONCE = 8  # probes in flight at a time (module docstring)
_FIRST_PATIENCE = 0.25  # a proof's first wait for a handshake (module docstring)
Peer = dict[str, Any]  # ssl's getpeercert(): subjectAltName, notAfter, ... ({} unverified)


@functools.cache
def _context(algorithm: str | None = None, anchors: str | None = None) -> ssl.SSLContext:
    """One per algorithm (and trust anchors), shared by every probe (and thread): OpenSSL's
    context setup costs a quarter of a millisecond, a tenth of a probe, paid a thousand
    times for SNI names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Identification only: the files were verified before install; here we want the leaf
    # whatever it is, to compare fingerprints. With `anchors` (`checked`), OpenSSL verifies
    # the chain to those anchors, the dates and the sslserver purpose; names are matched by
    # the caller, for every required hostname.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if anchors is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=anchors)
    suites = _SUITES.get(algorithm or "")
    if suites is not None:
        # TLS 1.3 suites say nothing of the certificate; 1.2 ones do (module docstring).
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(suites)
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


def fetch(endpoint: Endpoint, *, timeout: float = 5.0, patience: float | None = None) -> bytes:
    """The DER leaf certificate the endpoint serves. A few lines of SMTP rather than
    smtplib, which would load the email package into every deploy hook run. `patience`:
    how long the TLS handshake may take, if shorter than `timeout`."""
    return _handshake(endpoint, _context(endpoint.algorithm), timeout, patience)[0]


def checked(endpoint: Endpoint, anchors: str, *, timeout: float = 5.0) -> tuple[bytes, Peer]:
    """The DER leaf and what a verifying client makes of it (Python's `getpeercert()`):
    served by a chain to one of `anchors` (PEM text), in its validity, for a TLS server. A
    chain that fails these raises `TlsBrokenError`; anchors OpenSSL cannot load,
    `ProbeError`."""
    try:
        context = _context(endpoint.algorithm, anchors)
    except (ValueError, ssl.SSLError) as exc:
        raise ProbeError(f"OpenSSL cannot load these trust anchors: {exc}") from None
    return _handshake(endpoint, context, timeout, None)


def _handshake(
    endpoint: Endpoint, context: ssl.SSLContext, timeout: float, patience: float | None
) -> tuple[bytes, Peer]:
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            if not endpoint.implicit_tls:
                _starttls(sock, endpoint)
            if patience is not None:
                sock.settimeout(min(timeout, patience))
            with context.wrap_socket(sock, server_hostname=endpoint.servername) as tls:
                der, peer = tls.getpeercert(binary_form=True), tls.getpeercert()
                with contextlib.suppress(OSError):
                    tls.sendall(b"QUIT\r\n")  # the certificate is what we came for
    except ssl.SSLError as exc:
        raise TlsBrokenError(f"{endpoint}: TLS handshake failed: {exc}") from None
    except OSError as exc:
        raise ProbeError(f"{endpoint}: {type(exc).__name__}: {exc}") from None
    if not der:
        raise TlsBrokenError(f"{endpoint}: no certificate served")
    return der, peer or {}


def fetch_all(
    endpoints: Sequence[Endpoint], *, timeout: float = 5.0, patience: float | None = None
) -> dict[Endpoint, bytes | ProbeError]:
    """`fetch` for each endpoint, a few at a time: the leaf, or the error it raised."""

    def one(endpoint: Endpoint) -> bytes | ProbeError:
        try:
            return fetch(endpoint, timeout=timeout, patience=patience)
        except ProbeError as exc:
            return exc

    if len(endpoints) < 2:
        return {e: one(e) for e in endpoints}
    with ThreadPoolExecutor(min(_AT_ONCE, len(endpoints))) as pool:
        return dict(zip(endpoints, pool.map(one, endpoints), strict=True))


def served_all(
    endpoints: Sequence[Endpoint], *, timeout: float = 5.0, patience: float | None = None
) -> dict[Endpoint, str | ProbeError]:
    """`served` for each endpoint, a few at a time."""
    return {
        e: got if isinstance(got, ProbeError) else hashlib.sha256(got).hexdigest()
        for e, got in fetch_all(endpoints, timeout=timeout, patience=patience).items()
    }


def wait_for(endpoints: Sequence[Endpoint], expected: str | None, *, timeout: float) -> None:
    """Return once every endpoint serves `expected` (any certificate, for None: configure's
    proof that TLS works). `postfix reload` is asynchronous and busy smtpd processes finish
    their session with the old certificate, so retry until the deadline; the error raised
    then is the last one seen (a `TlsBrokenError` for a 454 at the deadline)."""
    wait_for_each(dict.fromkeys(endpoints, expected), timeout=timeout)


def wait_for_each(expected: Mapping[Endpoint, str | None], *, timeout: float) -> None:
    """`wait_for`, each endpoint with its own expected certificate (a chain per algorithm
    and SNI name), all within the one deadline."""
    pending = dict(expected)
    last: ProbeError | None = None
    patience = _FIRST_PATIENCE
    for final in attempts(timeout, _RETRY_SECONDS):
        # The last round waits the whole connection timeout: a slow but healthy handshake
        # must not fail a proof because earlier rounds used up the deadline.
        seen = served_all(
            list(pending),
            timeout=max(1.0, min(5.0, timeout)),
            patience=None if final else patience,
        )
        patience *= 2
        for endpoint, got in seen.items():
            want = pending[endpoint]
            if isinstance(got, ProbeError):
                last = got
            elif want is not None and got != want:
                last = ProbeError(f"{endpoint}: serves {got[:16]}…, expected {want[:16]}…")
            else:
                del pending[endpoint]
        if not pending:
            return
        if final and last is not None:
            raise type(last)(f"after {timeout:g} s: {last}")
