"""Case 7 of issue 5: the inputs pftls-hook trusts, and how far.

- certbot's RENEWED_LINEAGE: only `<live dir>/<name>`, absolute, no `..`, no link leading
  elsewhere (real CLI, real Postfix: refused with exit 3 and nothing changed);
- the config file decides what root deploys: owned by root, not writable by group or others,
  else exit 2 before anything runs;
- the install dir, where the key goes: refused when a symlink, group-writable or not owned
  by root (exit 6, nothing written in it, main.cf unchanged);
- every subprocess: an argument list (no shell), a fixed PATH and environment, a timeout.
  Statically, over the package's syntax trees; and at run time, through runner.run itself.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pftls_hook
from pftls_hook import runner
from pftls_hook.errors import CommandError
from tests.reliability.serving import run_bounded
from tests.support import lineage as fake
from tests.support.scorecard import Scorecard
from tests.support.tool import NAME, Tool, assert_exit

EXIT_USAGE, EXIT_REFUSED, EXIT_CANNOT = 2, 3, 6
PACKAGE = Path(pftls_hook.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))  # sub-packages (daemon, setup) included
NOBODY = 65534


@pytest.fixture(scope="module")
def card() -> Iterator[Scorecard]:
    card = Scorecard("trusted", "Inputs it trusts")
    yield card
    passed, total = card.count()
    card.record(
        f"{passed}/{total} checks hold: RENEWED_LINEAGE contained, config file owner and "
        "mode, install dir, every subprocess an argument list with a fixed PATH and a timeout",
        passed=passed,
        total=total,
    )


def unchanged(tool: Tool) -> Callable[[], None]:
    """An assertion that main.cf and the install dir are as they are now."""
    main_cf = tool.postfix.main_cf_bytes()
    files = {p.name: p.read_bytes() for p in tool.install_dir.iterdir()}

    def check() -> None:
        assert tool.postfix.main_cf_bytes() == main_cf, "main.cf changed"
        assert {p.name: p.read_bytes() for p in tool.install_dir.iterdir()} == files

    return check


# ------------------------------------------------------------------------ RENEWED_LINEAGE


def _relative(tool: Tool) -> str:
    # A relative path that leads to the very lineage from our working directory: still no.
    return os.path.relpath(tool.live_dir / NAME)


def _climbing(tool: Tool) -> str:
    return f"{tool.live_dir}/../live/{NAME}"


def _outside(tool: Tool) -> str:
    # A complete lineage with the served certificate, in another certbot config dir.
    stray = tool.base / "stray-letsencrypt"
    if not stray.exists():
        shutil.copytree(tool.config_dir, stray, symlinks=True)
    return str(fake.live_dir(stray, NAME))


def _symlinked_lineage(tool: Tool) -> str:
    # live/<alias> -> the stray lineage: inside the live dir by name, elsewhere in fact.
    alias = tool.live_dir / "alias.test.example"
    if not alias.is_symlink():
        alias.symlink_to(_outside(tool))
    return str(alias)


def _live_dir_itself(tool: Tool) -> str:
    return str(tool.live_dir)


def _in_a_lineage(tool: Tool) -> str:
    return str(tool.live_dir / NAME / "cert.pem")


REJECTED_LINEAGES: dict[str, Callable[[Tool], str]] = {
    "relative path": _relative,
    "`..` in the path": _climbing,
    "a lineage outside the certbot dir": _outside,
    "a symlinked lineage dir pointing elsewhere": _symlinked_lineage,
    "the live dir itself": _live_dir_itself,
    "a file inside a lineage": _in_a_lineage,
}


@pytest.mark.slow
@pytest.mark.parametrize("what", list(REJECTED_LINEAGES))
def test_deploy_hook_refuses_renewed_lineage(what: str, served: Tool, card: Scorecard) -> None:
    value = REJECTED_LINEAGES[what](served)
    check = unchanged(served)
    with card.attempt(f"RENEWED_LINEAGE, {what}") as notes:
        result = run_bounded(served, "deploy-hook", env={"RENEWED_LINEAGE": value})
        assert_exit(result, EXIT_REFUSED)
        assert "RENEWED_LINEAGE" in result.stderr or "symlink" in result.stderr, result.stderr
        check()
        notes.append(f"exit 3: {result.stderr.splitlines()[-1].removeprefix('pftls-hook: ')}")


@pytest.mark.slow
def test_deploy_hook_accepts_the_lineage_under_the_live_dir(served: Tool, card: Scorecard) -> None:
    # The positive control, also reached through a symlink to the live dir itself (a config
    # dir moved to another disk and linked back is common): the same lineage, a no-op.
    link = served.base / "live-link"
    if not link.is_symlink():
        link.symlink_to(served.live_dir)
    check = unchanged(served)
    for value in (str(served.live_dir / NAME), str(link / NAME)):
        with card.attempt(f"RENEWED_LINEAGE {value.removeprefix(str(served.base))} accepted"):
            result = run_bounded(served, "deploy-hook", env={"RENEWED_LINEAGE": value})
            assert_exit(result, 0)
            assert "nothing to do" in result.stderr, result.stderr
            check()


# ------------------------------------------------------------------------- config file


def _config(tool: Tool, mode: int, owner: int = 0) -> Path:
    path = tool.base / f"config-{mode:o}-{owner}.toml"
    path.write_text(f'hostname = ["{NAME}"]\n')
    path.chmod(mode)
    os.chown(path, owner, owner)
    return path


CONFIGS: dict[str, tuple[int, int, str]] = {
    "group-writable": (0o664, 0, "is writable by group or others"),
    "world-writable": (0o646, 0, "is writable by group or others"),
    "owned by another uid": (0o644, NOBODY, "is owned by uid 65534, not root"),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--config", "PFTLS_HOOK_CONFIG"])
@pytest.mark.parametrize("what", list(CONFIGS))
def test_unsafe_config_file_is_refused(what: str, how: str, served: Tool, card: Scorecard) -> None:
    mode, owner, reason = CONFIGS[what]
    path = _config(served, mode, owner)
    check = unchanged(served)
    with card.attempt(f"config file {what}, by {how}") as notes:
        if how == "--config":
            result = run_bounded(served, "--config", str(path), "install")
        else:
            result = run_bounded(served, "install", env={"PFTLS_HOOK_CONFIG": str(path)})
        assert_exit(result, EXIT_USAGE)
        assert f"{path}: config file {reason}" in result.stderr, result.stderr
        check()
        notes.append("exit 2")


@pytest.mark.slow
def test_config_file_through_a_link_is_judged_by_its_target(served: Tool, card: Scorecard) -> None:
    link = served.base / "linked-config.toml"
    link.unlink(missing_ok=True)
    link.symlink_to(_config(served, 0o666))
    with card.attempt("config file: a link to a world-writable file"):
        assert_exit(run_bounded(served, "--config", str(link), "install"), EXIT_USAGE)
    with card.attempt("config file root-owned 0644 accepted"):
        result = run_bounded(served, "--config", str(_config(served, 0o644)), "verify")
        assert_exit(result, 0)


# ------------------------------------------------------------------------- install dir


def _symlinked_dir(tool: Tool) -> Path:
    link = tool.base / "tls-link"
    if not link.is_symlink():
        link.symlink_to(tool.install_dir)
    return link


def _group_writable_dir(tool: Tool) -> Path:
    path = tool.base / "tls-group-writable"
    path.mkdir(exist_ok=True)
    path.chmod(0o775)
    return path


def _foreign_dir(tool: Tool) -> Path:
    path = tool.base / "tls-nobody"
    path.mkdir(exist_ok=True)
    path.chmod(0o700)
    os.chown(path, NOBODY, NOBODY)
    return path


INSTALL_DIRS: dict[str, tuple[Callable[[Tool], Path], str]] = {
    "a symlink (to the real one)": (_symlinked_dir, "is a symlink"),
    "group-writable": (_group_writable_dir, "is writable by group or others"),
    "owned by another uid": (_foreign_dir, "is owned by uid 65534, not root"),
}


@pytest.mark.slow
@pytest.mark.parametrize("what", list(INSTALL_DIRS))
def test_unsafe_install_dir_is_refused(what: str, served: Tool, card: Scorecard) -> None:
    make, reason = INSTALL_DIRS[what]
    path = make(served)
    before = sorted(p.name for p in path.iterdir())
    check = unchanged(served)
    with card.attempt(f"install dir {what}") as notes:
        result = run_bounded(served, "--install-dir", str(path), "install")
        assert_exit(result, EXIT_CANNOT)
        assert f"{path}: install dir {reason}" in result.stderr, result.stderr
        assert sorted(p.name for p in path.iterdir()) == before, "files written in it"
        check()
        notes.append("exit 6")


# --------------------------------------------------------------- subprocesses: statically

# Ways to start a process other than runner.run: none may appear in the package.
FORBIDDEN_CALLS = {
    ("os", name)
    for name in (
        "system", "popen", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
        "spawnvp", "spawnvpe", "execl", "execle", "execlp", "execlpe", "execv", "execve",
        "execvp", "execvpe", "posix_spawn", "posix_spawnp", "fork", "forkpty",
    )
} | {
    ("pty", "spawn"), ("asyncio", "create_subprocess_shell"), ("asyncio", "create_subprocess_exec")
}  # fmt: skip
PROCESS_MODULES = {"subprocess", "pty", "multiprocessing", "commands", "popen2"}


def _trees() -> Iterator[tuple[Path, ast.AST]]:
    for path in SOURCES:
        yield path, ast.parse(path.read_text(), str(path))


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _dotted(node: ast.expr) -> tuple[str, ...]:
    """`a.b.c` as ("a", "b", "c"); () for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return (*head, node.attr) if head else ()
    return ()


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"


