"""The deploy routine shared by every entry point; the only module that knows the order.

Under the lock: read Postfix's state once -> select -> read the lineage -> verify -> install
-> point main.cf -> (postfix check) -> reload -> prove -> commit (prune), or undo it all.

Contract: `Deployer(settings).deploy(name)` returns an `Outcome` or raises a `PftlsError`:
`RefusedError` before anything changed; `DeployFailedError` when the switch was undone and
the previous certificate is served again; `RollbackFailedError` when even that failed.
`deploy(None)` deploys every selected lineage; `deploy(name, only_if_ours=True)` (the
deploy hook, the daemon) skips a lineage that Postfix does not serve. Deploying what is
already installed and served is a no-op: no write, no reload (the deploy hook answers that
case before it even gets here: hook.py). The core does not print: outcomes and plans are
data, rendered by the CLI.

One routine for one chain and for several (one lineage per key algorithm, and per SNI
name; select.py decides which, chains.py what main.cf and the SNI table then list): each
lineage is read and verified, a refused one becomes a "refused" outcome and keeps its
previous version served, and the others are switched, reloaded and proven in one
transaction. `deploy_all()` (install, the daemon's reconcile) returns one `Outcome` per
lineage; `deploy(name)` raises the worst error. What differs with several chains is
decided in two places: `_targets` (main.cf lists every chain in `smtpd_tls_chain_files`,
each proven by a client that offers only its algorithm, and its SNI name: probe.py; one
chain keeps main.cf's own parameters and any client proves it) and `_installed` (one
chain is in place when main.cf points at it).

Several instances (`settings.instances`): the first one's main.cf decides the selection;
each gets the same values in its own main.cf, is reloaded and proven on its own listeners,
and the one transaction undoes them all.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from cryptography import x509

from pftls_hook import chains, dane, probe, sni
from pftls_hook.config import Endpoint, Settings
from pftls_hook.errors import (
    CommandError,
    DeployFailedError,
    EnvironmentRefusedError,
    NotSettledError,
    PftlsError,
    ProbeError,
    RefusedError,
    RollbackFailedError,
)
from pftls_hook.install import Combined, Installed, Layout, install_dir
from pftls_hook.lineage import LineageSnapshot, read_lineage
from pftls_hook.lock import deploy_lock
from pftls_hook.outcome import Outcome, worst
from pftls_hook.pem import SourceFiles
from pftls_hook.postfix import Instance, Postfix, PostfixState, Reading, read_instances
from pftls_hook.select import Selection, algorithm_of, choose
from pftls_hook.verify import VerifiedBundle, load_anchors, verify_bundle

log = logging.getLogger("pftls-hook")
_LISTED = 8  # endpoints named in one log line; a thousand SNI names are counted
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP while files are switched: the exception a handler
    raises then arrives once the transaction knows the switch, never between the rename
    and it (DESIGN invariant 3). SIGKILL cannot be held; the file order covers that case."""
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass(frozen=True)
class Context:
    """What one command decides on, read once (under the lock when it deploys). `state` is
    the first instance's (it decides the selection); `endpoints` are every instance's."""

    state: PostfixState
    hostnames: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    notes: tuple[str, ...]
    selection: Selection
    sni_table: Mapping[str, list[str]] = field(default_factory=dict)  # pftls-hook's, now
    instances: tuple[Instance, ...] = ()

    @property
    def chain_files(self) -> bool:
        """Does a deploy list its files in `smtpd_tls_chain_files` (several chains, or
        main.cf uses it already) rather than the cert and key parameters?"""
        return self.selection.several or self.state.uses_chain_files

    def pointing_everywhere(self, values: Mapping[str, str]) -> bool:
        """Does every instance's main.cf already say `values`?"""
        return all(
            i.state.effective.get(k, "") == v for i in self.instances for k, v in values.items()
        )


