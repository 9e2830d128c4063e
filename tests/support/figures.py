"""The figures a reliability test measured, for docs/reliability.md.

When `$PFTLS_RELIABILITY_OUT` names a directory, `record(case, ...)` writes
`<dir>/<case>.json`: {"case", "title", "figure" (one short human line, e.g. "200/200 kills
survived"), "details" (a list of lines), plus any numbers the test adds; a `table`
({"columns": [...], "rows": [[...], ...]}) is shown as a table}. scripts/
reliability.py runs the tests with that variable set and renders the page from these files;
without it, nothing is written and the test only asserts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

OUT_ENV = "PFTLS_RELIABILITY_OUT"


def record(
    case: str, *, title: str, figure: str, details: Sequence[str], **numbers: object
) -> None:
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    report = {"case": case, "title": title, "figure": figure, "details": list(details), **numbers}
    (directory / f"{case}.json").write_text(json.dumps(report, indent=2) + "\n")


__all__ = ["OUT_ENV", "record"]
