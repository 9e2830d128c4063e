"""A reliability case's outcomes, counted as its tests run, then recorded as its figure.

    card = Scorecard("hostile", "Hostile and broken input")
    with card.attempt("garbage-cert") as notes:
        ...                      # assertions; notes.append("exit 3: cert.pem: not PEM")
    card.record("72/72 refused cleanly")   # tests/support/figures.py: <dir>/hostile.json

An attempt whose body raises is counted as failed (and the exception goes on, so the test
fails too); the details list every attempt, in order, with its notes or its failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .figures import record


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    note: str
    group: str


@dataclass
class Scorecard:
    case: str
    title: str
    outcomes: list[Outcome] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # anything else worth a number

    @contextmanager
    def attempt(self, name: str, *, group: str = "") -> Iterator[list[str]]:
        notes: list[str] = []
        try:
            yield notes
        except BaseException as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.outcomes.append(Outcome(name, False, f"FAILED: {first[:300]}", group))
            raise
        self.outcomes.append(Outcome(name, True, "; ".join(notes), group))

    def count(self, group: str = "") -> tuple[int, int]:
        """(passed, total) of the attempts in `group`."""
        mine = [o for o in self.outcomes if o.group == group]
        return sum(o.passed for o in mine), len(mine)

    def details(self) -> list[str]:
        lines = []
        for o in self.outcomes:
            label = f"{o.group}: {o.name}" if o.group else o.name
            lines.append(f"{label}: {o.note}" if o.note else label)
        return lines

    def record(self, figure: str, **numbers: object) -> None:
        numbers = {"counts": dict(self.counts), **numbers} if self.counts else numbers
        record(self.case, title=self.title, figure=figure, details=self.details(), **numbers)


__all__ = ["Outcome", "Scorecard"]
