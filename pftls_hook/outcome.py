"""What a deploy did to one lineage: data the CLI renders, the daemon records and metrics
count; the core never prints.

Contract: `Outcome` is immutable; `worst(outcomes)` picks the error that decides a command
deploying several lineages. Nothing here imports cryptography (the no-op deploy hook,
hook.py, answers with an `Outcome` without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pftls_hook.errors import DeployFailedError, PftlsError, RefusedError, RollbackFailedError


@dataclass(frozen=True)
class Outcome:
    lineage: str
    # deployed | unchanged | reloaded | installed-not-running | rolled-back | dry-run | skipped
    # | refused | failed (several chains: this lineage's `error`; the others went on)
    action: str
    leaf_sha256: str = ""
    warnings: tuple[str, ...] = ()
    proven_on: tuple[str, ...] = ()  # endpoints shown to serve it; () = not proven
    detail: tuple[str, ...] = field(default=())  # the plan (dry run) or why it was skipped
    error: PftlsError | None = field(default=None, compare=False)

    def __str__(self) -> str:
        served = f" ({self.leaf_sha256[:16]}…)" if self.leaf_sha256 else ""
        proven = f", proven on {', '.join(self.proven_on)}" if self.proven_on else ""
        return f"{self.lineage}: {self.action}{served}{proven}"


def worst(outcomes: Sequence[Outcome]) -> PftlsError | None:
    """The error that decides a command's result when several lineages were deployed: a
    failed rollback, then a rolled-back deploy, then anything else, then a refusal."""
    errors = [o.error for o in outcomes if o.error is not None]
    for kind in (RollbackFailedError, DeployFailedError):
        found = next((e for e in errors if isinstance(e, kind)), None)
        if found is not None:
            return found
    others = [e for e in errors if not isinstance(e, RefusedError)]
    return next(iter(others or errors), None)
