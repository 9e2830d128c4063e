"""The deploy routine shared by every entry point; the only module that knows the order.

lineage -> verify -> install -> point main.cf -> postfix check -> reload -> probe ->
commit (prune) or roll back.

Contract: `Deployer(settings).deploy(name)` returns an `Outcome` or raises a `PftlsError`:
`RefusedError` before anything changed; `DeployFailedError` when the switch was undone and
the previous certificate is served again; `RollbackFailedError` when even that failed.
Under the deploy lock, deploying what is already installed and served is a no-op: no file
write, no main.cf write, no reload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from pftls_hook import dane, probe
from pftls_hook.config import Endpoint, Settings
from pftls_hook.errors import (
    CommandError,
    DeployFailedError,
    EnvironmentRefusedError,
    NotSettledError,
    PftlsError,
    RefusedError,
    RollbackFailedError,
)
from pftls_hook.install import InstallDir, Installed
from pftls_hook.lineage import LineageSnapshot, list_lineages, read_lineage
from pftls_hook.lock import deploy_lock
from pftls_hook.postfix import Postfix, PostfixState, pointing
from pftls_hook.verify import (
    SourceFiles,
    VerifiedBundle,
    covers,
    load_anchors,
    parse_certificates,
    split_pem,
    verify_bundle,
)

log = logging.getLogger("pftls-hook")
Clock = Callable[[], datetime]


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP while files are switched: the exception a handler
    raises then arrives once the rollback knows the switch, never between the rename and it
    (DESIGN invariant 3). SIGKILL cannot be held; the file order covers that case."""
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    lineage: str
    action: str  # deployed | unchanged | reloaded | installed-not-running | dry-run | skipped
    leaf_sha256: str = ""
    warnings: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        served = f" ({self.leaf_sha256[:16]}…)" if self.leaf_sha256 else ""
        return f"{self.lineage}: {self.action}{served}"


@dataclass(frozen=True)
class Context:
    """What one deploy decides on, read once under the lock."""

    state: PostfixState
    hostnames: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    notes: tuple[str, ...]


