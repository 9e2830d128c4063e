"""A private, throw-away Postfix instance for tests, plus an independent STARTTLS client.

The instance has its own config, queue and data directories and listens on
127.0.0.1:<port>. It never reads or changes /etc/postfix/main.cf: everything
goes through `postfix -c <config_dir>` / `postconf -c <config_dir>`. Debian's
/etc/postfix/master.cf is only read, as the template for ours.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import smtplib
import ssl
import stat
import subprocess
import time
from pathlib import Path

from .net import LOOPBACK, port_accepts, wait_until
from .pki import Leaf

# A fixed PATH: the postfix wrapper scripts call postconf, postsuper, etc. by name.
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SYSTEM_MASTER_CF = Path("/etc/postfix/master.cf")

COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
MAX_SOCKET_PATH = 107

# master logs this line for every reload it carries out (one per SIGHUP it acts on).
RELOAD_LINE = re.compile(r"postfix/master\[\d+\]: reload -- version ", re.M)
# master.cf services that would listen on more ports or put a second TLS
# endpoint (tlsproxy behind postscreen) in front of smtpd.
_DROPPED_SERVICES = frozenset({"postscreen", "smtpd", "dnsblog", "tlsproxy", "submission"})


def _env() -> dict[str, str]:
    # A clean environment: a stray MAIL_CONFIG from the caller would point the
    # commands at another instance.
    return {"PATH": PATH, "LANG": "C", "LC_ALL": "C"}


def _run(args: list[str], *, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class PostfixError(RuntimeError):
    """A postfix/postconf command failed; the message carries its output and the log tail."""


class PostfixInstance:
    """A Postfix instance living entirely under `base`.

    Layout: base/config (main.cf, master.cf), base/queue, base/data,
    base/maillog, base/initial.pem (key then self-signed cert, 0600).
    """

    def __init__(self, base: Path, port: int, hostname: str = "mail.test.example") -> None:
        self.base: Path = base.resolve()
        self.port: int = port
        self.hostname: str = hostname
        self.config_dir: Path = self.base / "config"
        self.queue_dir: Path = self.base / "queue"
        self.data_dir: Path = self.base / "data"
        self.maillog: Path = self.base / "maillog"
        self.initial_cert_file: Path = self.base / "initial.pem"
        # postlogd's socket is bound by absolute path, and a Unix socket path
        # holds at most 107 bytes (sun_path[108]). Past that `postfix start`
        # exits 1 with no message anywhere, so refuse early.
        postlog_socket = os.fsencode(self.queue_dir / "public" / "postlog")
        if len(postlog_socket) > MAX_SOCKET_PATH:
            raise ValueError(
                f"Postfix base dir too deep: {postlog_socket!r} is {len(postlog_socket)} bytes,"
                f" the limit for a Unix socket path is {MAX_SOCKET_PATH}"
            )

    # ----------------------------------------------------------------- setup

    def create(self) -> None:
        """Write main.cf, master.cf and the initial certificate. Does not start."""
        # Postfix refuses (or warns about) directories writable by others, and
        # its unprivileged processes must reach base: 0755 root.
        for directory in (self.base, self.config_dir, self.queue_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        allow_traversal(self.base)
        postfix_user = pwd.getpwnam("postfix")
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)

        self._write_initial_cert()
        main_cf = self.config_dir / "main.cf"
        main_cf.write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(self._master_cf())
        # Postfix treats a main.cf modified within the last ~1 s as "hot" and
        # every reader waits for it to cool (start took 2.3 s instead of 0.2 s).
        # The file is complete, so back-date it.
        past = time.time() - 60
        os.utime(main_cf, (past, past))

    def _write_initial_cert(self) -> None:
        pair = Leaf.self_signed(self.hostname)
        # One file, key first: Postfix >= 3.4 loads it in one pass when
        # smtpd_tls_cert_file == smtpd_tls_key_file, so key and cert always match.
        fd = os.open(self.initial_cert_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pair.key_pem() + pair.cert_pem)
        self.initial_cert_file.chmod(0o600)

    def _main_cf(self) -> str:
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "myhostname": self.hostname,
            "mydestination": "$myhostname, localhost",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # No aliases: newaliases would otherwise be needed before start.
            "alias_maps": "",
            "alias_database": "",
            # No syslog daemon may be running; postlogd writes here instead.
            # maillog_file must start with one of maillog_file_prefixes.
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "biff": "no",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.initial_cert_file),
            "smtpd_tls_key_file": str(self.initial_cert_file),
        }
        lines = [
            "# Private test instance written by tests/support/postfix.py",
            *(f"{name} = {value}".rstrip() for name, value in params.items()),
        ]
        return "\n".join(lines) + "\n"

    def _master_cf(self) -> str:
        """Debian's master.cf with our smtpd listener, no chroot, no postscreen/submission."""
        out: list[str] = []
        dropping = False
        replaced = False
        for line in SYSTEM_MASTER_CF.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                out.append(line)
                continue
            if line[0].isspace():
                # Continuation ("-o ...", "flags=...") of the previous service line.
                if not dropping:
                    out.append(line)
                continue
            fields = line.split()
            service, kind = fields[0], fields[1]
            command = fields[7] if len(fields) > 7 else ""
            dropping = False
            if kind == "inet" and command == "smtpd" and not replaced:
                out.append(f"{LOOPBACK}:{self.port} inet n - n - - smtpd")
                replaced = True
                # Drop the original's own -o lines: they belong to the public listener.
                dropping = True
                continue
            if service in _DROPPED_SERVICES or kind == "inet" or command == "postscreen":
                dropping = True
                continue
            if len(fields) >= 8:
                # Column 5 is chroot: a chroot would need copies of /etc files
                # under the queue dir; the tests do not need one.
                fields[4] = "n"
                out.append(" ".join(fields))
            else:
                out.append(line)
        if not replaced:
            out.append(f"{LOOPBACK}:{self.port} inet n - n - - smtpd")
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------ lifecycle

    def _postfix(self, action: str) -> subprocess.CompletedProcess[str]:
        return _run([POSTFIX, "-c", str(self.config_dir), action])

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str]) -> PostfixError:
        tail = self._log_tail() or (
            f"(nothing in {self.maillog}: off a terminal, postfix reports early errors"
            " only to syslog, and postlogd may not have been running)"
        )
        return PostfixError(
            f"{what} failed (exit {proc.returncode})\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}\n"
            f"log tail:\n{tail}"
        )

    def start(self) -> None:
        """Start the instance and return once smtpd's port accepts connections."""
        proc = self._postfix("start")
        if proc.returncode != 0:
            raise self._fail(f"postfix -c {self.config_dir} start", proc)
        wait_until(
            lambda: port_accepts(LOOPBACK, self.port),
            timeout=START_TIMEOUT,
            what=f"postfix on {LOOPBACK}:{self.port}",
            on_timeout=self._log_tail,
        )

    def stop(self) -> None:
        """Stop the instance if it runs and wait until its master process is gone."""
        pid = self._master_pid()
        if pid is None:
            return
        proc = self._postfix("stop")
        if proc.returncode != 0 and self._master_pid() is not None:
            raise self._fail(f"postfix -c {self.config_dir} stop", proc)
        # `postfix stop` only signals master; wait for it (and its lock) to go.
        wait_until(
            lambda: not _pid_alive(pid),
            timeout=STOP_TIMEOUT,
            what=f"postfix master pid {pid} to exit",
            on_timeout=self._log_tail,
        )

    def reload(self) -> None:
        proc = self._postfix("reload")
        if proc.returncode != 0:
            raise self._fail(f"postfix -c {self.config_dir} reload", proc)

    def check(self) -> None:
        """Run `postfix check`; raise with its output on failure."""
        proc = self._postfix("check")
        if proc.returncode != 0:
            raise self._fail(f"postfix -c {self.config_dir} check", proc)

    def is_running(self) -> bool:
        return self._master_pid() is not None

    def _master_pid(self) -> int | None:
        """The live master's pid from queue/pid/master.pid, or None."""
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text().strip()
            pid = int(text)
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) and _is_master(pid) else None

    # -------------------------------------------------------------- queries

    def postconf(self, *args: str) -> str:
        """`postconf -c config_dir *args`; returns stdout, raises PostfixError on failure."""
        proc = _run([POSTCONF, "-c", str(self.config_dir), *args])
        if proc.returncode != 0:
            raise self._fail(f"postconf -c {self.config_dir} {' '.join(args)}", proc)
        return proc.stdout

    def main_cf_bytes(self) -> bytes:
        return (self.config_dir / "main.cf").read_bytes()

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def reloads(self) -> int:
        """How many reloads master has logged. postlogd writes the maillog asynchronously:
        poll for an expected count rather than reading it once."""
        return len(RELOAD_LINE.findall(self.log_text()))

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"PostfixInstance(base={self.base!s}, port={self.port})"