def test_only_runner_imports_subprocess(card: Scorecard) -> None:
    with card.attempt("`subprocess` (or pty, multiprocessing) imported by runner.py only") as notes:
        found = []
        for path, tree in _trees():
            for node in ast.walk(tree):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n.split(".")[0] in PROCESS_MODULES for n in names):
                    found.append((str(path.relative_to(PACKAGE)), _where(path, node)))
        assert found and {name for name, _ in found} == {"runner.py"}, found
        packages = {p.parent for p in SOURCES}
        notes.append(f"{len(SOURCES)} modules in {len(packages)} packages read")


def test_no_shell_and_no_other_way_to_start_a_process(card: Scorecard) -> None:
    with card.attempt("no shell=True, os.system, os.popen, exec*, spawn*, fork"):
        offences = []
        for path, tree in _trees():
            for call in _calls(tree):
                if any(k.arg == "shell" for k in call.keywords):
                    offences.append(f"{_where(path, call)} shell=")
                if _dotted(call.func)[-2:] in FORBIDDEN_CALLS:
                    offences.append(f"{_where(path, call)} {'.'.join(_dotted(call.func))}")
        assert offences == []


def _door_calls() -> Iterator[tuple[Path, ast.Call]]:
    """Calls of the one door: runner.run(...) and an adapter's injected self._run(...)."""
    for path, tree in _trees():
        for call in _calls(tree):
            if _dotted(call.func) in {("runner", "run"), ("self", "_run")}:
                yield path, call


