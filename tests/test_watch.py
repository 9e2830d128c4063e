"""The `watch` daemon against a real private Postfix: what a mail client sees after certbot
changes a lineage, what systemd hears on its notification socket, how it stops and reloads.

The daemon runs as systemd runs it: a child process (`python -m pftls_hook ... watch`) with
`$NOTIFY_SOCKET` pointing at a socket the test binds. Lineages are fake certbot lineages
(tests/support/lineage.py) issued by an in-memory test CA, except in the one slow test,
where real certbot renews against pebble. Every path is under the test's own directories:
nothing touches /etc.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from watchdog.events import FileCreatedEvent, FileDeletedEvent, FileMovedEvent

from pftls_hook.daemon.notify import Notifier
from pftls_hook.daemon.watch import Inbox, LineageEvents, OverflowAlarm
from tests.support import lineage as fake
from tests.support.certbot import Certbot
from tests.support.daemon import NotifySocket, WatchProcess
from tests.support.net import LOOPBACK
from tests.support.pebble import Pebble
from tests.support.pki import CA, Leaf
from tests.support.postfix import PostfixInstance, served_sha256, wait_for_served_sha256
from tests.support.tool import Tool

HOST = "mail.test.example"  # the private Postfix's myhostname
NAME = HOST  # certbot names a lineage after its first domain
DEBOUNCE = 0.2
# Generous: a deploy with a main.cf write takes ~2 s (Postfix waits for a "hot" main.cf).
DEPLOYED = 15.0


def sha256_of(leaf: Leaf) -> str:
    return hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass
class World:
    """A private Postfix, a certbot config dir, and the daemon's options and environment."""

    postfix: PostfixInstance
    tmp: Path
    inter: CA
    notify: NotifySocket
    config_file: Path
    version: int = 0
    daemons: list[WatchProcess] = field(default_factory=list)

    @property
    def certbot_dir(self) -> Path:
        return self.tmp / "letsencrypt"

    @property
    def live_dir(self) -> Path:
        return self.certbot_dir / "live"

    @property
    def lock_file(self) -> Path:
        return self.tmp / "run" / "deploy.lock"

    def options(self, *extra: str) -> list[str]:
        tool = Tool(self.postfix, self.tmp, self.tmp / "ca.pem", config_file=self.config_file)
        return [*tool.options(), "--debounce", str(DEBOUNCE), *extra]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "NOTIFY_SOCKET": self.notify.address,
            **extra,
        }

    def daemon(self, *extra: str, **env: str) -> WatchProcess:
        """Start the daemon and wait for READY=1 (sent after its first reconcile)."""
        start = len(self.notify.drain())
        process = WatchProcess(
            self.options(*extra), self.env(**env), self.tmp / "daemon.log", self.tmp
        ).start()
        self.daemons.append(process)
        try:
            self.notify.wait_for(lambda m: m.get("READY") == "1", timeout=DEPLOYED, start=start)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\ndaemon output:\n{process.output_text()}") from None
        return process

    def issue(self, name: str = HOST) -> Leaf:
        return self.inter.issue(name)

    def new_lineage(self, leaf: Leaf | None = None, name: str = NAME) -> Leaf:
        leaf = leaf or self.issue()
        fake.new_lineage(
            self.certbot_dir,
            name,
            cert_pem=leaf.cert_pem,
            chain_pem=leaf.chain_pem,
            privkey_pem=leaf.key_pem(),
        )
        self.version = 1
        return leaf

    def write_next(self, leaf: Leaf | None = None, name: str = NAME) -> tuple[int, Leaf]:
        """Archive files of the next version (certbot's save_successor), links untouched."""
        leaf = leaf or self.issue()
        self.version += 1
        fake.write_version(
            self.certbot_dir,
            name,
            self.version,
            cert_pem=leaf.cert_pem,
            chain_pem=leaf.chain_pem,
            privkey_pem=leaf.key_pem(),
        )
        return self.version, leaf

    def renew(self, leaf: Leaf | None = None, name: str = NAME) -> Leaf:
        """A whole renewal as certbot makes it: previous_* links, the four links, cleanup."""
        n, leaf = self.write_next(leaf, name)
        fake.add_previous_links(self.certbot_dir, name)
        fake.point_links(self.certbot_dir, name, n)
        fake.remove_previous_links(self.certbot_dir, name)
        return leaf

    def served(self) -> str:
        return served_sha256(LOOPBACK, self.postfix.port)

    def wait_served(self, leaf: Leaf, timeout: float = DEPLOYED) -> None:
        try:
            wait_for_served_sha256(LOOPBACK, self.postfix.port, sha256_of(leaf), timeout=timeout)
        except TimeoutError as exc:
            output = "\n".join(d.output_text() for d in self.daemons[-1:])
            raise TimeoutError(f"{exc}\ndaemon output:\n{output}") from None

    def deploy_hook(self, name: str = NAME) -> subprocess.CompletedProcess[str]:
        """What certbot runs after a renewal: `pftls-hook deploy-hook` with RENEWED_LINEAGE."""
        env = {k: v for k, v in self.env().items() if k != "NOTIFY_SOCKET"}
        env["RENEWED_LINEAGE"] = str(self.live_dir / name)
        env["RENEWED_DOMAINS"] = HOST
        return subprocess.run(
            [sys.executable, "-m", "pftls_hook", *self.options(), "deploy-hook"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def status_json(self) -> dict[str, object]:
        proc = subprocess.run(
            [sys.executable, "-m", "pftls_hook", *self.options(), "status", "--json"],
            env={k: v for k, v in self.env().items() if k != "NOTIFY_SOCKET"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report: dict[str, object] = json.loads(proc.stdout)
        return report


@pytest.fixture
def world(postfix: PostfixInstance, tmp_path: Path) -> Iterator[World]:
    root = CA.root()
    (tmp_path / "ca.pem").write_bytes(root.cert_pem)
    config_file = tmp_path / "config.toml"
    config_file.write_text("# pftls-hook test config: every setting comes from flags\n")
    config_file.chmod(0o644)
    notify = NotifySocket()
    w = World(postfix, tmp_path, root.intermediate(), notify, config_file)
    try:
        yield w
    finally:
        for daemon in w.daemons:
            daemon.kill()
        notify.close()


def status_after(world: World, start: int, needle: str, timeout: float = DEPLOYED) -> str:
    """The first STATUS= from message `start` on that mentions `needle`."""
    message = world.notify.wait_for(
        lambda m: needle in m.get("STATUS"), timeout=timeout, start=start
    )
    return message["STATUS"]


# ------------------------------------------------------------------ renewals reach Postfix


def test_daemon_deploys_at_start_and_then_each_renewal(world: World) -> None:
    first = world.new_lineage()
    world.daemon()
    # READY=1 comes after the first reconcile: the certificate is already served.
    assert world.served() == sha256_of(first)
    for _ in range(2):
        before = world.postfix.reloads()
        start = len(world.notify.drain())
        leaf = world.renew()
        world.wait_served(leaf)
        status_after(world, start, sha256_of(leaf)[:16])
        assert world.postfix.reloads() == before + 1


def test_renewal_made_while_stopped_is_deployed_at_start(world: World) -> None:
    world.new_lineage()
    daemon = world.daemon()
    code, _ = daemon.stop()
    assert code == 0
    renewed = world.renew()
    world.daemon()
    assert world.served() == sha256_of(renewed)


def test_repointed_link_by_rename_is_seen(world: World) -> None:
    """`ln -sfn` style: a temp link renamed over the old one arrives as a move whose
    dest_path is the link (no delete event)."""
    world.new_lineage()
    world.daemon()
    n, leaf = world.write_next()
    fake.point_links(world.certbot_dir, NAME, n, atomic=True)
    world.wait_served(leaf)


@pytest.mark.parametrize("half", ["links-on-two-versions", "previous-links-left"])
def test_half_renewed_lineage_waits_until_settled(world: World, half: str) -> None:
    first = world.new_lineage()
    # A short settle_timeout: even a lineage half-renewed for longer than that is not
    # deployed while Postfix uses it (it is kept, and reported, until certbot finishes).
    daemon = world.daemon(PFTLS_HOOK_SETTLE_TIMEOUT="0.5")
    before = world.postfix.reloads()
    n, leaf = world.write_next()
    if half == "links-on-two-versions":
        fake.point_links(world.certbot_dir, NAME, {"cert": n})  # new cert, old key
    else:
        fake.add_previous_links(world.certbot_dir, NAME)
        fake.point_links(world.certbot_dir, NAME, n)  # certbot stopped before the cleanup
    start = len(world.notify.drain())
    status_after(world, start, "not settled")
    time.sleep(1.5)  # well past the debounce and the settle timeout
    assert world.served() == sha256_of(first)
    assert world.postfix.reloads() == before
    assert daemon.alive()
    # A reload meanwhile must still end in READY=1, although the lineage stays unsettled.
    start = len(world.notify.drain())
    daemon.signal(signal.SIGHUP)
    world.notify.wait_for(lambda m: m.get("READY") == "1", timeout=5, start=start)
    assert world.served() == sha256_of(first)

    if half == "links-on-two-versions":
        fake.point_links(world.certbot_dir, NAME, n)
    else:
        fake.remove_previous_links(world.certbot_dir, NAME)
    world.wait_served(leaf)
    assert world.postfix.reloads() == before + 1


def test_deploy_hook_and_daemon_together_reload_once_per_renewal(world: World) -> None:
    world.new_lineage()
    world.daemon()
    for _ in range(3):
        before = world.postfix.reloads()
        start = len(world.notify.drain())
        leaf = world.renew()
        # certbot runs its deploy hook right after the links are final, while the daemon
        # sees the same change: whichever deploys second finds it installed and served.
        hook = world.deploy_hook()
        assert hook.returncode == 0, hook.stderr
        assert world.served() == sha256_of(leaf)
        # Wait until the daemon has dealt with this renewal too (deployed or unchanged).
        status_after(world, start, sha256_of(leaf)[:16])
        assert world.postfix.reloads() == before + 1, world.postfix.log_text()


def test_status_keeps_the_last_deploy_through_later_no_op_events(world: World) -> None:
    """A renewal makes several events; those after the deploy find nothing to do. systemd's
    status and the state file must still say what was deployed, not "unchanged"."""
    world.new_lineage()
    daemon = world.daemon()
    start = len(world.notify.drain())
    leaf = world.renew()
    world.wait_served(leaf)
    deployed = status_after(world, start, f"{NAME}: deployed ({sha256_of(leaf)[:16]}")
    # A reconcile (SIGHUP) deploys everything selected again: a no-op, one probe.
    start = len(world.notify.drain())
    daemon.signal(signal.SIGHUP)
    ready = world.notify.wait_for(lambda m: m.get("READY") == "1", timeout=10, start=start)
    assert ready.get("STATUS") == deployed
    watch = world.status_json()["watch"]
    assert isinstance(watch, dict)
    assert watch["status"] == deployed and watch["phase"] == "idle"
    assert daemon.output_text().count(f"{NAME}: already installed and served") >= 1


def test_status_keeps_the_last_deploy_through_no_ops_of_the_other_chain(world: World) -> None:
    """Two chains (ECDSA and RSA for the same names): a reconcile after the ECDSA renewal
    finds both unchanged; the status still says which chain was deployed last, and when."""
    world.new_lineage()
    world.new_lineage(world.inter.issue(HOST, key="rsa"), name=f"{NAME}-rsa")
    daemon = world.daemon()
    start = len(world.notify.drain())
    leaf = world.renew()
    deployed = status_after(world, start, f"{NAME}: deployed ({sha256_of(leaf)[:16]}")
    start = len(world.notify.drain())
    daemon.signal(signal.SIGHUP)
    ready = world.notify.wait_for(lambda m: m.get("READY") == "1", timeout=10, start=start)
    output = daemon.output_text()
    assert output.count("already installed and served") >= 1, output
    time.sleep(1)  # one chain's no-op once overwrote the status right after READY=1
    after = world.notify.drain()
    later = after[next(i for i, m in enumerate(after) if m is ready) :]
    assert [m.get("STATUS") for m in later if m.get("STATUS")] == [deployed]
    watch = world.status_json()["watch"]
    assert isinstance(watch, dict) and watch["status"] == deployed


def test_status_names_a_chain_the_hook_deployed_meanwhile(world: World) -> None:
    """Two chains; the daemon deployed the ECDSA one. The RSA one is renewed and deployed by
    certbot's deploy hook while the daemon is stopped: the daemon's no-op for it then says
    what is served, not the older ECDSA deploy."""
    rsa_name = f"{NAME}-rsa"
    world.new_lineage()
    world.new_lineage(world.inter.issue(HOST, key="rsa"), name=rsa_name)
    daemon = world.daemon()
    start = len(world.notify.drain())
    leaf = world.renew()
    status_after(world, start, f"{NAME}: deployed ({sha256_of(leaf)[:16]}")
    daemon.signal(signal.SIGSTOP)
    try:
        rsa = world.renew(world.inter.issue(HOST, key="rsa"), name=rsa_name)
        hooked = world.deploy_hook(rsa_name)
        assert hooked.returncode == 0, hooked.stderr
        start = len(world.notify.drain())
    finally:
        daemon.signal(signal.SIGCONT)
    status_after(world, start, f"{rsa_name}: unchanged ({sha256_of(rsa)[:16]}")


def test_lineage_postfix_does_not_use_is_ignored(world: World) -> None:
    served = world.new_lineage()
    other = world.issue("other.test.example")
    world.new_lineage(other, name="other.test.example")
    daemon = world.daemon()
    before = world.postfix.reloads()
    main_cf = world.postfix.main_cf_bytes()
    fake.renew(
        world.certbot_dir,
        "other.test.example",
        2,
        cert_pem=other.cert_pem,
        chain_pem=other.chain_pem,
        privkey_pem=other.key_pem(),
    )
    daemon.wait_output("other.test.example changed; Postfix uses mail.test.example", timeout=5)
    assert world.served() == sha256_of(served)
    assert world.postfix.reloads() == before
    assert world.postfix.main_cf_bytes() == main_cf
    assert not list((world.tmp / "tls").glob("other*"))


def test_live_dir_made_late_or_again_is_watched(world: World) -> None:
    # certbot has not run yet: no live dir at all. The daemon must wait, not die.
    assert not world.live_dir.exists()
    daemon = world.daemon("--reconcile-interval", "0.5")
    assert "waiting for" in world.notify.drain()[-1].get("STATUS")
    assert daemon.alive()
    leaf = world.new_lineage()
    world.wait_served(leaf)
    # The live dir removed (its inotify watch dies with it) and made again: watched again.
    start = len(world.notify.drain())
    shutil.rmtree(world.live_dir)
    status_after(world, start, "waiting for", timeout=5)
    again = world.new_lineage()
    world.wait_served(again)
    assert daemon.alive()


def test_failed_deploy_keeps_the_old_certificate_and_is_retried(world: World) -> None:
    first = world.new_lineage()
    daemon = world.daemon()
    # Version 2 comes from a CA the daemon does not trust: refused, nothing changes.
    start = len(world.notify.drain())
    world.renew(CA.root().intermediate().issue(HOST))
    status_after(world, start, "failed")
    assert daemon.alive()
    assert world.served() == sha256_of(first)
    report = world.status_json()
    watch = report["watch"]
    assert isinstance(watch, dict)
    assert watch["running"] is True and watch["phase"] == "failing"
    assert "retry" in watch["status"]
    assert watch["last_failure"]["lineage"] == NAME
    # A good renewal afterwards is deployed at once, whatever the backoff says.
    good = world.renew()
    world.wait_served(good)
    assert world.status_json()["watch"]["phase"] == "idle"  # type: ignore[index]


# ------------------------------------------------------------------ systemd's side


def test_sd_notify_ready_status_and_watchdog(world: World) -> None:
    leaf = world.new_lineage()
    daemon = world.daemon(WATCHDOG_USEC="200000")  # WatchdogSec=0.2: a ping every 0.1 s
    messages = world.notify.drain()
    ready = next(m for m in messages if m.get("READY") == "1")
    assert sha256_of(leaf)[:16] in ready.get("STATUS")
    pings = [m for m in world.notify.listen(1.0) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 6, f"{len(pings)} WATCHDOG=1 in 1 s"
    # systemd wants one within every WATCHDOG_USEC (0.2 s); the daemon pings at half that.
    assert max(b.received - a.received for a, b in itertools.pairwise(pings)) < 0.2
    daemon.stop()


def test_watchdog_pid_of_another_process_means_no_pings(world: World) -> None:
    world.new_lineage()
    world.daemon(WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    time.sleep(0.5)
    assert not [m for m in world.notify.drain() if "WATCHDOG" in m.fields]


def test_sigterm_stops_within_a_second(world: World) -> None:
    world.new_lineage()
    daemon = world.daemon()
    start = len(world.notify.drain())
    code, seconds = daemon.stop()
    assert code == 0, daemon.output_text()
    assert seconds < 1.0
    world.notify.wait_for(lambda m: m.get("STOPPING") == "1", timeout=1, start=start)
    state = world.status_json()["watch"]
    assert isinstance(state, dict)
    assert state["phase"] == "stopped" and state["running"] is False


def test_sighup_rereads_the_config(world: World) -> None:
    mail = world.new_lineage()
    mx2 = world.issue("mx2.test.example")
    world.new_lineage(mx2, name="mx2.test.example")
    world.config_file.write_text('hostnames = ["mail.test.example"]\n')
    daemon = world.daemon()
    assert world.served() == sha256_of(mail)

    world.config_file.write_text('hostnames = ["mx2.test.example"]\n')
    start = len(world.notify.drain())
    daemon.signal(signal.SIGHUP)
    world.wait_served(mx2)
    ready = world.notify.wait_for(lambda m: m.get("READY") == "1", timeout=5, start=start)
    reloading = [m for m in world.notify.messages[start:] if m.get("RELOADING") == "1"]
    assert reloading and reloading[0].received <= ready.received
    assert "configuration re-read" in daemon.output_text()

    # A broken config on SIGHUP is refused; the daemon keeps the one it has.
    world.config_file.write_text("hostnames = [\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_output("configuration not reloaded", timeout=5)
    assert daemon.alive()
    assert world.served() == sha256_of(mx2)


def test_idle_daemon_sleeps(world: World) -> None:
    world.new_lineage()
    daemon = world.daemon()
    time.sleep(0.5)  # let start-up work finish
    before = daemon.cpu_seconds()
    time.sleep(3.0)
    used = daemon.cpu_seconds() - before
    assert used <= 0.02, f"{used:.3f} s of CPU in 3 s idle"


# ------------------------------------------------------------------ pieces, in process


def test_notifier_sends_to_a_path_socket_and_ignores_no_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)}, os.getpid())
        assert notifier.ready("up")
        assert server.recv(1024) == b"READY=1\nSTATUS=up"
        assert notifier.status("two\nlines")
        assert server.recv(1024) == b"STATUS=two lines"
    assert not Notifier.from_environ({}, os.getpid()).ready()
    assert Notifier.from_environ({}, os.getpid()).watchdog_interval is None


def test_notifier_never_hangs_on_a_receiver_that_stopped_reading(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = replace(
            Notifier.from_environ({"NOTIFY_SOCKET": str(path)}, os.getpid()), send_timeout=0.02
        )
        started = time.monotonic()
        sent = [notifier.watchdog() for _ in range(40)]  # more than any queue limit here
        assert not all(sent)
        assert time.monotonic() - started < 0.02 * 40 + 1


def test_notifier_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000"}
    assert Notifier.from_environ(env, 42).watchdog_interval == 30.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "42"}, 42).watchdog_interval == 30.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "43"}, 42).watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "x"}, 42).watchdog_interval is None


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    yield Inbox(write_end)
    os.close(read_end)
    os.close(write_end)


