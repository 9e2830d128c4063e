"""Tests of read_lineage / list_lineages on fake certbot lineages (tests/support/lineage.py).

A lineage is read while certbot may be re-pointing its links (unlink + symlink per kind,
with previous_*.pem links meanwhile), and from a directory an attacker or a careless admin
may have bent: the reader must either return four files of one version or refuse, and it
must never hang, since certbot waits for its deploy hook with no timeout.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.lineage import LineageSnapshot, list_lineages, read_lineage, renewed_lineage
from tests.support import lineage as fake
from tests.support.pki import CA, Leaf

NAME = "mail.example.com"
SHORT_WAIT = 0.3
# Generous bound for "returned promptly": CI machines stall, but a hang is much longer.
SLACK = 2.0


@pytest.fixture(scope="module")
def leaves() -> tuple[Leaf, Leaf]:
    """Versions 1 and 2 of the lineage: two certificates with different keys."""
    inter = CA.root().intermediate()
    return inter.issue(NAME), inter.issue(NAME)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "letsencrypt"


def write_version(config: Path, n: int, leaf: Leaf) -> None:
    fake.write_version(
        config,
        NAME,
        n,
        cert_pem=leaf.cert_pem,
        chain_pem=leaf.chain_pem,
        privkey_pem=leaf.key_pem(),
    )


@pytest.fixture
def settled(config: Path, leaves: tuple[Leaf, Leaf]) -> Path:
    """A lineage at version 1 with version 2 already in the archive, links not yet moved:
    the state right after certbot's save_successor."""
    live = fake.new_lineage(
        config,
        NAME,
        cert_pem=leaves[0].cert_pem,
        chain_pem=leaves[0].chain_pem,
        privkey_pem=leaves[0].key_pem(),
    )
    write_version(config, 2, leaves[1])
    return live


