"""Fixtures that run real programs: a private Postfix, pebble and certbot.

No fixture touches the machine's own Postfix (/etc/postfix/main.cf, the system
queue). Tests run one at a time (pebble's http01 port is shared).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.certbot import Certbot
from tests.support.net import free_port as _free_port
from tests.support.pebble import Pebble
from tests.support.postfix import PostfixInstance

DEFAULT_HOSTNAME = "mail.test.example"


POSTFIX_ROOT_PREFIX = "pftls-postfix-"
# Roots of failed sessions are kept for their logs; after a day they go.
STALE_AFTER_SECONDS = 24 * 3600


def _remove_stale_postfix_roots() -> None:
    cutoff = time.time() - STALE_AFTER_SECONDS
    for old in Path(tempfile.gettempdir()).glob(f"{POSTFIX_ROOT_PREFIX}*"):
        with contextlib.suppress(OSError):
            if old.is_dir() and not old.is_symlink() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)


class MakePostfix(Protocol):
    def __call__(
        self, *, hostname: str = DEFAULT_HOSTNAME, start: bool = True
    ) -> PostfixInstance: ...


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 (never the same one twice)."""
    return _free_port


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One pebble ACME server for the whole session (a new root CA each session)."""
    server = Pebble(tmp_path_factory.mktemp("pebble"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postfix_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where Postfix instances live: outside pytest's tmp tree, on purpose.

    Postfix's unprivileged processes (tlsmgr, master's lock as the postfix
    user) need every ancestor of the instance to be traversable. pytest's
    /tmp/pytest-of-root is 0700, and every pytest session that starts resets
    it to 0700, which breaks instances of a session already running (tlsmgr
    dies with "cannot open PRNG exchange file: Permission denied"). So the
    instances get their own 0711 directory; each test's tmp_path holds a
    symlink to its instance. Kept after a failed session, for the logs.
    """
    _remove_stale_postfix_roots()
    root = Path(tempfile.mkdtemp(prefix=POSTFIX_ROOT_PREFIX))
    root.chmod(0o711)
    yield root
    if request.session.testsfailed == 0:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_postfix(
    postfix_root: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MakePostfix]:
    """Factory for private Postfix instances; all are stopped at teardown, even on failure.

    Each call: a new base dir and free port, create(), and start() unless
    start=False. The n-th instance is linked from tmp_path as postfix, postfix-1, ...
    """
    instances: list[PostfixInstance] = []
    # Short names: Postfix's postlog socket path must stay under 108 bytes.
    # The symlink in tmp_path tells which test an instance belongs to.
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:16] + "-"

    def make(*, hostname: str = DEFAULT_HOSTNAME, start: bool = True) -> PostfixInstance:
        base = Path(tempfile.mkdtemp(prefix=prefix, dir=postfix_root))
        link = tmp_path / ("postfix" if not instances else f"postfix-{len(instances)}")
        link.symlink_to(base, target_is_directory=True)
        instance = PostfixInstance(base, _free_port(), hostname)
        instances.append(instance)
        instance.create()
        if start:
            instance.start()
        return instance

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for instance in instances:
            # Also after a failed start: master may be up even if the port never opened.
            try:
                instance.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def postfix(make_postfix: MakePostfix) -> PostfixInstance:
    """A started private Postfix on 127.0.0.1:<free port>, serving its initial cert."""
    return make_postfix()


@pytest.fixture
def certbot(tmp_path: Path, pebble: Pebble) -> Certbot:
    """certbot with its own config, work and logs dirs in tmp_path, using the session pebble."""
    return Certbot(tmp_path / "certbot", pebble)