def test_events_become_lineage_names(inbox: Inbox, tmp_path: Path) -> None:
    root = str(tmp_path / "live")
    handler = LineageEvents(root, inbox)
    handler.dispatch(FileDeletedEvent(f"{root}/a.example/cert.pem"))
    handler.dispatch(FileCreatedEvent(f"{root}/b.example/previous_cert.pem"))
    # A temp link renamed onto the live link: only the move names it.
    handler.dispatch(FileMovedEvent(f"{root}/c.example/.new", f"{root}/d.example/cert.pem"))
    handler.dispatch(FileCreatedEvent(f"{tmp_path}/elsewhere/cert.pem"))
    changed, why, rewatch = inbox.take()
    assert set(changed) == {"a.example", "b.example", "c.example", "d.example"}
    assert (why, rewatch) == ("", False)
    handler.dispatch(FileDeletedEvent(root))
    changed, why, rewatch = inbox.take()
    assert not changed and why and rewatch


def test_inotify_overflow_log_line_asks_for_a_reconcile(inbox: Inbox) -> None:
    alarm = OverflowAlarm(inbox)
    logger = logging.getLogger("watchdog")
    logger.addHandler(alarm)
    try:
        logging.getLogger("watchdog.observers.inotify_c").debug("in-event")
        assert inbox.take()[1] == ""
        # The line watchdog 7.1 logs on IN_Q_OVERFLOW (inotify_c.py), and nothing else.
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert "overflow" in inbox.take()[1]
    finally:
        logger.removeHandler(alarm)