class Transaction:
    """What a deploy (or configure) changed so far, and the one way to undo it: main.cf
    values back as each instance's main.cf had them, then the files back."""

    def __init__(self, postfix: Postfix, *others: Postfix) -> None:
        self.postfix = postfix
        self.postfixes = (postfix, *others)
        self.switched: list[Installed] = []
        self.main_cf: list[tuple[Postfix, dict[str, str], list[str]]] = []

    def switch(self, do: Callable[[], Installed]) -> Installed:
        with _signals_held():
            self.switched.append(do())
        return self.switched[-1]  # a SIGTERM held meanwhile arrives here, where undo knows it

    def set_main_cf(self, values: dict[str, str], postfix: Postfix | None = None) -> None:
        if values:
            target = postfix or self.postfix
            self.main_cf.append((target, target.explicit(*values), list(values)))
            where = f" ({target.config_dir})" if len(self.postfixes) > 1 else ""
            log.info("main.cf%s: %s", where, ", ".join(f"{k} = {v}" for k, v in values.items()))
            target.set(values)

    def undo(self) -> None:
        while self.main_cf:
            target, before, names = self.main_cf.pop()
            target.restore(before, names)
        while self.switched:
            self.switched.pop().undo()


def roll_back(
    txn: Transaction,
    before: dict[Endpoint, str | None],
    probe_timeout: float,
    *,
    reason: BaseException,
    what: str = "deploy",
) -> None:
    """Undo `txn`, reload, and prove each endpoint serves what it served `before` (None:
    any certificate). Raises `DeployFailedError` (for a `PftlsError`/`OSError` reason) or
    `RollbackFailedError`; other exceptions (a signal's) continue once undone."""
    log.error("%s failed: %s; rolling back", what, reason)
    try:
        txn.undo()
        running = True
        for postfix in txn.postfixes:  # every instance, even after one failed
            try:
                running = postfix.reload() and running
            except CommandError as exc:
                # Often the very failure being rolled back. The rollback still holds if every
                # endpoint is proven to serve what it did before (smtpd picks the restored
                # files up as it restarts); with nothing to prove it by, it fails.
                if not before:
                    raise
                log.warning("rollback: %s; probing for the previous certificate anyway", exc)
        for endpoint, sha in before.items() if running else ():
            probe.wait_for([endpoint], sha, timeout=probe_timeout)
    except (PftlsError, OSError) as exc:
        log.error("rollback failed: %s", exc)
        raise RollbackFailedError(
            f"{what} failed ({reason}) and rollback failed ({exc}): check Postfix now"
        ) from None
    log.error("rolled back: the previous state is in place and served again")
    if isinstance(reason, PftlsError | OSError):
        raise DeployFailedError(f"{what} failed and was rolled back: {reason}") from None


