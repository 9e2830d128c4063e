"""Several Postfix instances (`--postfix-config-dir` repeated): each gets the same deploy in
its own main.cf, is reloaded and proven on its own listeners, and a failure in any rolls
every instance back. Two real private instances; the failing reload of one is a real
`postfix reload` failing (its queue broken under it), nothing in-process is replaced."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import MakePostfix
from tests.support.net import wait_until
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import NAME, Tool, assert_exit
from tests.support.trusted import sha, trusting_tool

HOST = "127.0.0.1"
EXIT_ROLLED_BACK = 4


@pytest.fixture(scope="module")
def inter() -> CA:
    return CA.root("pftls instances-test root").intermediate("pftls instances-test inter")


@pytest.fixture
def pair(make_postfix: MakePostfix) -> tuple[PostfixInstance, PostfixInstance]:
    return make_postfix(), make_postfix()


@pytest.fixture
def tool(pair: tuple[PostfixInstance, PostfixInstance], tmp_path: Path, inter: CA) -> Tool:
    return trusting_tool(pair[0], tmp_path, inter)


def both(pair: Sequence[PostfixInstance]) -> list[str]:
    return ["--postfix-config-dir", str(pair[1].config_dir)]  # the Tool names the first


def test_each_instance_gets_the_deploy_and_its_renewals(
    tool: Tool, pair: tuple[PostfixInstance, PostfixInstance], inter: CA
) -> None:
    first = inter.issue(NAME)
    tool.lineage(first)

    result = tool.run(*both(pair), "install")

    assert_exit(result, 0)
    installed = str(tool.install_dir / f"{NAME}.pem")
    for instance in pair:
        assert instance.postconf("-h", "smtpd_tls_cert_file").strip() == installed
        assert served_sha256(HOST, instance.port) == sha(first)
    # Each instance was proven on its own listener.
    assert all(f"{HOST}:{i.port}" in result.stderr for i in pair), result.stderr

    renewed = inter.issue(NAME)
    tool.lineage(renewed, 2)
    hook = tool.run(*both(pair), "deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / NAME)})
    assert_exit(hook, 0)
    for instance in pair:
        assert served_sha256(HOST, instance.port) == sha(renewed)


@contextmanager
def reload_fails(instance: PostfixInstance) -> Iterator[None]:
    """`postfix reload` of this instance really fails while inside: its `active` queue
    directory is a file, so postsuper (which reload runs) dies with "open directory active:
    Not a directory". master keeps running and serving; postconf still reads the state."""
    active = instance.queue_dir / "active"
    saved = active.with_name("active.saved")
    active.rename(saved)
    active.write_bytes(b"")
    try:
        yield
    finally:
        active.unlink()
        saved.rename(active)


def test_one_instance_failing_to_reload_rolls_both_back(
    tool: Tool, pair: tuple[PostfixInstance, PostfixInstance], inter: CA
) -> None:
    first = inter.issue(NAME)
    tool.lineage(first)
    assert_exit(tool.run(*both(pair), "install"), 0)
    main_cfs = [i.main_cf_bytes() for i in pair]
    installed = (tool.install_dir / f"{NAME}.pem").read_bytes()
    # postlogd writes the maillog asynchronously: the install's reload line first.
    wait_until(lambda: pair[0].reloads() >= 1, timeout=10, what="the install's reload logged")
    reloaded = pair[0].reloads()
    tool.lineage(inter.issue(NAME), 2)

    with reload_fails(pair[1]):
        result = tool.run(*both(pair), "install")

    assert_exit(result, EXIT_ROLLED_BACK)
    assert "open directory active: Not a directory; rolling back" in result.stderr
    # The first instance had been reloaded onto the renewal; the rollback reloaded it back.
    wait_until(lambda: pair[0].reloads() >= reloaded + 2, timeout=10, what="both reloads")
    assert pair[0].reloads() == reloaded + 2, pair[0].log_text()
    assert (tool.install_dir / f"{NAME}.pem").read_bytes() == installed
    for instance, main_cf in zip(pair, main_cfs, strict=True):
        assert instance.main_cf_bytes() == main_cf
        assert served_sha256(HOST, instance.port) == sha(first)


def test_dry_run_shows_each_instance_s_change(
    tool: Tool, pair: tuple[PostfixInstance, PostfixInstance], inter: CA
) -> None:
    tool.lineage(inter.issue(NAME))
    main_cfs = [i.main_cf_bytes() for i in pair]

    result = tool.run(*both(pair), "--dry-run", "install")

    assert_exit(result, 0)
    for instance in pair:
        assert f"would run postconf -c {instance.config_dir} -e 'smtpd_tls_cert_file" in (
            result.stdout
        )
    assert [i.main_cf_bytes() for i in pair] == main_cfs