@pytest.fixture
def later() -> Iterator[Callable[[float, Callable[[], None]], None]]:
    """Run a function on another thread after a delay; joined when the test ends."""
    timers: list[threading.Timer] = []

    def schedule(delay: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(delay, action)
        timers.append(timer)
        timer.start()

    yield schedule
    for timer in timers:
        timer.cancel()
        timer.join()


def assert_is_version(snapshot: LineageSnapshot, config: Path, n: int) -> None:
    """The snapshot holds exactly the bytes of archive version n, all four of them."""
    assert (snapshot.name, snapshot.version) == (NAME, n)
    on_disk = {kind: fake.archive_path(config, NAME, kind, n).read_bytes() for kind in fake.KINDS}
    read = {kind: getattr(snapshot.files, kind) for kind in fake.KINDS}
    assert read == on_disk


def read_refused(live: Path) -> RefusedError:
    """read_lineage refuses `live` within the short wait (plus slack), never hanging."""
    started = time.monotonic()
    with pytest.raises(RefusedError) as caught:
        read_lineage(live, settle_timeout=SHORT_WAIT)
    assert time.monotonic() - started < SHORT_WAIT + SLACK
    return caught.value


# ---------------------------------------------------------------- settled lineages


def test_fresh_lineage_reads_version_1(settled: Path, config: Path) -> None:
    assert_is_version(read_lineage(settled), config, 1)


def test_renewed_lineage_reads_the_new_version(
    settled: Path, config: Path, leaves: tuple[Leaf, Leaf]
) -> None:
    fake.renew(
        config,
        NAME,
        3,
        cert_pem=leaves[0].cert_pem,
        chain_pem=leaves[0].chain_pem,
        privkey_pem=leaves[0].key_pem(),
    )
    assert_is_version(read_lineage(settled), config, 3)


def test_fake_lineage_is_laid_out_as_certbot_does(settled: Path, config: Path) -> None:
    # The ground the other tests stand on: relative links, certbot's modes.
    assert os.readlink(settled / "cert.pem") == f"../../archive/{NAME}/cert1.pem"
    assert (config / "live").stat().st_mode & 0o777 == 0o700
    assert (config / "archive").stat().st_mode & 0o777 == 0o700
    assert fake.archive_path(config, NAME, "privkey", 1).stat().st_mode & 0o777 == 0o600


def test_list_lineages_names_directories_only(config: Path, leaves: tuple[Leaf, Leaf]) -> None:
    for name in ("b.example.org", "a.example.com"):
        fake.new_lineage(
            config,
            name,
            cert_pem=leaves[0].cert_pem,
            chain_pem=leaves[0].chain_pem,
            privkey_pem=leaves[0].key_pem(),
        )
    (config / "live" / "stray.pem").write_bytes(b"")
    assert (config / "live" / "README").is_file()  # written by certbot, must be skipped
    assert list_lineages(config / "live") == ["a.example.com", "b.example.org"]


# ---------------------------------------------------------------- certbot mid-renewal


def test_links_on_mixed_versions_are_not_settled(settled: Path, config: Path) -> None:
    # certbot re-points cert first: new certificate, old key.
    fake.point_links(config, NAME, {"cert": 2})
    started = time.monotonic()
    with pytest.raises(NotSettledError) as caught:
        read_lineage(settled, settle_timeout=SHORT_WAIT)
    # It waited for certbot to finish, then gave up.
    assert SHORT_WAIT <= time.monotonic() - started < SHORT_WAIT + SLACK
    assert "not settled" in caught.value.reason


def test_previous_links_mean_not_settled(settled: Path, config: Path) -> None:
    # All four links agree, but certbot has not finished (or was interrupted): its
    # _fix_symlinks may still roll them back to previous_*.
    fake.add_previous_links(config, NAME)
    with pytest.raises(NotSettledError) as caught:
        read_lineage(settled, settle_timeout=SHORT_WAIT)
    assert "not settled" in caught.value.reason


def test_lineage_that_settles_during_the_wait_reads_the_final_version(
    settled: Path, config: Path, later: Callable[[float, Callable[[], None]], None]
) -> None:
    fake.point_links(config, NAME, {"cert": 2})
    later(0.2, lambda: fake.point_links(config, NAME, 2, atomic=True))
    assert_is_version(read_lineage(settled, settle_timeout=3), config, 2)


def test_certbot_renewal_in_progress_reads_the_final_version(
    settled: Path, config: Path, later: Callable[[float, Callable[[], None]], None]
) -> None:
    # certbot's update_all_links_to, caught after its first link: previous_* links exist,
    # cert is new. The rest is done certbot's way, unlink then symlink, so the reader may
    # meet a missing link; previous_* stay until the end, so it must keep waiting.
    fake.add_previous_links(config, NAME)
    fake.point_links(config, NAME, {"cert": 2})

    def finish() -> None:
        fake.point_links(config, NAME, {"privkey": 2, "chain": 2, "fullchain": 2})
        fake.remove_previous_links(config, NAME)

    later(0.2, finish)
    assert_is_version(read_lineage(settled, settle_timeout=3), config, 2)


def test_missing_link_is_refused_naming_it(settled: Path) -> None:
    (settled / "privkey.pem").unlink()
    error = read_refused(settled)
    assert "privkey.pem" in str(error)


# ---------------------------------------------------------------- bent lineages


def test_absolute_link_outside_the_config_dir(settled: Path, config: Path, tmp_path: Path) -> None:
    # A good certificate, even named like an archive file, is refused for where it lives:
    # whoever can write there could hand Postfix any key.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(fake.archive_path(config, NAME, "cert", 1), elsewhere / "cert1.pem")
    fake.set_link(config, NAME, "cert", elsewhere / "cert1.pem")
    error = read_refused(settled)
    assert (error.file, "outside" in error.reason) == ("cert.pem", True), str(error)


def test_relative_link_climbing_out_of_the_config_dir(
    settled: Path, config: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / "archive" / NAME
    elsewhere.mkdir(parents=True)
    shutil.copy(fake.archive_path(config, NAME, "cert", 1), elsewhere / "cert1.pem")
    fake.set_link(config, NAME, "cert", f"../../../elsewhere/archive/{NAME}/cert1.pem")
    error = read_refused(settled)
    assert (error.file, "outside" in error.reason) == ("cert.pem", True), str(error)


def test_fifo_in_place_of_an_archive_file_is_refused_without_hanging(
    settled: Path, config: Path
) -> None:
    fifo = fake.replace_archive_with_fifo(config, NAME, "chain", 1)
    outcome: list[BaseException | LineageSnapshot] = []

    def attempt() -> None:
        try:
            outcome.append(read_lineage(settled, settle_timeout=SHORT_WAIT))
        except BaseException as exc:  # handed to the test thread, which judges it
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(SHORT_WAIT + SLACK)
    if reader.is_alive():
        # Blocked in open(): a writer that opens and closes gives the reader EOF, so the
        # thread ends and the test fails instead of hanging the whole run.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(SLACK)
        pytest.fail("read_lineage blocked on a FIFO")
    (error,) = outcome
    assert isinstance(error, RefusedError), repr(error)
    assert "regular file" in error.reason, str(error)


def test_link_to_itself_is_refused(settled: Path, config: Path) -> None:
    fake.set_link(config, NAME, "cert", "cert.pem")
    assert "cert.pem" in str(read_refused(settled))


def test_symlink_loop_through_the_archive_is_refused(settled: Path, config: Path) -> None:
    # live/cert.pem -> archive/cert1.pem -> live/cert.pem
    archived = fake.archive_path(config, NAME, "cert", 1)
    archived.unlink()
    os.symlink(f"../../live/{NAME}/cert.pem", archived)
    assert "cert.pem" in str(read_refused(settled))


def test_damaged_archive_bytes_are_read_as_they_are(settled: Path, config: Path) -> None:
    # Judging the content is verify's job; the reader hands over exactly what is on disk.
    fake.replace_archive_file(config, NAME, "fullchain", 1, b"not a certificate\n")
    snapshot = read_lineage(settled)
    assert snapshot.files.fullchain == b"not a certificate\n"


def test_links_into_two_archive_dirs_are_refused(
    settled: Path, config: Path, leaves: tuple[Leaf, Leaf]
) -> None:
    # Found by fuzzing: each link on version 1, but fullchain from another lineage.
    fake.new_lineage(
        config,
        "other.example.com",
        cert_pem=leaves[1].cert_pem,
        chain_pem=leaves[1].chain_pem,
        privkey_pem=leaves[1].key_pem(),
    )
    fake.set_link(config, NAME, "fullchain", "../../archive/other.example.com/fullchain1.pem")
    assert "different archive directories" in read_refused(settled).reason


@pytest.mark.parametrize("where", ["archive", "live", "config"])
def test_a_directory_writable_by_others_is_refused(settled: Path, config: Path, where: str) -> None:
    # Whoever can write a directory on the way could swap the key.
    directory = {
        "archive": fake.archive_dir(config, NAME),
        "live": config / "live",
        "config": config,
    }[where]
    directory.chmod(0o777)
    error = read_refused(settled)
    assert (error.file, error.reason) == (str(directory), "is writable by group or others")


def test_a_symlinked_lineage_dir_is_refused(settled: Path, config: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(config, elsewhere, symlinks=True)
    shutil.rmtree(settled)
    settled.symlink_to(fake.live_dir(elsewhere, NAME))
    assert "symlink" in read_refused(settled).reason


def test_a_missing_lineage_is_refused_at_once(config: Path, settled: Path) -> None:
    assert "no such lineage" in read_refused(config / "live" / "nosuch.example.com").reason


def test_a_path_climbing_with_dotdot_is_refused(settled: Path, config: Path) -> None:
    assert "`..`" in read_refused(config / "live" / ".." / "live" / NAME).reason


def test_renewed_lineage_names_the_lineage_under_the_live_dir(settled: Path, config: Path) -> None:
    live = config / "live"
    assert renewed_lineage(str(settled), live) == NAME
    for value in (
        f"live/{NAME}",
        f"{live}/../live/{NAME}",
        str(live),
        f"{live}/..",
        f"{settled}/cert.pem",
        f"{live}/bad\nname",
    ):
        with pytest.raises(RefusedError) as caught:
            renewed_lineage(value, live)
        assert caught.value.file == repr(value)
