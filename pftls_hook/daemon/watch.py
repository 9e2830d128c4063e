"""The `watch` daemon: every change certbot makes under the live dir reaches Postfix.

Contract: `run(settings, reload_settings)` watches `settings.live_dir` until SIGTERM or
SIGINT and then returns normally; it raises only for what stops it from starting. It deploys
with the same `Deployer.deploy` as the deploy hook and `install`, under the same lock, so
whichever of hook and daemon comes second finds the certificate installed and served and
does nothing. A failed deploy is logged, reported (STATUS=, the state file that `status`
shows) and retried with backoff; the daemon never dies of it, and the previous certificate
stays served (the deploy routine rolls back).

Why each part:
- One recursive inotify watch on the live dir, not one per lineage: a watch on a deleted
  directory stops for good, and new lineages appear as new subdirectories. Links are not
  followed; a re-pointed link arrives as delete + create or as a move onto the link, so the
  lineage name is taken from both `src_path` and `dest_path`. Only create/delete/move are
  subscribed: open/close events would make our own reads wake us.
- The watchdog callback only records the lineage name and wakes the main loop: an exception
  in a callback kills watchdog's observer, and certbot fires 16 events per renewal.
- The main loop (the main thread) deploys as soon as every changed lineage is settled:
  certbot's sequence ends with all four links on one version and no `previous_*.pem`
  (`read_lineage` tells), and every event it makes before that end finds the lineage
  unsettled. A quiet period (`debounce`) after the last event is only the fallback for a
  lineage that does not settle; one left half-renewed for longer than `settle_timeout` (an
  interrupted certbot) that Postfix does not use is reported and skipped. The lineage
  deployed is the one `select` chooses; others are never deployed.
- Reconcile (deploy the chosen lineage if it is not installed and served) at start, every
  `reconcile_interval`, after SIGHUP and after an inotify queue overflow, which watchdog
  only logs: a logging handler on its logger hears it.
- It sleeps in select(2) on a self-pipe, woken by the observer thread, by signals
  (`signal.set_wakeup_fd`) or by its next deadline (quiet period, retry, reconcile,
  WATCHDOG=1). Signal handlers only set flags: a Condition or Event is not safe to touch
  from a handler running on the thread that may hold its lock.
- SIGTERM during a deploy lets that deploy finish (it is bounded by its own timeouts; the
  daemon waits at most 10 s for the deploy lock) rather than cutting it at an arbitrary
  point; when idle the daemon exits at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from pftls_hook import metrics
from pftls_hook.config import Settings
from pftls_hook.daemon import state as watchstate
from pftls_hook.daemon.notify import Notifier
from pftls_hook.deploy import Deployer
from pftls_hook.errors import DaneRefusedError, NotSettledError, PftlsError, RefusedError
from pftls_hook.lineage import list_lineages, read_lineage
from pftls_hook.outcome import Outcome

log = logging.getLogger("pftls-hook")

FIRST_RETRY = 5.0  # a failed deploy is retried after 5 s, 10 s, 20 s, ... up to MAX_RETRY
MAX_RETRY = 600.0
# A DANE refusal waits for the admin's DNS change, not for a fault to clear: look again
# often enough that the renewal follows the published record within minutes.
DANE_MAX_RETRY = 300.0
SETTLE_POLL = 0.25  # first re-check of an unsettled lineage; doubles up to MAX_RETRY
MISSING_DIR_CHECK = 60.0  # while the live dir does not exist, look for it this often
# The deploy hook holding the lock is deploying the same renewal: waiting long for it gains
# nothing, and a blocked main loop sends no WATCHDOG=1.
DAEMON_LOCK_TIMEOUT = 10.0
_LONGEST_SLEEP = 3600.0
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class Inbox:
    """The hand-off from watchdog's thread to the main loop: names, flags, a wake-up byte."""

    def __init__(self, wake_fd: int) -> None:
        self._lock = threading.Lock()
        self._changed: dict[str, float] = {}  # lineage name -> monotonic time of last event
        self._reconcile = ""  # why every lineage must be looked at again, if it must
        self._rewatch = False
        self._wake_fd = wake_fd

    def changed(self, name: str) -> None:
        with self._lock:
            self._changed[name] = time.monotonic()
        self._wake()

    def reconcile(self, why: str, *, rewatch: bool = False) -> None:
        with self._lock:
            self._reconcile = why
            self._rewatch = self._rewatch or rewatch
        self._wake()

    def take(self) -> tuple[dict[str, float], str, bool]:
        """What arrived since the last call: changed lineages, a reason to reconcile, and
        whether the live dir's watch must be rebuilt."""
        with self._lock:
            taken = (self._changed, self._reconcile, self._rewatch)
            self._changed, self._reconcile, self._rewatch = {}, "", False
        return taken

    def _wake(self) -> None:
        try:
            os.write(self._wake_fd, b"\0")  # signal numbers are never 0
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is already pending
        except OSError:
            pass  # closed: the daemon is stopping


