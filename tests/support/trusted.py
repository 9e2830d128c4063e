"""The rig of the several-certificates tests (test_chains, test_sni, test_instances): a
`Tool` for one instance that trusts a test CA's root, and leaf fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .certbot import Certbot
from .pki import CA, Leaf
from .postfix import PostfixInstance
from .tool import Tool


def trusting_tool(postfix: PostfixInstance, base: Path, inter: CA) -> Tool:
    """A Tool for `postfix` whose --ca-file is the root above `inter`."""
    assert inter.parent is not None, "an intermediate: its root is the trust anchor"
    ca_file = base / "root.pem"
    ca_file.write_bytes(inter.parent.cert_pem)
    return Tool(postfix, base, ca_file)


def sha(leaf: Leaf) -> str:
    return hashlib.sha256(leaf.cert_der).hexdigest()


def live_sha(certbot: Certbot, name: str) -> str:
    """The fingerprint of the leaf certbot's lineage `name` holds now."""
    cert = x509.load_pem_x509_certificate((certbot.lineage(name) / "cert.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
