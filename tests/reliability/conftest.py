"""Fixtures shared by the reliability cases: the test CA, and a pftls-hook bound to a
private Postfix (tests/conftest.py's `postfix`) through tests/support/tool.py's `Tool`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pki import CA
from tests.support.postfix import PostfixInstance
from tests.support.tool import Tool

# A wrong certificate must be noticed quickly: the probe retries until this bound.
PROBE_TIMEOUT = "2"


@pytest.fixture(scope="module")
def root() -> CA:
    return CA.root("pftls reliability root")


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    return root.intermediate("pftls reliability intermediate")


def make_tool(postfix: PostfixInstance, base: Path, root: CA) -> Tool:
    """A Tool whose certbot dir, install dir and lock live under `base`."""
    ca_file = base / "test-root.pem"
    ca_file.write_bytes(root.cert_pem)
    return Tool(postfix, base, ca_file, probe_timeout=PROBE_TIMEOUT)


@pytest.fixture
def tool(postfix: PostfixInstance, tmp_path: Path, root: CA) -> Tool:
    """A running private Postfix serving its initial certificate; no lineage yet."""
    return make_tool(postfix, tmp_path, root)


@pytest.fixture(scope="module")
def served(
    postfix_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    root: CA,
    inter: CA,
) -> Iterator[Tool]:
    """One private Postfix for a whole module, serving version 1 that pftls-hook installed
    (tests/reliability/serving.py): for cases whose every run must leave it as it was."""
    from tests.reliability.serving import serving

    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with serving(postfix_root, base, root, inter) as tool:
        yield tool