class Deployer:
    def __init__(
        self, settings: Settings, *, postfix: Postfix | None = None, clock: Clock = utcnow
    ) -> None:
        self.settings = settings
        self.postfix = postfix or Postfix(settings.postfix_config_dir)
        self.install_dir = InstallDir(settings.install_dir, settings.layout)
        self.clock = clock

    # -- reading --------------------------------------------------------------------------
    def context(self) -> Context:
        state = self.postfix.state()
        hostnames = self.settings.hostnames or (state.myhostname,)
        notes = [f"{o} overrides main.cf for that service" for o in state.tls_overrides()]
        for extra in ("smtpd_tls_eccert_file", "smtpd_tls_dcert_file"):
            if state.effective.get(extra) and not state.uses_chain_files:
                notes.append(f"main.cf {extra} is set too: some clients may be served that one")
        if self.settings.no_probe:
            endpoints: list[Endpoint] = []
        elif self.settings.probes:
            endpoints = list(self.settings.probes)
        else:
            endpoints, skipped = state.probe_endpoints()
            notes.extend(skipped)
        return Context(state, tuple(hostnames), tuple(endpoints), tuple(notes))

    def anchors(self) -> Sequence[object]:
        path = self.settings.ca_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EnvironmentRefusedError(f"{path}: cannot read CA file: {exc.strerror}") from None
        return load_anchors(data, str(path))

    def read_and_verify(self, name: str, ctx: Context) -> tuple[LineageSnapshot, VerifiedBundle]:
        snapshot = read_lineage(
            self.settings.live_dir / name, settle_timeout=self.settings.settle_timeout
        )
        bundle = verify_bundle(
            snapshot.files,
            anchors=self.anchors(),  # type: ignore[arg-type]
            hostnames=ctx.hostnames,
            now=self.clock(),
            min_days=self.settings.min_days,
        )
        self.dane_guard(name, bundle, ctx)
        return snapshot, bundle

    def dane_guard(self, name: str, bundle: VerifiedBundle, ctx: Context) -> None:
        """DANE: refuse a chain that the published TLSA records of a target reject."""
        dane.guard(
            self.settings,
            name,
            bundle,
            hostnames=ctx.hostnames,
            served_files=ctx.state.pointed_files(),
            now=self.clock(),
        )

    def selected(self, hostnames: Sequence[str]) -> list[tuple[str, x509.Certificate]]:
        """The lineages Postfix may be given, with their leaf: the configured ones, or else
        those whose certificate covers every required hostname."""
        chosen = []
        names = self.settings.lineages or tuple(list_lineages(self.settings.live_dir))
        for name in names:
            try:
                snapshot = self._read_for_choice(name)
                leaf = parse_certificates(snapshot.files.cert, "cert.pem")[0]
            except RefusedError as exc:
                log.info("%s: not considered now: %s", name, exc)
                continue
            if self.settings.lineages or all(covers(leaf, h) for h in hostnames):
                chosen.append((name, leaf))
        return chosen

    def _read_for_choice(self, name: str) -> LineageSnapshot:
        """A lineage certbot is re-pointing right now (an `install` started during a
        renewal) is waited for, up to settle_timeout, as deploy() waits: choosing without
        it could find no lineage at all (exit 3) or the wrong one. One left half-renewed
        for longer than that (an interrupted certbot: its live dir, whose mtime every
        re-pointed link bumps, is older) is skipped at once: waiting would not help."""
        lineage_dir = self.settings.live_dir / name
        try:
            return read_lineage(lineage_dir, settle_timeout=0)
        except NotSettledError as exc:
            try:
                age = self.clock().timestamp() - os.lstat(lineage_dir).st_mtime
            except OSError:
                raise exc from None  # gone meanwhile: skip it as unsettled
            if age > self.settings.settle_timeout:
                raise
            return read_lineage(lineage_dir, settle_timeout=self.settings.settle_timeout)

    def choose(self, hostnames: Sequence[str]) -> str:
        """The one lineage to serve: Postfix has one certificate, and when several lineages
        qualify the one valid longest wins (a stable choice the daemon will not flip)."""
        candidates = self.selected(hostnames)
        if not candidates:
            wanted = ", ".join(self.settings.lineages or hostnames)
            raise RefusedError(str(self.settings.live_dir), f"no lineage to deploy for {wanted}")
        return max(candidates, key=lambda c: (c[1].not_valid_after_utc, c[0]))[0]

    def served(self, endpoints: Sequence[Endpoint]) -> dict[Endpoint, str]:
        """What each endpoint serves now (one attempt each); unreachable ones are left out."""
        seen = {}
        for endpoint in endpoints:
            try:
                seen[endpoint] = probe.served(endpoint, timeout=self.settings.probe_timeout)
            except probe.ProbeError as exc:
                log.info("probe %s", exc)
        return seen

    # -- the routine ----------------------------------------------------------------------
    def deploy(self, name: str) -> Outcome:
        if self.settings.dry_run:
            return self._dry_run(name)
        with deploy_lock(self.settings.lock_file, self.settings.lock_timeout):
            ctx = self.context()
            for note in ctx.notes:
                log.warning("%s", note)
            snapshot, bundle = self.read_and_verify(name, ctx)
            for warning in bundle.warnings:
                log.warning("%s: %s", name, warning)
            log.info(
                "%s: version %d verified, leaf %s…, expires %s",
                name,
                snapshot.version,
                bundle.leaf_sha256[:16],
                f"{bundle.not_after:%Y-%m-%d}",
            )
            self.install_dir.check(create=True)
            self.install_dir.clean_temps()
            return self._switch(name, bundle, ctx)

    def _already_installed(self, name: str, bundle: VerifiedBundle, ctx: Context) -> bool:
        """Do main.cf's managed values name files holding exactly these bytes?"""
        files = ctx.state.pointed_files()
        if self.settings.layout == "combined":
            expected = [bundle.combined_pem()]
            if files != [str(self.install_dir.current_path(name))]:
                return False
        else:
            expected = [bundle.key_pem, bundle.fullchain_pem]
            if any(not f.startswith(f"{self.install_dir.path}/{name}.") for f in files):
                return False
        try:
            return [open(f, "rb").read() for f in files] == expected
        except OSError:
            return False

    def _switch(self, name: str, bundle: VerifiedBundle, ctx: Context) -> Outcome:
        running = self.postfix.is_running()
        endpoints = ctx.endpoints if running else ()
        before = self.served(endpoints)
        expected = bundle.leaf_sha256

        if self._already_installed(name, bundle, ctx):
            if all(before.get(e) == expected for e in endpoints):
                log.info("%s: already installed and served: nothing to do", name)
                return Outcome(name, "unchanged", expected, bundle.warnings)
            # Installed but not served: a reload was missed (or a killed run). Reload only.
            self.postfix.reload()
            self._prove(endpoints, expected)
            return Outcome(name, "reloaded", expected, bundle.warnings)

        installed = self._apply(
            lambda: self.install_dir.install(name, bundle, chain_files=ctx.state.uses_chain_files),
            ctx,
            expected,
            running,
            before,
        )
        # Keep what was served before this deploy (for rollback) and the new files.
        keep = {*installed.files, *map(Path, ctx.state.pointed_files())}
        if installed.previous is not None:
            keep.add(installed.previous)
        for removed in self.install_dir.prune(name, keep):
            log.info("%s: pruned %s", name, removed)
        if not running:
            log.warning("Postfix is not running: installed, not reloaded or probed")
            return Outcome(name, "installed-not-running", expected, bundle.warnings)
        log.info("%s: deployed; Postfix serves %s…", name, expected[:16])
        return Outcome(name, "deployed", expected, bundle.warnings)

    def _apply(
        self,
        switch: Callable[[], Installed],
        ctx: Context,
        expected: str,
        running: bool,
        before: dict[Endpoint, str],
    ) -> Installed:
        """Switch the files in, point main.cf at them, check, reload, prove; or undo it all."""
        installed: Installed | None = None
        changed: dict[str, str] = {}
        try:
            with _signals_held():
                installed = switch()
            # A SIGTERM held during the switch arrives here, where the rollback knows it.
            log.info("switched in %s", ", ".join(str(f) for f in installed.files))
            changed = {
                k: v for k, v in installed.params.items() if ctx.state.effective.get(k, "") != v
            }
            if changed:
                log.info("main.cf: %s", ", ".join(f"{k} = {v}" for k, v in changed.items()))
                self.postfix.set(changed)
                # Only a main.cf change can break Postfix's configuration; a routine renewal
                # (same file name, new bytes already verified) skips the 0.15 s check.
                self.postfix.check()
            if running:
                self.postfix.reload()
                self._prove(ctx.endpoints, expected)
        except BaseException as exc:
            if installed is None:
                raise  # nothing was switched: the switch undoes its own partial work
            # Every exit path, a signal included, puts the previous state back.
            self._roll_back(installed, changed, ctx, running, before, reason=exc)
            raise  # _roll_back raised for PftlsError; other exceptions continue as they were
        return installed

    def _prove(self, endpoints: Sequence[Endpoint], expected: str) -> None:
        if endpoints:
            probe.wait_for(endpoints, expected, timeout=self.settings.probe_timeout)
            log.info("probe: %s serve the new certificate", ", ".join(map(str, endpoints)))

    def _roll_back(
        self,
        installed: Installed,
        changed: dict[str, str],
        ctx: Context,
        running: bool,
        before: dict[Endpoint, str],
        *,
        reason: BaseException,
    ) -> None:
        log.error("deploy failed: %s; rolling back", reason)
        try:
            installed.undo()
            if changed:
                self.postfix.restore(ctx.state.explicit, list(changed))
            if running:
                self._reload_for_rollback(before)
                for endpoint, sha in before.items():
                    probe.wait_for([endpoint], sha, timeout=self.settings.probe_timeout)
        except (PftlsError, OSError) as exc:
            log.error("rollback failed: %s", exc)
            raise RollbackFailedError(
                f"deploy failed ({reason}) and rollback failed ({exc}): check Postfix now"
            ) from None
        log.error("rolled back: the previous certificate is in place and served again")
        if isinstance(reason, PftlsError | OSError):
            raise DeployFailedError(f"deploy failed and was rolled back: {reason}") from None

    def _reload_for_rollback(self, before: dict[Endpoint, str]) -> None:
        """Reload after the files and main.cf are back. When the reload fails (often the
        very failure being rolled back: `postfix reload` fails again), the rollback still
        holds if every endpoint is proven to serve what it served before; smtpd processes
        pick the restored files up as they restart. With nothing to prove it by, it fails."""
        try:
            self.postfix.reload()
        except CommandError as exc:
            if not before:
                raise
            log.warning("rollback: %s; probing for the previous certificate anyway", exc)

    def rollback(self) -> Outcome:
        """Switch back to the version installed before the current one, verified again."""
        with deploy_lock(self.settings.lock_file, self.settings.lock_timeout):
            ctx = self.context()
            self.install_dir.check()
            name, switch, files = self._previous(ctx)
            bundle = verify_bundle(
                files,
                anchors=self.anchors(),  # type: ignore[arg-type]
                hostnames=ctx.hostnames,
                now=self.clock(),
                min_days=self.settings.min_days,
            )
            self.dane_guard(name, bundle, ctx)
            running = self.postfix.is_running()
            before = self.served(ctx.endpoints if running else ())
            installed = self._apply(switch, ctx, bundle.leaf_sha256, running, before)
            log.info("%s: rolled back to %s", name, installed.files[0])
            return Outcome(name, "rolled-back", bundle.leaf_sha256, bundle.warnings)

    def _previous(self, ctx: Context) -> tuple[str, Callable[[], Installed], SourceFiles]:
        """The version before the one main.cf points at: its files, to verify first, and
        the switch to it, for `_apply` to run."""
        pointed = ctx.state.pointed_files()
        ours = [Path(p) for p in pointed if Path(p).parent == self.install_dir.path]
        if len(ours) != len(pointed):
            raise EnvironmentRefusedError(
                "main.cf does not point into the install dir: nothing to roll back"
            )
        directory = self.install_dir
        if self.settings.layout == "combined":
            name = ours[0].name.removesuffix(".pem")
            current = directory.current_version(name)
            older = [v for v in directory.versions(name) if v != current]
            if not older:
                raise EnvironmentRefusedError(f"{name}: no previous version to roll back to")
            target = older[-1]
            data = target.read_bytes()
            path = str(directory.current_path(name))
            params = pointing(path, path, chain_files=ctx.state.uses_chain_files)

            def switch() -> Installed:
                return Installed(params, directory.switch_to(name, target), (target,))

            return name, switch, split_pem(data, data)
        # `<name>.<stamp>.key`: lineage names hold dots (mail.example.com), the stamp none.
        name = ours[0].name.rsplit(".", 2)[0]
        stems = [p.name.removesuffix(".crt") for p in directory.versions(name, ".crt")]
        older_stems = [
            st
            for st in stems
            if (directory.path / f"{st}.key").exists() and directory.path / f"{st}.crt" not in ours
        ]
        if not older_stems:
            raise EnvironmentRefusedError(f"{name}: no previous version to roll back to")
        key, crt = (directory.path / f"{older_stems[-1]}{s}" for s in (".key", ".crt"))
        params = pointing(str(key), str(crt), chain_files=ctx.state.uses_chain_files)
        files = split_pem(key.read_bytes(), crt.read_bytes())
        # Both files exist already; main.cf (set by _apply) is the switch, undone by restore.
        return name, lambda: Installed(params, lambda: None, (crt, key)), files

    def _dry_run(self, name: str) -> Outcome:
        ctx = self.context()
        for note in ctx.notes:
            log.warning("%s", note)
        snapshot, bundle = self.read_and_verify(name, ctx)
        self.install_dir.check(create=False)
        if self._already_installed(name, bundle, ctx):
            print(f"{name}: version {snapshot.version} is already installed")
            return Outcome(name, "dry-run", bundle.leaf_sha256, bundle.warnings)
        if self.settings.layout == "combined":
            files = [f"{self.install_dir.path}/{name}.<stamp>.pem (0600, key + full chain)"]
            target = str(self.install_dir.current_path(name))
            params = pointing(target, target, chain_files=ctx.state.uses_chain_files)
            files.append(f"{target} -> the new version (hard link, renamed into place)")
        else:
            key = f"{self.install_dir.path}/{name}.<stamp>.key"
            crt = f"{self.install_dir.path}/{name}.<stamp>.crt"
            files = [f"{key} (0600)", f"{crt} (0644, full chain)"]
            params = pointing(key, crt, chain_files=ctx.state.uses_chain_files)
        for line in files:
            print(f"would write {line}")
        for key_name, value in params.items():
            if ctx.state.effective.get(key_name, "") != value:
                print(f"would run postconf -e '{key_name} = {value}'")
        print(
            "would run postfix check (if main.cf changes), postfix reload, and probe "
            + (", ".join(map(str, ctx.endpoints)) or "nothing")
        )
        return Outcome(name, "dry-run", bundle.leaf_sha256, bundle.warnings)


__all__ = ["Deployer", "Outcome", "utcnow"]