class LineageEvents(FileSystemEventHandler):
    """Runs on watchdog's thread: turn a path under the live dir into a lineage name."""

    def __init__(self, root: str, inbox: Inbox) -> None:
        self._root = root
        self._prefix = root.rstrip(os.sep) + os.sep
        self._inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, event.dest_path):
            path = os.fsdecode(raw)
            if path == self._root:
                # The live dir itself was deleted or moved: its watch is dead now.
                self._inbox.reconcile("the live dir itself was removed or moved", rewatch=True)
            elif path.startswith(self._prefix):
                self._inbox.changed(path[len(self._prefix) :].split(os.sep, 1)[0])


class OverflowAlarm(logging.Handler):
    """watchdog reports an inotify queue overflow only as a log line: events were lost, so
    every lineage must be looked at again."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__(logging.WARNING)
        self._inbox = inbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            overflowed = "queue overflow" in record.getMessage().lower()
        except Exception:  # a malformed record must not break watchdog's logging call
            return
        if overflowed:
            self._inbox.reconcile("inotify queue overflow: events were lost")


def _iso(at: float | None = None) -> str:
    when = datetime.now(UTC) if at is None else datetime.now(UTC) + timedelta(seconds=at)
    return when.isoformat(timespec="seconds")


class Daemon:
    def __init__(
        self, settings: Settings, reload_settings: Callable[[], Settings], notifier: Notifier
    ) -> None:
        self._reload_settings = reload_settings
        self.notifier = notifier
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.inbox = Inbox(self._wake_w)
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int, str] | None = None  # st_dev, st_ino, real path
        self._unwatched = ""  # why there is no watch, when there is none

        # Set by signal handlers (and only read elsewhere).
        self._stop = False
        self._hups = 0
        self._hups_seen = 0

        # What is waiting to be done.
        self._dirty: dict[str, float] = {}  # lineage name -> end of its quiet period
        self._reconcile = True
        self._next_reconcile = 0.0
        self._unsettled: dict[str, float] = {}  # lineage name -> first seen unsettled
        self._stuck_reported: set[str] = set()
        self._settle_wait = SETTLE_POLL
        self._retry_at = 0.0
        self._backoff = FIRST_RETRY
        self._wake_at = float("inf")  # when _step wants to run again
        self._next_ping = 0.0

        # What was done.
        self._serving: str | None = None
        self._leaves: dict[str, str] = {}  # lineage -> its leaf in this daemon's last outcome
        self._ready = False
        self._state = watchstate.WatchState(pid=os.getpid(), started=_iso())
        self._use(settings)

    def _use(self, settings: Settings) -> None:
        self.settings = settings
        self.deployer = Deployer(
            replace(settings, lock_timeout=min(settings.lock_timeout, DAEMON_LOCK_TIMEOUT))
        )
        self._state_path = watchstate.state_file(settings)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        alarm = OverflowAlarm(self.inbox)
        logging.getLogger("watchdog").addHandler(alarm)
        log.info("watch: started (pid %d)", os.getpid())
        try:
            self._loop()
        finally:
            self.notifier.stopping()
            log.info("stopping")
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=1)
            logging.getLogger("watchdog").removeHandler(alarm)
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._report(phase="stopped", status="stopped")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hups += 1
        else:
            self._stop = True

    def _loop(self) -> None:
        while not self._stop:
            now = time.monotonic()
            try:
                self._iterate(now)
            except Exception as exc:  # a bug: report it, back off, stay up
                log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=True)
                self._failed("", f"internal error: {type(exc).__name__}: {exc}", now)
            self._sleep(self._next_wake(time.monotonic()))

    def _iterate(self, now: float) -> None:
        self._ping(now)
        if self._hups != self._hups_seen:
            self._hups_seen = self._hups
            self._reload(now)
        changed, why, rewatch = self.inbox.take()
        for name, at in changed.items():
            self._dirty[name] = at + self.settings.debounce
            self._retry_at = 0.0  # new bytes deserve a prompt try, even while backing off
        if rewatch:
            self._ensure_watch()
        if why or now >= self._next_reconcile:
            self._begin_reconcile(now, why)
        self._step(now)

    def _ping(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + interval

    def _next_wake(self, now: float) -> float:
        deadlines = [self._next_reconcile, self._wake_at]
        if self.notifier.watchdog_interval is not None:
            deadlines.append(self._next_ping)
        return min(max(0.0, min(deadlines) - now), _LONGEST_SLEEP)

    def _sleep(self, timeout: float) -> None:
        if self._stop:
            return
        readable, _, _ = select.select([self._wake_r], [], [], timeout)
        if readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    # -- watching ---------------------------------------------------------------------------
    def _ensure_watch(self) -> bool:
        """Watch the live dir if it exists (again, if it was replaced); False if it does not."""
        live = self.settings.live_dir
        try:
            real = os.path.realpath(live, strict=True)
            st = os.stat(real)
        except OSError as exc:
            if self._watched is not None:
                log.warning("%s is gone: waiting for it to come back", live)
                self._unwatch()
            self._unwatched = f"waiting for {live} ({exc.strerror})"
            return False
        ident = (st.st_dev, st.st_ino, real)
        if ident == self._watched and self._watch_alive():
            return True
        self._unwatch()
        if self._observer is None or not self._observer.is_alive():
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
        try:
            self._observer.schedule(
                LineageEvents(real, self.inbox), real, recursive=True, event_filter=_EVENTS
            )
        except OSError as exc:  # e.g. the inotify watch limit (fs.inotify.max_user_watches)
            log.error("%s: cannot watch: %s; trying again in %g s", live, exc, MISSING_DIR_CHECK)
            self._unwatched = f"cannot watch {live}: {exc}"
            return False
        self._watched = ident
        log.info("watching %s recursively", real)
        return True

    def _watch_alive(self) -> bool:
        observer = self._observer
        return (
            observer is not None
            and observer.is_alive()
            and bool(observer.emitters)
            and all(e.is_alive() for e in observer.emitters)
        )

    def _unwatch(self) -> None:
        if self._observer is not None:
            self._observer.unschedule_all()
        self._watched = None

    # -- deciding ---------------------------------------------------------------------------
    def _begin_reconcile(self, now: float, why: str) -> None:
        if why:
            log.warning("%s: looking at every lineage again", why)
        watching = self._ensure_watch()
        self._reconcile = True
        self._retry_at = 0.0
        interval = self.settings.reconcile_interval
        self._next_reconcile = now + (interval if watching else min(interval, MISSING_DIR_CHECK))

    def _step(self, now: float) -> None:
        self._wake_at = float("inf")
        if not (self._reconcile or self._dirty):
            return
        live = self.settings.live_dir
        if self._watched is None:
            self._idle(self._unwatched)
            return
        quiet_at = max(self._dirty.values(), default=0.0)
        if quiet_at > now and not all(map(self._settled_now, self._dirty)):
            self._wake_at = quiet_at  # certbot is still moving links: its next event wakes us
            return
        names = list_lineages(live) if self._reconcile else sorted(self._dirty)
        if not names:
            self._idle(f"no lineage in {live} yet")
            return
        if not self._settled(names, now):
            self._wake_at = now + self._settle_wait
            self._settle_wait = min(self._settle_wait * 2, MAX_RETRY)
            return
        self._settle_wait = SETTLE_POLL
        if now < self._retry_at:
            self._wake_at = self._retry_at
            return
        self._sync(now)

    def _settled_now(self, name: str) -> bool:
        try:
            read_lineage(self.settings.live_dir / name, settle_timeout=0)
        except NotSettledError:
            return False
        except RefusedError:
            pass  # settled but unusable (or gone): deploy() will say why
        return True

    def _settled(self, names: list[str], now: float) -> bool:
        """Are all lineages that can matter settled? One certbot left half-renewed for longer
        than settle_timeout is skipped (choose() skips it too), unless Postfix uses it."""
        waiting = False
        for name in names:
            try:
                read_lineage(self.settings.live_dir / name, settle_timeout=0)
            except NotSettledError as exc:
                since = self._unsettled.setdefault(name, now)
                if now - since < self.settings.settle_timeout:
                    self._set_status(f"{name}: waiting for certbot to finish ({exc.reason})")
                    waiting = True
                elif name == self._serving:
                    self._stuck(name, exc, "Postfix keeps the installed certificate")
                    waiting = True
                else:
                    self._stuck(name, exc, "skipped")
                continue
            except RefusedError:
                pass  # settled but unusable: choose() skips it, deploy() says why
            self._unsettled.pop(name, None)
            self._stuck_reported.discard(name)
        for gone in set(self._unsettled) - set(names):
            del self._unsettled[gone]
        return not waiting

    def _stuck(self, name: str, exc: NotSettledError, consequence: str) -> None:
        status = f"{name}: half-renewed ({exc.reason}): {consequence}"
        first = name not in self._stuck_reported
        if first:
            self._stuck_reported.add(name)
            log.warning(
                "%s: still not settled after %g s (%s): %s",
                name,
                self.settings.settle_timeout,
                exc,
                consequence,
            )
        if name == self._serving and (first or not self._ready):
            # This wait may last until certbot runs again: READY=1 must not wait for it.
            self._report(phase="waiting", status=status)
        else:
            self._set_status(status)

    def _sync(self, now: float) -> None:
        try:
            if self._reconcile:
                # The selected chains; a no-op (one probe each) when installed and served.
                outcomes = metrics.deploy_all(self.deployer)
            else:
                outcomes = [
                    metrics.deploy(self.deployer, n, only_if_ours=True) for n in sorted(self._dirty)
                ]
        except NotSettledError as exc:
            # certbot started again between our check and the deploy's read: wait for it.
            log.info("%s", exc)
            self._wake_at = now + self.settings.debounce
            return
        except DaneRefusedError as exc:
            self._failed(exc.file, str(exc), now, cap=DANE_MAX_RETRY, publish=exc.publish)
            return
        except (PftlsError, OSError) as exc:
            self._failed(self._serving or "", str(exc), now)
            return
        self._dirty.clear()
        self._reconcile = False
        self._backoff = FIRST_RETRY
        self._retry_at = 0.0
        status = None
        done = [o for o in outcomes if o.error is None and o.action != "skipped"]
        for outcome in outcomes:
            if outcome.action == "skipped":
                log.info("%s changed; %s: ignored", outcome.lineage, "; ".join(outcome.detail))
            elif outcome.error is None:
                status = self._done(outcome, status or self._state.status, done)
        if status is not None:  # one report a sync: READY=1 after a reload says it all
            self._report(phase="idle", status=status)
        failed = next((o for o in outcomes if o.error is not None), None)
        if failed is not None:  # several chains: the others went on; retry this one
            self._reconcile = True
            error = failed.error
            publish = error.publish if isinstance(error, DaneRefusedError) else ()
            cap = DANE_MAX_RETRY if isinstance(error, DaneRefusedError) else MAX_RETRY
            self._failed(failed.lineage, str(error), now, cap=cap, publish=publish)

    def _done(self, outcome: Outcome, status: str, done: Sequence[Outcome]) -> str:
        """The status once `outcome` is done, `status` being the one before it; `done`:
        every outcome of this sync that succeeded."""
        self._serving = outcome.lineage  # deploy() has logged what it did
        self._state.serving = outcome.lineage
        last = self._state.last_outcome
        seen = self._leaves.get(outcome.lineage)
        self._leaves[outcome.lineage] = outcome.leaf_sha256
        if (
            outcome.action == "unchanged"
            # A no-op of a certificate this daemon has not seen served: someone else (the
            # deploy hook) switched it meanwhile, which the status must name.
            and seen in (None, outcome.leaf_sha256)
            and last is not None
            and status.startswith(f"{last.lineage}: {last.action} (")  # what it says now
            and any((o.lineage, o.leaf_sha256) == (last.lineage, last.leaf_sha256) for o in done)
        ):
            # A later event for the certificate just deployed, or a no-op of another chain
            # in a reconcile that found that certificate still served: "deployed (…) at T"
            # still says what changed last and since when; "unchanged" would hide it. A
            # no-op alone of another lineage (deployed by someone else) says what is served.
            return status
        self._state.last_outcome = watchstate.LastOutcome(
            outcome.lineage, outcome.action, outcome.leaf_sha256, _iso()
        )
        return f"{outcome} at {_iso()}"

    def _failed(
        self,
        lineage: str,
        error: str,
        now: float,
        *,
        cap: float = MAX_RETRY,
        publish: tuple[str, ...] = (),
    ) -> None:
        delay = min(self._backoff, cap)
        self._backoff = min(self._backoff * 2, cap)
        self._retry_at = now + delay
        self._wake_at = self._retry_at
        log.error("%s; retrying in %g s", error, delay)
        self._state.last_failure = watchstate.LastFailure(
            lineage, error, _iso(), _iso(delay), list(publish)
        )
        waiting = f"; waiting for DNS: {'; '.join(publish)}" if publish else ""
        self._report(phase="failing", status=f"failed: {error} (retry in {delay:g} s){waiting}")

    def _idle(self, status: str) -> None:
        """Nothing can be deployed now; an event or the next reconcile will look again."""
        self._dirty.clear()
        self._reconcile = False
        metrics.refresh(self.deployer)
        self._report(phase="waiting", status=status)

    # -- reporting --------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        if status != self._state.status:
            self._state.status = status
            self.notifier.status(status)

    def _report(self, *, phase: str, status: str) -> None:
        """After a decision: systemd's STATUS= (and READY=1 the first time), the state file."""
        self._state.phase, self._state.status, self._state.updated = phase, status, _iso()
        if self._ready or phase == "stopped":
            self.notifier.status(status)
        else:
            self._ready = True
            self.notifier.ready(status)
        watchstate.write(self._state_path, self._state)

    def _reload(self, now: float) -> None:
        self.notifier.reloading()
        try:
            settings = self._reload_settings()
        except PftlsError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the old one: %s", exc)
            self.notifier.ready()
            return
        log.info("SIGHUP: configuration re-read")
        if settings.live_dir != self.settings.live_dir:
            self._unwatch()
        self._use(settings)
        self._ready = False  # READY=1 again once the reconcile below has run
        self._backoff = FIRST_RETRY
        self._begin_reconcile(now, "")


def run(settings: Settings, reload_settings: Callable[[], Settings]) -> None:
    """The `watch` command; `reload_settings` rebuilds the settings on SIGHUP."""
    Daemon(settings, reload_settings, Notifier.from_environ(os.environ, os.getpid())).run()


__all__ = ["Daemon", "Inbox", "LineageEvents", "OverflowAlarm", "run"]
