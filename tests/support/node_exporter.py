"""prometheus-node-exporter (Debian's, real) serving a textfile directory on loopback, and
its scrape parsed as a Prometheus server parses the exposition format."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from .net import LOOPBACK, free_port, port_accepts, wait_until

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class NodeExporter:
    """prometheus-node-exporter with only the textfile collector, on 127.0.0.1:<port>."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={directory}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: port_accepts(LOOPBACK, self.port),
            timeout=15,
            what="node_exporter listening",
            on_timeout=lambda: log.read_text(errors="replace"),
        )

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        url = f"http://{LOOPBACK}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = SAMPLE.match(line)
            assert match, f"not exposition format: {line!r}"
            name, labels, value = match.groups()
            pairs = frozenset(LABEL.findall(labels or ""))
            samples[(name, pairs)] = float(value)
        return samples

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (
        f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    )
    return samples[key]
