"""Try what the unit's hardening forbids; print one JSON object: check name -> outcome.

Run inside the systemd tier's container twice: as a service carrying the shipped unit's
[Service] settings (where each attempt must fail) and from a plain root shell (where each
must succeed), so a failure is shown to come from the setting and not from the machine.
Standard library only: it runs with Debian's python3, outside pftls-hook's venv.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import socket
import sys


def attempt(action: object) -> str:
    try:
        result = action()  # type: ignore[operator]
    except OSError as exc:
        if exc.errno is None:  # socket.timeout
            return f"error {type(exc).__name__}"
        return f"error {exc.errno} {os.strerror(exc.errno)}"
    return "ok" if result is None else f"ok {result}"


def write_remove(path: str) -> None:
    with open(path, "w") as handle:
        handle.write("probe\n")
    os.unlink(path)


def connect(host: str) -> None:
    with socket.create_connection((host, 25), timeout=3) as conn:
        conn.recv(100)


def wx_mapping() -> None:
    area = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    area.close()


def libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def packet_socket() -> None:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()


def setuid_bit(path: str) -> None:
    with open(path, "w"):
        pass
    try:
        os.chmod(path, 0o4755)  # noqa: S103 - the probe tries what RestrictSUIDSGID= forbids
    finally:
        os.unlink(path)


def list_dir(path: str) -> str:
    return ",".join(sorted(os.listdir(path)))


def main() -> None:
    other = sys.argv[1]  # a non-loopback address of the machine where Postfix listens
    checks = {
        "write /usr/local": lambda: write_remove("/usr/local/pftls-probe"),
        "write /etc/postfix": lambda: write_remove("/etc/postfix/.pftls-probe"),
        "connect 127.0.0.1:25": lambda: connect("127.0.0.1"),
        f"connect {other}:25": lambda: connect(other),
        "mmap write+exec": wx_mapping,
        "AF_PACKET socket": packet_socket,
        "unshare user namespace": lambda: libc_call("unshare", 0x10000000),
        "ptrace TRACEME": lambda: libc_call("ptrace", 0, 0, None, None),
        "chmod u+s": lambda: setuid_bit("/etc/postfix/.pftls-probe-suid"),
        "list /root": lambda: list_dir("/root"),
        "list /tmp": lambda: list_dir("/tmp"),
    }
    print(json.dumps({name: attempt(action) for name, action in checks.items()}))


if __name__ == "__main__":
    main()
