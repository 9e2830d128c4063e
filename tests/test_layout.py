"""The package's shape, checked: the deploy hook (run inside every certbot renewal) loads
the core alone, and each module of the core opens with its contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pftls_hook"
CORE = (
    "chains", "config", "deploy", "errors", "fsutil", "install", "lineage", "lock", "postfix",
    "probe", "runner", "select", "sni", "verify",
    "dane",  # the DANE guard, a stage of the deploy; dnspython itself loads only to look up
)  # fmt: skip
# What the CLI itself needs beyond the core: its own module, the package, and the setup
# package's namespace (the parser's choices; no setup module).
ENTRY = ("pftls_hook", "pftls_hook.__main__", "pftls_hook.cli", "pftls_hook.setup")


def test_deploy_hook_path_imports_only_the_core(tmp_path: Path) -> None:
    """Run the real deploy-hook entry (it fails: no such lineage) and list every module of
    the package and every third-party package it loaded."""
    code = (
        "import os, sys, runpy\n"
        f"os.environ['RENEWED_LINEAGE'] = {str(tmp_path / 'live' / 'x')!r}\n"
        "sys.argv = ['pftls-hook', '--live-dir', "
        f"{str(tmp_path / 'live')!r}, 'deploy-hook']\n"
        "try:\n    runpy.run_module('pftls_hook', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith("
        "('pftls_hook', 'watchdog', 'certbot', 'dns', 'acme', 'lexicon')))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.split())
    allowed = {*ENTRY, *(f"pftls_hook.{m}" for m in CORE)}
    assert "pftls_hook.deploy" in loaded, result.stdout  # the check saw the real path
    assert loaded <= allowed, f"not core: {sorted(loaded - allowed)}"


def test_every_module_opens_with_its_contract() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.split()) >= 5, f"{path.name}: no contract docstring"