def test_every_door_call_has_an_argument_list_and_a_timeout(card: Scorecard) -> None:
    with card.attempt("every runner.run / self._run call: an argument list and timeout=") as n:
        calls = list(_door_calls())
        assert len(calls) >= 4, "the door calls were not found: has the door moved?"
        for path, call in calls:
            assert any(k.arg == "timeout" for k in call.keywords), _where(path, call)
            argv = call.args[0] if call.args else None
            assert isinstance(argv, ast.List | ast.Tuple | ast.Name), (
                f"{_where(path, call)}: the command is not an argument list"
            )
        n.append(f"{len(calls)} calls in {len({p for p, _ in calls})} modules")


def test_runner_passes_env_and_timeout_to_every_subprocess_call(card: Scorecard) -> None:
    with card.attempt("runner.py: env= and timeout= on every subprocess call"):
        tree = ast.parse((PACKAGE / "runner.py").read_text())
        spawns = [
            c
            for c in _calls(tree)
            if _dotted(c.func)[:1] == ("subprocess",) and _dotted(c.func)[-1][0].islower()
        ]
        assert spawns
        for call in spawns:
            keywords = {k.arg for k in call.keywords}
            assert {"env", "timeout"} <= keywords, ast.unparse(call)


# -------------------------------------------------------------- subprocesses: at run time

PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
HOSTILE_ENV = {
    "PATH": "/tmp/evil:/usr/bin",
    "LD_PRELOAD": "/tmp/evil.so",
    "PYTHONPATH": "/tmp/evil",
    "MAIL_CONFIG": "/tmp/evil-postfix",
    "RENEWED_LINEAGE": "/tmp/evil",
    "IFS": "x",
    "REQUESTS_CA_BUNDLE": "/tmp/ca.pem",
}


def test_children_get_exactly_the_fixed_environment(
    monkeypatch: pytest.MonkeyPatch, card: Scorecard
) -> None:
    for name, value in HOSTILE_ENV.items():
        monkeypatch.setenv(name, value)
    fixed = {"PATH": runner.FIXED_PATH, "LANG": "C", "LC_ALL": "C"}
    with card.attempt("a child's environment is exactly the fixed one"):
        child = json.loads(runner.run([sys.executable, "-c", PRINT_ENV], timeout=30).stdout)
        assert child == fixed
    with card.attempt("keep_env passes the named variable, and only it"):
        result = runner.run(
            [sys.executable, "-c", PRINT_ENV], timeout=30, keep_env=("REQUESTS_CA_BUNDLE",)
        )
        assert json.loads(result.stdout) == fixed | {"REQUESTS_CA_BUNDLE": "/tmp/ca.pem"}


def test_arguments_reach_the_child_verbatim_never_through_a_shell(card: Scorecard) -> None:
    with card.attempt("arguments are not interpreted by a shell"):
        words = ["$HOME", "; id", "`id`", "$(id)", "a b", "*", "|| true"]
        result = runner.run(["/bin/echo", *words], timeout=30)
        assert result.stdout == " ".join(words) + "\n"


def test_a_hung_child_is_killed_at_its_timeout(card: Scorecard) -> None:
    # certbot gives its hook no timeout: a child that hangs must not hang the hook.
    with card.attempt("timeout: a hung child stopped") as notes:
        started = time.monotonic()
        with pytest.raises(CommandError, match=r"timed out after 0\.5 s"):
            runner.run(["/bin/sleep", "30"], timeout=0.5)
        took = time.monotonic() - started
        assert took < 5, f"took {took:.1f} s"
        notes.append(f"CommandError after {took:.1f} s")


def test_a_grandchild_holding_the_output_is_not_waited_for(card: Scorecard) -> None:
    # `postfix reload` leaves `postsuper &` running with its output: the child's result is
    # returned once the child exits, while the grandchild still runs.
    with card.attempt("a grandchild holding the output is not waited for") as notes:
        result = runner.run(["/bin/sh", "-c", "/bin/sleep 30 & echo $!"], timeout=20)
        grandchild = int(result.stdout)
        try:
            os.kill(grandchild, 0)  # still running: run() did not wait for it
        finally:
            os.kill(grandchild, signal.SIGKILL)
        assert result.ok, result
        notes.append(f"exit {result.returncode} returned with the grandchild still running")


def test_cli_children_share_the_fixed_path(served: Tool, card: Scorecard) -> None:
    # End to end: a PATH with a fake `postconf` first must not change which postconf runs.
    evil = served.base / "evil-bin"
    evil.mkdir(exist_ok=True)
    fake_postconf = evil / "postconf"
    fake_postconf.write_text("#!/bin/sh\necho pwned > /dev/stderr\nexit 1\n")
    fake_postconf.chmod(0o755)
    with card.attempt("a hostile PATH does not pick the postconf that runs"):
        env = {"PATH": f"{evil}:{os.environ.get('PATH', '')}"}
        result = run_bounded(served, "verify", env=env)
        assert_exit(result, 0)
        assert "pwned" not in result.stderr