def allow_traversal(path: Path) -> None:
    """Give "others" the search (x) bit on path's ancestors that lack it.

    master opens data_directory/master.lock as the postfix user, so every
    ancestor of the instance must be traversable by it. pytest's tmp_path
    (and mkdtemp) directories are 0700; adding o+x lets postfix reach known
    names without letting anyone list them. Only directories owned by us are
    changed; anything else is left as is (and start() then fails loudly).
    """
    uid = os.geteuid()
    for ancestor in path.resolve().parents:
        st = ancestor.stat()
        if st.st_uid == uid and not st.st_mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited for our purposes.
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return proc_stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_master(pid: int) -> bool:
    # Guards against a recycled pid in a stale master.pid.
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "master"
    except OSError:
        return False


# ----------------------------------------------------------- STARTTLS client


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    """The TLS client side of served_certificate: verifying against `cafile` when given,
    else unverified; never a name check (the hosts are loopback addresses)."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.check_hostname = False
    if cafile is None:
        context.verify_mode = ssl.CERT_NONE
    return context


def served_certificate(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    cafile: Path | None = None,
    context: ssl.SSLContext | None = None,
) -> bytes:
    """The DER leaf certificate that a STARTTLS client on host:port is shown.

    Unverified by default: the tests compare what is served with what they expect,
    whatever its chain. With `cafile`, the handshake fails (ssl.SSLCertVerificationError)
    unless the chain the server sends leads to a root in that file; the name is still not
    checked (host is a loopback address). A caller that handshakes in a tight loop passes
    one `context` from client_context(): building one loads the system's trust store, tens
    of milliseconds each time.
    """
    if context is None:
        context = client_context(cafile)
    # A fixed EHLO name: smtplib would otherwise call socket.getfqdn(), a DNS lookup.
    with smtplib.SMTP(host, port, local_hostname="client.test.example", timeout=timeout) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        sock = smtp.sock
        if not isinstance(sock, ssl.SSLSocket):
            raise RuntimeError(f"STARTTLS on {host}:{port} did not produce a TLS socket")
        der = sock.getpeercert(binary_form=True)
        if der is None:
            raise RuntimeError(f"{host}:{port} sent no certificate")
        return der


def served_sha256(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    cafile: Path | None = None,
    context: ssl.SSLContext | None = None,
) -> str:
    """Lower-case hex SHA-256 of the served DER leaf certificate (see served_certificate)."""
    der = served_certificate(host, port, timeout=timeout, cafile=cafile, context=context)
    return hashlib.sha256(der).hexdigest()


def wait_for_served_sha256(
    host: str, port: int, expected: str, *, timeout: float = 10.0, cafile: Path | None = None
) -> None:
    """Poll until host:port serves the certificate with SHA-256 `expected` (with `cafile`:
    and a chain that verifies against it, see served_certificate).

    After a reload, master restarts smtpd asynchronously; new connections pick
    the new certificate up within a moment, not instantly.
    """
    last = ""

    def matches() -> bool:
        nonlocal last
        try:
            last = served_sha256(host, port, cafile=cafile)
        except (OSError, smtplib.SMTPException) as exc:
            last = f"error: {exc}"
        return last == expected

    wait_until(
        matches,
        timeout=timeout,
        interval=0.1,
        what=f"{host}:{port} to serve sha256 {expected}",
        on_timeout=lambda: f"last seen: {last}",
    )


__all__ = [
    "PostfixError",
    "PostfixInstance",
    "allow_traversal",
    "client_context",
    "served_certificate",
    "served_sha256",
    "wait_for_served_sha256",
]