class Deployer:
    def __init__(
        self,
        settings: Settings,
        *,
        postfix: Postfix | None = None,
        postfixes: Sequence[Postfix] = (),
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        # Several instances: each gets the same deploy; the first decides the selection.
        self.postfixes = list(postfixes) or (
            [postfix] if postfix else [Postfix(d) for d in settings.instances]
        )
        self.postfix = self.postfixes[0]
        self.install_dir = install_dir(settings.install_dir, settings.layout)
        self.clock = clock
        self._anchors: tuple[tuple[int, int, int], Sequence[x509.Certificate]] | None = None

    # -- reading --------------------------------------------------------------------------
    def context(self, focus: str | None = None, reading: Reading | None = None) -> Context:
        """`focus`: the lineage a renewal was deployed for (select.choose); `reading`:
        Postfix's state, when the caller has read it under the lock (hook.py)."""
        reading = reading or read_instances(self.settings, self.postfixes)
        notes = list(reading.notes)
        instances = reading.instances
        state = instances[0].state
        hostnames = self.settings.hostnames or (state.myhostname,)
        endpoints = reading.endpoints
        installed = self.install_dir.lineages_of(state.pointed_files())
        table = sni.read(sni.table_path(self.install_dir.path))
        listed = {name: self.install_dir.lineages_of(files) for name, files in table.items()}
        selection = choose(self.settings, hostnames, installed, listed, focus=focus)
        # An `sni` name no usable lineage covers (none does, or the one that does is refused
        # or half-renewed) stays out of the table: Postfix gives its clients the default
        # chain, whose names do not match. Say so rather than stay silent.
        notes.extend(
            f"sni {name}: no usable lineage covers it: its clients are served the default"
            " certificate"
            for name, chains in selection.sni
            if not chains
        )
        return Context(
            state,
            tuple(hostnames),
            tuple(endpoints),
            tuple(notes),
            selection,
            table,
            tuple(instances),
        )

    def anchors(self) -> Sequence[x509.Certificate]:
        """The trust anchors, parsed again only when the CA file changed: several chains
        (one per algorithm, per SNI name) verify against the same bundle, and the daemon's
        deployer lives across CA package updates."""
        path = self.settings.ca_file
        try:
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._anchors is None or self._anchors[0] != key:
                self._anchors = key, load_anchors(path.read_bytes(), str(path))
        except OSError as exc:
            raise EnvironmentRefusedError(f"{path}: cannot read CA file: {exc.strerror}") from None
        return self._anchors[1]

    def verify(
        self, files: SourceFiles, ctx: Context, hostnames: Sequence[str] = ()
    ) -> VerifiedBundle:
        return verify_bundle(
            files,
            anchors=self.anchors(),
            hostnames=hostnames or ctx.hostnames,
            now=self.clock(),
            min_days=self.settings.min_days,
        )

    def read_and_verify(
        self, name: str | None, ctx: Context, hostnames: Sequence[str] = ()
    ) -> tuple[LineageSnapshot, VerifiedBundle]:
        """Read a lineage and verify it for `hostnames` (default: the required ones)."""
        name = name or self.selected(ctx)
        snapshot = read_lineage(
            self.settings.live_dir / name, settle_timeout=self.settings.settle_timeout
        )
        bundle = self.verify(snapshot.files, ctx, hostnames)
        for warning in bundle.warnings:
            log.warning("%s: %s", name, warning)
        log.info(
            "%s: version %d verified, leaf %s…, expires %s",
            name,
            snapshot.version,
            bundle.leaf_sha256[:16],
            f"{bundle.not_after:%Y-%m-%d}",
        )
        return snapshot, bundle

    def dane_guard(self, name: str, bundle: VerifiedBundle, ctx: Context) -> None:
        """DANE: refuse a chain that the published TLSA records of a target reject. Asked
        before anything would change what Postfix serves; a no-op changes nothing and so
        needs no DNS."""
        dane.guard(
            self.settings,
            name,
            bundle,
            hostnames=ctx.hostnames,
            served_files=ctx.state.pointed_files(),
            now=self.clock(),
        )

    def selected(self, ctx: Context) -> str:
        if ctx.selection.lineage is None:
            raise RefusedError(str(self.settings.live_dir), ctx.selection.why_none)
        return ctx.selection.lineage

    def served(self, endpoints: Sequence[Endpoint]) -> dict[Endpoint, str]:
        """What each endpoint serves now (one attempt each); unreachable ones are left out."""
        seen = {}
        for endpoint, got in probe.served_all(
            endpoints, timeout=self.settings.probe_timeout
        ).items():
            if isinstance(got, ProbeError):
                log.info("probe %s", got)
            else:
                seen[endpoint] = got
        return seen

    # -- the routine ----------------------------------------------------------------------
    def deploy(
        self, name: str | None = None, *, only_if_ours: bool = False, reading: Reading | None = None
    ) -> Outcome:
        """`reading`: the caller holds the lock and has read Postfix's state under it."""
        if self.settings.dry_run:
            outcomes = self._dry_run(name)
        else:
            held = reading is not None
            lock = self.settings.lock_file, self.settings.lock_timeout
            with contextlib.nullcontext() if held else deploy_lock(*lock):
                ctx = self.context(focus=name, reading=reading)
                if name is not None and only_if_ours and not ctx.selection.ours(name):
                    serving = ctx.selection.lineage
                    why = f"Postfix uses {serving}" if serving else ctx.selection.why_none
                    return Outcome(name, "skipped", detail=(why,))
                # A renewal redeploys just its lineage; no name, every selected one.
                outcomes = self._deploy(ctx, [name] if name else self._everything(ctx))
        error = worst(outcomes)
        if error is not None:
            raise error
        return outcomes[0]

    def deploy_all(self) -> list[Outcome]:
        """Every selected chain (install without a name, the daemon's reconcile): one
        outcome per lineage; a failed one carries its error (`worst` picks the one to raise).
        With one chain, its error is raised."""
        if self.settings.dry_run:
            return self._dry_run(None)
        with deploy_lock(self.settings.lock_file, self.settings.lock_timeout):
            ctx = self.context()
            outcomes = self._deploy(ctx, self._everything(ctx))
        error = worst(outcomes)
        if error is not None and not ctx.selection.several:
            raise error
        return outcomes

    def _everything(self, ctx: Context) -> list[str]:
        return list(ctx.selection.lineages) or [self.selected(ctx)]

    def _layout(self, ctx: Context, *, create: bool) -> Layout:
        """The install dir, checked; several chains need a file each (combined)."""
        if ctx.selection.several and not isinstance(self.install_dir, Combined):
            raise EnvironmentRefusedError(
                f"{self.install_dir.path}: several chains need the combined layout"
            )
        self.install_dir.check(create=create)
        return self.install_dir

    def _installed(self, ctx: Context, name: str, bundle: VerifiedBundle) -> bool:
        """Are `name`'s files these very bytes already? One chain: and every instance's
        main.cf points at them. Several: the file alone (whether main.cf lists them all is
        asked of the whole list: `pointing_everywhere` in `_switch`)."""
        layout = self.install_dir
        if ctx.selection.several and isinstance(layout, Combined):
            return layout.holds_file(name, bundle)
        return all(
            layout.holds(name, bundle.key_pem, bundle.fullchain_pem, i.state.pointed_files())
            for i in ctx.instances
        )

    def _verified(
        self, ctx: Context, names: Sequence[str]
    ) -> tuple[dict[str, VerifiedBundle], dict[str, Outcome], set[str]]:
        """Read and verify each lineage for the names it serves; a refused one is an
        outcome, not a stop. Also returns the lineages already in place (`_installed`),
        read once."""
        bundles: dict[str, VerifiedBundle] = {}
        refused: dict[str, Outcome] = {}
        in_place: set[str] = set()
        for name in names:
            try:
                _, bundle = self.read_and_verify(name, ctx, self._served_for(ctx, name))
                if ctx.selection.several:
                    self._check_slot(ctx, name, algorithm_of(bundle.leaf), names)
                if self._installed(ctx, name, bundle):
                    in_place.add(name)
                elif self._default(ctx, name):
                    # DANE: a default chain (the MX names' TLSA records) whose files change;
                    # each algorithm's chain must match on its own. One already in place is
                    # asked in `_switch` if a reload would serve it.
                    self.dane_guard(name, bundle, ctx)
            except NotSettledError:
                raise  # certbot is at work: wait for it (the daemon does), refuse nothing
            except RefusedError as exc:
                if ctx.selection.several or len(names) > 1:
                    log.error("%s refused: %s; its previous version stays served", name, exc)
                refused[name] = Outcome(name, "refused", detail=(str(exc),), error=exc)
                continue
            bundles[name] = bundle
        return bundles, refused, in_place

    @staticmethod
    def _served_for(ctx: Context, name: str) -> list[str]:
        """The names `name` must cover: those it is served for, else the default ones."""
        return ctx.selection.names_of(name, ctx.hostnames) or list(ctx.hostnames)

    def _default(self, ctx: Context, name: str) -> bool:
        """Is `name` served for the default hostnames (not only for SNI names)?"""
        return set(ctx.hostnames) <= set(self._served_for(ctx, name))

    def _check_slot(self, ctx: Context, name: str, algorithm: str, names: Sequence[str]) -> None:
        """Postfix takes one key per algorithm and name: refuse a lineage whose key is not
        the algorithm it was selected for (its key type changed since), or one named by
        hand whose algorithm another selected lineage serves."""
        where = str(self.settings.live_dir / name)
        expected = ctx.selection.algorithms_of(name)
        if expected and algorithm not in expected:
            raise RefusedError(where, f"its key is now {algorithm}, selected as {expected.pop()}")
        holder = next((c.lineage for c in ctx.selection.chains if c.algorithm == algorithm), name)
        if not expected and holder != name and holder not in names:
            raise RefusedError(where, f"its key is {algorithm}, and {holder} is served for it")

    def _targets(
        self, ctx: Context, bundles: Mapping[str, VerifiedBundle]
    ) -> tuple[dict[str, list[Endpoint]], dict[str, str] | None, bytes | None]:
        """Where each lineage must be proven, the main.cf values (None: what the one install
        says) and the SNI table's bytes (None: no table managed). One chain is proven by any
        client; several, each by a client that offers only its algorithm (chains.py)."""
        if not ctx.selection.several:
            return {n: list(ctx.endpoints) for n in bundles}, None, None
        layout = self.install_dir
        plan = chains.plan(
            ctx.selection,
            hostnames=ctx.hostnames,
            endpoints=ctx.endpoints,
            pointed=ctx.state.pointed_files(),
            table_now=ctx.sni_table,
            deploying={n: algorithm_of(b.leaf) for n, b in bundles.items()},
            path_of=lambda name: str(layout.path / f"{name}.pem"),
        )
        values = {}
        if plan.chain_files:
            values["smtpd_tls_chain_files"] = ", ".join(plan.chain_files)
        if plan.table:
            current = ctx.state.effective.get(sni.PARAM, "")
            tables = sni.pointing(sni.table_path(layout.path), current)
            values[sni.PARAM] = current if tables is None else tables
        table = sni.render(plan.table) if plan.table else None
        if table is not None and table == sni.current_bytes(sni.table_path(layout.path)):
            table = None  # as it is: nothing to switch
        return plan.probes, values, table

    def _deploy(self, ctx: Context, names: Sequence[str]) -> list[Outcome]:
        for note in ctx.notes:
            log.warning("%s", note)
        bundles, outcomes, in_place = self._verified(ctx, names)
        if bundles:
            self._layout(ctx, create=True).clean_temps()
            try:
                outcomes.update(self._switch(ctx, bundles, in_place))
            except PftlsError as exc:
                # One transaction for the lineages that passed: all were undone together.
                kinds = {DeployFailedError: "rolled-back", RefusedError: "refused"}
                action = next((a for k, a in kinds.items() if isinstance(exc, k)), "failed")
                outcomes.update({n: Outcome(n, action, error=exc) for n in bundles})
        return [outcomes[n] for n in names]

    def _switch(
        self, ctx: Context, bundles: Mapping[str, VerifiedBundle], in_place: set[str]
    ) -> dict[str, Outcome]:
        layout = self.install_dir
        probes, params, table = self._targets(ctx, bundles)
        proofs = {e: bundles[n].leaf_sha256 for n, es in probes.items() for e in es}
        # What each endpoint serves now, for the rollback's proof and the no-op check. A
        # name not in the SNI table yet gets the default chains, which are probed anyway.
        listed = ctx.sni_table
        before = self.served([e for e in proofs if e.servername is None or e.servername in listed])
        todo = [n for n in bundles if n not in in_place]
        done = {
            n: Outcome(n, "deployed", b.leaf_sha256, b.warnings, tuple(map(str, probes[n])))
            for n, b in bundles.items()
        }
        switches: list[Callable[[], Installed]] = [
            partial(layout.install, n, bundles[n], chain_files=ctx.chain_files) for n in todo
        ]
        if table is not None:
            switches.append(partial(sni.switch, sni.table_path(layout.path), table))
        if not switches and (params is None or ctx.pointing_everywhere(params)):
            if all(before.get(t) == sha for t, sha in proofs.items()):
                log.info("%s: already installed and served: nothing to do", ", ".join(bundles))
                return {n: replace(o, action="unchanged") for n, o in done.items()}
            # Installed but not served (a missed reload, a killed run): reload only, once DANE
            # agrees, as what Postfix serves is about to change.
            for n, bundle in bundles.items():
                if self._default(ctx, n) and any(
                    before.get(e) != bundle.leaf_sha256 for e in probes[n]
                ):
                    self.dane_guard(n, bundle, ctx)
            up = self._reload(ctx)
            if not up:
                return {n: self._not_running(o) for n, o in done.items()}
            self._prove(proofs, up)
            return {n: replace(o, action="reloaded") for n, o in done.items()}
        installed, running = self._apply(switches, ctx, proofs, before, params)
        # Keep what was served before this deploy (for rollback) and the new files.
        keep = {*map(Path, ctx.state.pointed_files()), *(f for i in installed for f in i.files)}
        keep.update(Path(f) for files in ctx.sni_table.values() for f in files)
        keep.update(i.previous for i in installed if i.previous is not None)
        for name, removed in layout.prune(todo, keep):
            log.info("%s: pruned %s", name, removed)
        if not running:
            return {n: self._not_running(o) for n, o in done.items()}
        for name in todo[:_LISTED] if proofs else ():
            log.info("%s: deployed; Postfix serves %s…", name, bundles[name].leaf_sha256[:16])
        return done

    @staticmethod
    def _not_running(done: Outcome) -> Outcome:
        log.warning("Postfix is not running: installed, not reloaded or probed")
        return replace(done, action="installed-not-running", proven_on=())

    def _apply(
        self,
        switches: Sequence[Callable[[], Installed]],
        ctx: Context,
        proofs: Mapping[Endpoint, str],
        before: dict[Endpoint, str],
        params: Mapping[str, str] | None = None,
    ) -> tuple[list[Installed], bool]:
        """Switch the files in, point main.cf at them (`params`, else what the one switch
        says), check, reload, prove each endpoint serves its `proofs` certificate; or undo
        it all. Returns what was installed and whether Postfix was running."""
        txn = Transaction(*self.postfixes)
        try:
            for switch in switches:
                txn.switch(switch)
        except BaseException:
            txn.undo()  # only files were switched: main.cf untouched, nothing reloaded
            raise
        installed = txn.switched
        try:
            log.info("switched in %s", ", ".join(str(f) for i in installed for f in i.files))
            wanted = params if params is not None else installed[0].params
            for instance in ctx.instances:
                effective = instance.state.effective
                changed = {k: v for k, v in wanted.items() if effective.get(k, "") != v}
                txn.set_main_cf(changed, instance.postfix)
                if changed:
                    # Only a main.cf change can break Postfix's configuration; a routine
                    # renewal (same file name, new bytes already verified) skips the check.
                    instance.postfix.check()
            up = self._reload(ctx)
            if not up:
                return installed, False
            self._prove(proofs, up)
        except BaseException as exc:
            # Every exit path, a signal included, puts the previous state back.
            roll_back(txn, dict(before), self.settings.probe_timeout, reason=exc)
            raise  # roll_back raised for PftlsError; other exceptions continue as they were
        return installed, True

    def _reload(self, ctx: Context) -> list[Instance]:
        """Reload every instance (a failure raises); returns those running."""
        return [i for i in ctx.instances if i.postfix.reload()]

    def _prove(self, proofs: Mapping[Endpoint, str], running: Sequence[Instance] = ()) -> None:
        """Each endpoint of a running instance serves its certificate, all within one
        deadline."""

        if running:
            live = {e for i in running for e in i.endpoints}
            if self.settings.probes:
                live.update(self.settings.probes)
            proofs = {
                e: sha
                for e, sha in proofs.items()
                if replace(e, algorithm=None, servername=None) in live
            }
        if not proofs:
            return
        probe.wait_for_each(proofs, timeout=self.settings.probe_timeout)
        where = list(map(str, proofs))
        if len(where) > _LISTED:
            where = [*where[:_LISTED], f"and {len(where) - _LISTED} more"]
        log.info("probe: %s serve the new certificate", ", ".join(where))

    def rollback(self) -> Outcome:
        """Switch back to the version installed before the current one, verified again."""
        with deploy_lock(self.settings.lock_file, self.settings.lock_timeout):
            ctx = self.context()
            self.install_dir.check()
            pointed = ctx.state.pointed_files()
            name = self.install_dir.lineage_of(pointed)
            if ctx.selection.several:
                raise EnvironmentRefusedError(
                    "main.cf lists several chains: rollback handles one; install the "
                    "previous version with `install NAME` after certbot's own rollback"
                )
            if name is None:
                raise EnvironmentRefusedError(
                    "main.cf does not point into the install dir: nothing to roll back"
                )
            files, switch = self.install_dir.previous(
                name, pointed, chain_files=ctx.state.uses_chain_files
            )
            bundle = self.verify(files, ctx)
            self.dane_guard(name, bundle, ctx)
            before = self.served(ctx.endpoints)
            _, running = self._apply(
                [switch], ctx, dict.fromkeys(ctx.endpoints, bundle.leaf_sha256), before
            )
            log.info("%s: rolled back", name)
            proven = tuple(map(str, ctx.endpoints)) if running else ()
            return Outcome(name, "rolled-back", bundle.leaf_sha256, bundle.warnings, proven)

    def _dry_run(self, name: str | None) -> list[Outcome]:
        """What `deploy(name)` would do, each lineage's plan in its outcome's `detail` (the
        last one's also says what all of them would change together)."""
        ctx = self.context(focus=name)
        for note in ctx.notes:
            log.warning("%s", note)
        layout = self._layout(ctx, create=False)
        names = [name] if name else self._everything(ctx)
        bundles, outcomes, in_place = self._verified(ctx, names)
        probes, params, table = self._targets(ctx, bundles)
        common: list[str] = []
        changes = params is not None
        for n, bundle in bundles.items():
            if n in in_place:
                plan = [f"{n}: already installed"]
            else:
                files, values = layout.plan(n, chain_files=ctx.chain_files)
                plan = [f"would write {line}" for line in files]
                common += _postconf_plan(ctx, values) if params is None else []
                changes = True
            outcomes[n] = Outcome(
                n, "dry-run", bundle.leaf_sha256, bundle.warnings, detail=tuple(plan)
            )
        if params is not None:  # several chains: the lists they make together
            common.append(f"chains: {params.get('smtpd_tls_chain_files') or 'none'}")
            if table is not None:
                common.append(f"would write {sni.table_path(layout.path)} (0600)")
            common += _postconf_plan(ctx, params)
        targets = [str(e) for es in probes.values() for e in es]
        if not bundles:
            common.append("nothing to deploy")
        elif changes:
            common.append(
                "would run postfix check (if main.cf changes), postfix reload, and probe "
                + (", ".join(targets) or "nothing")
            )
        last = names[-1]
        outcomes[last] = replace(outcomes[last], detail=(*outcomes[last].detail, *common))
        return [outcomes[n] for n in names]


def _postconf_plan(ctx: Context, values: Mapping[str, str]) -> list[str]:
    """What a deploy would set, for each instance whose main.cf differs (one postconf -e
    per instance runs them all)."""
    plan = []
    for instance in ctx.instances:
        where = f"-c {instance.postfix.config_dir} " if len(ctx.instances) > 1 else ""
        plan += [
            f"would run postconf {where}-e '{k} = {v}'"
            for k, v in values.items()
            if instance.state.effective.get(k, "") != v
        ]
    return plan


__all__ = ["Context", "Deployer", "Transaction", "roll_back", "utcnow"]
