"""The single door to subprocesses.

Contract: `run(argv)` executes an argument list (never a shell) with a fixed PATH, a minimal
fixed environment, no stdin and a timeout, and returns a `Result`. It raises `CommandError`
only when the program cannot be started or times out; a non-zero exit is data for the caller,
who decides whether it is an error (`Result.check`). certbot gives hooks no timeout, so a
hung child here would hang certbot: every call is bounded.

Output is captured in memory files, not pipes: a program may leave a child running with our
stdout (`postfix reload` ends with `postsuper &`, a scan of the whole queue), and reading a
pipe to its end would wait for that child too, up to the timeout; a memory file is read
once the program itself has exited.

`keep_env=("NAME", ...)` passes those variables through from our own environment, and only
those, when they are set: the one explicit exception to the fixed environment, for a child
that needs a named setting of the caller (certbot reads `REQUESTS_CA_BUNDLE` to trust a
private ACME server, e.g. pebble in the tests). Nothing else leaks in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pftls_hook.errors import CommandError

# A fixed PATH: the caller's PATH (certbot's, a snap's, cron's) must not decide which
# `postfix` runs as root.
FIXED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> Result:
        """Return self when the command succeeded, else raise a one-line CommandError."""
        if not self.ok:
            detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
            last = detail[-1] if detail else "no output"
            raise CommandError(f"`{' '.join(self.argv)}` exited {self.returncode}: {last}")
        return self


def run(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, keep_env: Sequence[str] = ()
) -> Result:
    args = tuple(argv)
    env = {"PATH": FIXED_PATH, "LANG": "C", "LC_ALL": "C"}
    env.update({name: os.environ[name] for name in keep_env if name in os.environ})
    try:
        with _memory_file("stdout") as out, _memory_file("stderr") as err:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                timeout=timeout,
                check=False,
            )
            return Result(args, proc.returncode, _text(out), _text(err))
    except FileNotFoundError as exc:
        raise CommandError(f"`{args[0]}` not found: is it installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{' '.join(args)}` timed out after {timeout:g} s") from exc
    except OSError as exc:  # no file descriptor or memory left for it, among others
        raise CommandError(f"`{args[0]}` could not be started: {exc.strerror}") from exc


@contextlib.contextmanager
def _memory_file(name: str) -> Iterator[int]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _text(fd: int) -> str:
    # From offset 0 whatever the shared offset: a child left running may still write.
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", errors="replace")
