"""A Debian 12 machine with systemd as PID 1, booted by systemd-nspawn, for the systemd tier.

`debian_tree(cache)` returns a debootstrapped bookworm tree holding `PACKAGES`, built once
and kept under `cache` (the name carries a hash of the package list and the recipe, so a
change builds a new one; a tree is renamed into place only when complete). `Machine(tree)`
boots a copy with:

    systemd-nspawn --register=no --keep-unit --private-network --console=read-only
                   --system-call-filter=bpf -b -D <copy>

because this host's PID 1 is not systemd: there is no machined to register with (so
`machinectl` cannot reach it; `nsenter -t <its PID 1> -a` does), `--private-network` gives
it its own loopback (its Postfix never meets the host's ports), a passive console that
nobody drains would fill up and hang PID 1, and nspawn's own seccomp filter refuses bpf(2)
unless allowed, which silently turns `IPAddressDeny=` off.

`run(*argv)` runs a command inside with a fixed environment and a timeout. The machine has
no network beyond its loopback: whatever it installs comes from the host's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .net import wait_until

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What an admin's Debian 12 mail host has: minbase plus Postfix, Python and systemd; procps
# (priority important, on every standard install) holds /bin/kill, the unit's ExecReload=;
# iproute2 gives the hardening test a second, non-loopback address; unbound is the mail
# host's local resolver (Postfix's DANE wants a local validating one), which the DANE guard's
# TLSA lookups reach through the unit's IPAddressAllow=localhost (dns-root-data: its trust
# anchor, a Recommends that debootstrap leaves out).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "postfix", "python3", "python3-venv", "openssl",
    "ca-certificates", "iproute2", "procps", "unbound", "dns-root-data",
)  # fmt: skip
RECIPE = 1  # bump when the way the tree is made changes
DEBOOTSTRAP_TIMEOUT = 1200.0
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tree_key() -> str:
    text = f"{RECIPE} {SUITE} {MIRROR} {' '.join(sorted(PACKAGES))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def debian_tree(cache: Path) -> Path:
    """The cached tree, debootstrapped first if this package list has none yet."""
    tree = cache / f"{SUITE}-{tree_key()}"
    if (tree / "usr/lib/systemd/systemd").exists():
        return tree
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    building = cache / f".{tree.name}.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    result = subprocess.run(
        [
            "/usr/sbin/debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=DEBOOTSTRAP_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
        env={"PATH": INSIDE_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}")
    # The machine's own name, not the build host's; systemd-nspawn sets it at boot.
    (building / "etc/hostname").unlink(missing_ok=True)
    # Postfix starts at boot only when the test has configured it.
    try:
        os.rename(building, tree)
    except OSError:  # another run finished the same tree first: use that one
        shutil.rmtree(building, ignore_errors=True)
        if not (tree / "usr/lib/systemd/systemd").exists():
            raise
        return tree
    for stale in cache.glob(f"{SUITE}-*"):  # trees of older package lists: 350 MB each
        if stale != tree:
            shutil.rmtree(stale, ignore_errors=True)
    return tree


def build_wheels(project: Path, dest: Path, python_version: str) -> None:
    """Wheels of `project` and of every dependency, for the machine's Python (Debian 12's
    3.11.2: a newer host Python would pick releases it refuses), plus the build backend,
    so `pip install .` inside works with PIP_NO_INDEX and PIP_FIND_LINKS."""
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), str(project)], check=True)
    # Explicit platform tags: pip does not widen one manylinux tag to the older ones.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)]
    subprocess.run(
        [
            *pip,
            "download",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *(f"--platform={p}" for p in platforms),
            "--platform=manylinux2014_x86_64",
            "--platform=any",
            "-d",
            str(dest),
            *map(str, dest.glob("*.whl")),
            "setuptools>=77",
        ],
        check=True,
        timeout=600,
    )


class Machine:
    """One booted copy of a tree; `poweroff()` ends it (and is safe to call twice)."""

    def __init__(self, tree: Path, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        subprocess.run(["/usr/bin/cp", "-a", "--reflink=auto", str(tree), str(root)], check=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "/usr/bin/systemd-nspawn",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--console=read-only",
                    "--system-call-filter=bpf",
                    "-b",
                    "-D",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": INSIDE_PATH, "LANG": "C.UTF-8"},
            )
        wait_until(
            self._found_pid1,
            timeout=timeout,
            what="the container's PID 1",
            on_timeout=self.log_text,
        )
        # PID 1 exists before its bus does, and says "offline" before its manager starts:
        # ask again until it has booted.
        deadline = time.monotonic() + timeout
        while True:
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
            )
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"container did not boot: {state.stdout}{state.stderr}")
            time.sleep(0.2)

    def _found_pid1(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_text()}")
        for child in (
            Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        ):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if (
                    nspid.split()[-1] == "1"
                    and Path(f"/proc/{child}/comm").read_text().strip() == "systemd"
                ):
                    self.pid1 = int(child)
                    return True
        return False

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`argv` inside the machine (all its namespaces, its root), as root."""
        environ = {"PATH": INSIDE_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        environ.update(env or {})
        result = subprocess.run(
            ["/usr/bin/nsenter", "-t", str(self.pid1), "-a", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=environ,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"inside the container: {' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def shell(
        self, script: str, *, env: Mapping[str, str] | None = None, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """A shell script inside, as an admin would paste it (sh -e: stop at the first error)."""
        return self.run("/bin/sh", "-ex", "-c", script, env=env, timeout=timeout)

    def path(self, inside: str) -> Path:
        """A path of the machine, seen from the host."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def poweroff(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # nspawn turns SIGTERM into a shutdown request; SIGKILL as a last resort.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["PACKAGES", "Machine", "debian_tree", "tree_key"]
