"""The one exception tree of pftls-hook.

Every failure the tool can foresee is a `PftlsError`; the CLI maps each class to an exit
code and prints `str(error)` as one line. Nothing else in the package picks exit codes.
"""


class PftlsError(Exception):
    """Base of every foreseen failure."""


class UsageError(PftlsError):
    """Bad command line or configuration file."""


class RefusedError(PftlsError):
    """A source (certificate, key, lineage file) failed a check: nothing was changed."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class DaneRefusedError(RefusedError):
    """The published TLSA records of a target reject the chain, or cannot be looked up.

    `publish` holds the zone-file lines that would let it through (none for a lookup that
    failed); the daemon retries until they are in DNS.
    """

    def __init__(self, file: str, reason: str, *, publish: tuple[str, ...] = ()) -> None:
        super().__init__(file, reason)
        self.publish = publish


class NotSettledError(RefusedError):
    """certbot is still re-pointing the lineage's links (or left it half-updated)."""


class EnvironmentRefusedError(PftlsError):
    """The target environment is unsafe or unusable (install dir, lock, Postfix config).

    Raised before anything is changed.
    """


class DaneLookupError(EnvironmentRefusedError):
    """A TLSA lookup failed (timeout, SERVFAIL, no resolver): no answer, not "no records"."""


class CommandError(PftlsError):
    """A subprocess failed, timed out or could not be started."""


class DeployFailedError(PftlsError):
    """The new certificate was switched in, failed, and the previous state was restored."""


class RollbackFailedError(PftlsError):
    """A deploy failed and restoring the previous state failed too: needs an admin."""


class ProbeError(PftlsError):
    """An endpoint did not serve a certificate we could read, or not the expected one."""


class TlsBrokenError(ProbeError):
    """Postfix answered, but TLS is broken there: no STARTTLS, a 454 (smtpd could not load
    its key), a failed handshake. Unlike an unreachable endpoint, this is what clients see."""
