"""`openssl s_client -starttls smtp` as a mail client that offers only some signature
algorithms (`-sigalgs`) and, optionally, a server name (`-servername`): which certificate
does Postfix show that client? Independent of pftls-hook's own probe (Python's ssl)."""

from __future__ import annotations

import hashlib
import re
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .net import wait_until

# TLS 1.3 needs RSA-PSS for an RSA key; TLS 1.2 clients may still offer PKCS#1 v1.5.
ECDSA_ONLY = "ECDSA+SHA256:ECDSA+SHA384"
RSA_ONLY = "RSA-PSS+SHA256:RSA+SHA256"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def served_sha256(
    host: str, port: int, sigalgs: str, *, servername: str | None = None, timeout: float = 10
) -> str:
    """SHA-256 (hex) of the leaf the server shows a client offering only `sigalgs`; raises
    RuntimeError when no certificate was shown (the handshake failed)."""
    argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{host}:{port}"]
    argv += ["-sigalgs", sigalgs, "-name", "client.test.example"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    proc = subprocess.run(
        argv, input="", capture_output=True, text=True, timeout=timeout, check=False
    )
    found = _PEM.search(proc.stdout)
    if found is None:
        raise RuntimeError(f"{' '.join(argv)}: no certificate shown:\n{proc.stderr[-800:]}")
    der = x509.load_pem_x509_certificate(found.group(0).encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def wait_for(
    host: str,
    port: int,
    sigalgs: str,
    expected: str,
    *,
    servername: str | None = None,
    timeout: float = 10,
) -> None:
    """Until that client is shown `expected` (smtpd restarts asynchronously after a reload)."""
    last = ""

    def shown() -> bool:
        nonlocal last
        try:
            last = served_sha256(host, port, sigalgs, servername=servername)
        except RuntimeError as exc:
            last = str(exc)
        return last == expected

    wait_until(
        shown,
        timeout=timeout,
        interval=0.1,
        what=f"{host}:{port} ({sigalgs}) to show {expected[:16]}",
        on_timeout=lambda: f"last seen: {last}",
    )
