"""Several Postfix instances (`--postfix-config-dir` repeated): each gets the same deploy in
its own main.cf, is reloaded and proven on its own listeners, and a failure in any rolls
every instance back. Two real private instances; the reload failure of one is injected
through the runner (as in tests/reliability/test_faults.py), everything else is real."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from pftls_hook import runner
from pftls_hook.config import Settings
from pftls_hook.deploy import Deployer
from pftls_hook.errors import DeployFailedError
from pftls_hook.postfix import Postfix
from tests.conftest import MakePostfix
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import NAME, Tool, assert_exit
from tests.support.trusted import sha, trusting_tool

HOST = "127.0.0.1"


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


class ReloadFails:
    """runner.run, except that `postfix -c DIR reload` fails for one instance (DIR)."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = str(config_dir)
        self.failed = 0

    def __call__(
        self, argv: Sequence[str], *, timeout: float = runner.DEFAULT_TIMEOUT, **kw: object
    ) -> runner.Result:
        if argv[0] == "postfix" and argv[-1] == "reload" and self.config_dir in argv:
            self.failed += 1
            return runner.Result(tuple(argv), 1, "", "postfix: fatal: injected failure")
        return runner.run(argv, timeout=timeout, **kw)  # type: ignore[arg-type]


def test_one_instance_failing_to_reload_rolls_both_back(
    tool: Tool, pair: tuple[PostfixInstance, PostfixInstance], inter: CA
) -> None:
    first = inter.issue(NAME)
    tool.lineage(first)
    assert_exit(tool.run(*both(pair), "install"), 0)
    main_cfs = [i.main_cf_bytes() for i in pair]
    installed = (tool.install_dir / f"{NAME}.pem").read_bytes()
    tool.lineage(inter.issue(NAME), 2)

    failing = ReloadFails(pair[1].config_dir)
    settings = Settings(
        live_dir=tool.live_dir,
        postfix_config_dir=pair[0].config_dir,
        postfix_config_dirs=tuple(i.config_dir for i in pair),
        install_dir=tool.install_dir,
        ca_file=tool.ca_file or Path("/nonexistent"),
        lock_file=tool.lock_file,
        probe_timeout=5,
    )
    postfixes = [Postfix(pair[0].config_dir), Postfix(pair[1].config_dir, run=failing)]
    with pytest.raises(DeployFailedError):
        Deployer(settings, postfixes=postfixes).deploy(NAME)

    assert failing.failed >= 1
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
