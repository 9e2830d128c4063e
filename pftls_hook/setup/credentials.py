"""The dns-ovh credentials file, checked as certbot-dns-ovh will read it, before certbot runs.

Contract: `check_credentials(path)` returns nothing when the file is one certbot-dns-ovh can
use, else raises one `UsageError` whose one line names the file and the check that failed:
- a regular file owned by root with no group/other permission bits (the OVH keys can change
  any record of the zone; certbot itself only warns);
- UTF-8 text (certbot fails on other bytes with a UnicodeDecodeError);
- parsed by configobj, certbot's own parser, so quotes, comments and duplicates mean what
  they mean to certbot;
- the four keys certbot-dns-ovh requires, each present and non-empty;
- `dns_ovh_endpoint` one of the names lexicon's OVH provider maps to an API host (any other
  name gives lexicon no URL: certbot fails with "Invalid URL 'None/auth/time'").
Secret values are never shown; only the endpoint's value is, since it is not a secret.
Nothing is contacted: this is a check of the file alone.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import configobj

from pftls_hook.errors import UsageError

# The names lexicon 3.x's OVH provider maps to an API base URL (ENDPOINTS in
# lexicon/_private/providers/ovh.py); tests/test_obtain.py compares with the installed one.
ENDPOINTS = (
    "ovh-eu",
    "ovh-ca",
    "ovh-us",
    "kimsufi-eu",
    "kimsufi-ca",
    "soyoustart-eu",
    "soyoustart-ca",
)
# certbot-dns-ovh's required variables: `dns_ovh_` + its option names.
KEYS = (
    "dns_ovh_endpoint",
    "dns_ovh_application_key",
    "dns_ovh_application_secret",
    "dns_ovh_consumer_key",
)
# A real file is four short lines; this bounds what a wrong path (a log, a device) makes us read.
MAX_BYTES = 64 * 1024


def _require_private(path: Path) -> os.stat_result:
    quoted = shlex.quote(str(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(
            f"{path}: dns-ovh credentials file not found: create it, owned by root, mode 600"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot check dns-ovh credentials: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: dns-ovh credentials must be a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise UsageError(
            f"{path}: dns-ovh credentials owned by uid {st.st_uid}, not root: "
            f"run `chown root:root {quoted}`"
        )
    if st.st_mode & 0o077:
        raise UsageError(
            f"{path}: dns-ovh credentials open to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 600 {quoted}`"
        )
    return st


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read dns-ovh credentials: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"{path}: dns-ovh credentials larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: dns-ovh credentials are not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def check_credentials(path: Path) -> None:
    _require_private(path)
    text = _read_text(path)
    try:
        # Defaults as certbot's CredentialsConfiguration uses them (interpolation included).
        parsed = configobj.ConfigObj(text.splitlines())
        values = {key: parsed.get(key) for key in KEYS}
    except configobj.ConfigObjError as exc:
        # configobj's message names the line; keep only its first line.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{path}: dns-ovh credentials do not parse: {reason}") from None
    for key, value in values.items():
        if value is None:
            raise UsageError(f"{path}: dns-ovh credentials lack {key}")
        if not isinstance(value, str):
            # configobj reads `a, b` as a list and `[x]` as a section.
            raise UsageError(f"{path}: dns-ovh credentials: {key} is not one value (quote it)")
        if not value.strip():
            raise UsageError(f"{path}: dns-ovh credentials: {key} is empty")
    endpoint = values[KEYS[0]]
    if endpoint not in ENDPOINTS:
        raise UsageError(
            f"{path}: dns_ovh_endpoint = {endpoint!r} is not an OVH API endpoint "
            f"certbot-dns-ovh knows: use one of {', '.join(ENDPOINTS)}"
        )


__all__ = ["ENDPOINTS", "KEYS", "check_credentials"]
