"""The package's shape, checked: the deploy hook (run inside every certbot renewal) loads
the core alone, and each module of the core opens with its contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pftls_hook"
CORE = (
    "chains", "config", "deploy", "errors", "fsutil", "hook", "install", "lineage", "lock",
    "outcome", "pem", "postfix", "probe", "runner", "select", "sni", "verify",
    "dane",  # the DANE guard, a stage of the deploy; dnspython itself loads only to look up
)  # fmt: skip
# What the CLI itself needs beyond the core: its own module, the package, and the setup
# package's namespace (the parser's choices; no setup module).
ENTRY = ("pftls_hook", "pftls_hook.__main__", "pftls_hook.cli", "pftls_hook.setup")


def loaded_by(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    """Run the real entry point with `argv` and list every module of the package and every
    third-party package it loaded."""
    code = (
        "import os, sys, runpy\n"
        f"os.environ.update({env or {}!r})\n"
        f"sys.argv = ['pftls-hook', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('pftls_hook', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith("
        "('pftls_hook', 'cryptography', 'watchdog', 'certbot', 'dns', 'acme', 'lexicon')))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.splitlines()[-1].split())  # after whatever the command printed


def test_deploy_hook_path_imports_only_the_core(tmp_path: Path) -> None:
    """The real deploy-hook entry (it fails: no such lineage)."""
    lineage = {"RENEWED_LINEAGE": str(tmp_path / "live" / "x")}
    loaded = loaded_by("--live-dir", str(tmp_path / "live"), "deploy-hook", env=lineage)
    loaded = {m for m in loaded if not m.startswith("cryptography")}  # verify's dependency
    allowed = {*ENTRY, *(f"pftls_hook.{m}" for m in CORE)}
    assert "pftls_hook.hook" in loaded, loaded  # the check saw the real path
    assert loaded <= allowed, f"not core: {sorted(loaded - allowed)}"


def test_help_loads_no_command(tmp_path: Path) -> None:
    """`--help` (and a usage error) load the parser alone: no core module, no cryptography."""
    for argv in (["--help"], ["install", "--no-such-option"]):
        loaded = loaded_by(*argv)
        assert "pftls_hook.cli" in loaded, loaded  # the check saw the real entry point
        assert loaded <= {*ENTRY, "pftls_hook.config", "pftls_hook.errors"}, (argv, loaded)


def test_every_module_opens_with_its_contract() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.split()) >= 5, f"{path.name}: no contract docstring"
