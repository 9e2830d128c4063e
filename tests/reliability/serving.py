"""One private Postfix for a whole test module, serving a certificate pftls-hook installed.

For the cases that run the CLI many times against a state that every run must leave as it
found it (hostile input, trusted inputs): one instance, set up once, instead of one per run.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.reliability.conftest import make_tool
from tests.support.deployed import first_deploy, start, wait_serves
from tests.support.net import free_port
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance
from tests.support.tool import NAME, Tool

# certbot waits for its hook with no timeout: a run that takes longer than this is a hang.
RUN_TIMEOUT = 20.0


@contextmanager
def serving(postfix_root: Path, base: Path, root: CA, inter: CA) -> Iterator[Tool]:
    """A started Postfix serving version 1 of lineage NAME, installed by pftls-hook; its
    certbot dir, install dir and lock under `base`. Stopped on the way out."""
    prefix = f"{base.name[:12]}-"  # short: Postfix's socket paths stay under 108 bytes
    postfix = PostfixInstance(Path(tempfile.mkdtemp(prefix=prefix, dir=postfix_root)), free_port())
    try:
        postfix.create()
        postfix.start()
        tool = make_tool(postfix, base, root)
        first = inter.issue(NAME)
        tool.lineage(first)
        first_deploy(tool)
        wait_serves(tool, first)
        yield tool
    finally:
        postfix.stop()


def run_bounded(
    tool: Tool, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`Tool.run`, failing the test (not hanging it) past RUN_TIMEOUT."""
    proc = start(tool, *args, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"no answer within {RUN_TIMEOUT:g} s: {' '.join(args)} hangs")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


__all__ = ["RUN_TIMEOUT", "run_bounded", "serving"]