# ------------------------------------------------------------------ real certbot


@pytest.mark.slow
def test_real_certbot_renewal_with_hook_and_daemon(
    postfix: PostfixInstance, pebble: Pebble, certbot: Certbot, tmp_path: Path
) -> None:
    certbot.certonly([HOST])
    (tmp_path / "ca.pem").write_bytes(pebble.roots_pem())
    config_file = tmp_path / "config.toml"
    config_file.write_text("")
    config_file.chmod(0o644)
    notify = NotifySocket()
    world = World(postfix, tmp_path, CA.root(), notify, config_file)
    # World's paths, but the live dir is certbot's own: the tests' one rig builds them.
    tool = Tool(
        postfix, tmp_path, tmp_path / "ca.pem",
        certbot_config_dir=certbot.config_dir, config_file=config_file,
    )  # fmt: skip
    options = [*tool.options(), "--debounce", str(DEBOUNCE)]
    daemon = WatchProcess(options, world.env(), tmp_path / "daemon.log", tmp_path).start()
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", timeout=DEPLOYED)

        def live_sha() -> str:
            pem = (certbot.lineage(HOST) / "cert.pem").read_bytes()
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
            return hashlib.sha256(der).hexdigest()

        assert served_sha256(LOOPBACK, postfix.port) == live_sha()
        hook = " ".join([sys.executable, "-m", "pftls_hook", *options, "deploy-hook"])
        for _ in range(2):
            before = postfix.reloads()
            start = len(notify.drain())
            certbot.renew(cert_name=HOST, deploy_hook=hook)
            expected = live_sha()
            # The hook has run (certbot waits for it): Postfix serves the renewal now.
            assert served_sha256(LOOPBACK, postfix.port) == expected
            notify.wait_for(
                lambda m, e=expected: e[:16] in m.get("STATUS"), timeout=DEPLOYED, start=start
            )
            assert postfix.reloads() == before + 1, postfix.log_text()
        code, seconds = daemon.stop()
        assert code == 0 and seconds < 1.0
    finally:
        daemon.kill()
        notify.close()
