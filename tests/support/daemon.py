"""Run `pftls-hook watch` as systemd would, and listen where systemd would listen.

`NotifySocket` is a stand-in for systemd's notification socket: an abstract AF_UNIX
datagram socket, so `$NOTIFY_SOCKET` starts with `@` (systemd passes a path; the daemon
takes both, and tests/test_watch.py checks the path form too). `WatchProcess`
starts `python -m pftls_hook <options> watch` with a clean environment and keeps its
output in a file, so a failing test can show it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .net import wait_until


@dataclass(frozen=True)
class Notification:
    received: float  # time.monotonic() on arrival
    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


class NotifySocket:
    """Receives on a thread of its own, as systemd does: a receiver that stops reading would
    fill the queue (net.unix.max_dgram_qlen, often 10) and stall the sender."""

    def __init__(self) -> None:
        name = f"pftls-hook-test-{os.getpid()}-{secrets.token_hex(6)}"
        self.address = "@" + name  # the value for $NOTIFY_SOCKET
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        self._arrived = threading.Condition()
        self.messages: list[Notification] = []
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return  # closed
            if not data:
                return
            fields = {}
            for line in data.decode().splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            with self._arrived:
                self.messages.append(Notification(time.monotonic(), fields))
                self._arrived.notify_all()

    def drain(self) -> list[Notification]:
        """Everything that has arrived so far (a copy)."""
        with self._arrived:
            return list(self.messages)

    def listen(self, seconds: float) -> list[Notification]:
        """What arrives during the next `seconds`."""
        start = len(self.drain())
        time.sleep(seconds)
        return self.drain()[start:]

    def wait_for(
        self, match: Callable[[Notification], bool], *, timeout: float, start: int = 0
    ) -> Notification:
        """The first message from index `start` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        checked = start
        with self._arrived:
            while True:
                for message in self.messages[checked:]:
                    if match(message):
                        return message
                checked = max(checked, len(self.messages))
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(repr(m.fields) for m in self.messages[start:])
                    raise TimeoutError(f"no matching sd_notify message in {timeout} s:\n{seen}")
                self._arrived.wait(left)

    def close(self) -> None:
        # shutdown() wakes the reader blocked in recv(); close() alone would not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)


class WatchProcess:
    """`python -m pftls_hook <options> watch` as a child process."""

    def __init__(
        self, options: Sequence[str], env: Mapping[str, str], output: Path, cwd: Path
    ) -> None:
        self.argv = [sys.executable, "-m", "pftls_hook", *options, "watch"]
        self.env = dict(env)
        self.output = output
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WatchProcess:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM, wait; returns the exit code and the seconds it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far, from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def output_text(self) -> str:
        try:
            return self.output.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_output(self, text: str, *, timeout: float) -> None:
        wait_until(
            lambda: text in self.output_text(),
            timeout=timeout,
            what=f"daemon output {text!r}",
            on_timeout=self.output_text,
        )


__all__ = ["Notification", "NotifySocket", "WatchProcess"]
