"""A loopback stand-in for the OVH API, as certbot-dns-ovh (through lexicon) calls it.

The one mock the tests allow: OVH's API cannot run here. It checks what the real one would:
- every call but `GET /auth/time` carries `X-Ovh-Application` (the application key),
  `X-Ovh-Consumer` (the consumer key), `X-Ovh-Timestamp` (within `MAX_SKEW` of our clock) and
  `X-Ovh-Signature` = "$1$" + SHA-1 hex of `secret+consumer+METHOD+full URL+body+timestamp`;
  a wrong key is a 403, a wrong signature a 400, as OVH answers;
- the token's rights are those the README tells the admin to grant: `GET /domain/zone/` and
  GET/POST/PUT/DELETE on `/domain/zone/<zone>/*`; any other call is a 403;
- records created or deleted reach DNS only at `POST /domain/zone/<zone>/refresh`, as on OVH:
  then each TXT record is published into (or removed from) a real Knot DNS server by an
  RFC 2136 update.

It serves HTTPS on `<address>:443`, a 127.x.y.z address of its own (so tests running in
parallel never collide on port 443), with a certificate for the API host from a test CA
(`ca_file`); the program under test reaches it through a private /etc/hosts
(`hosts_file`, see `mounts.private_hosts`). It contacts no other host. Every call is
recorded in `calls`, in order.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import itertools
import json
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .dns import KnotServer
from .pki import CA

API_PORT = 443
API_PREFIX = "/1.0"
MAX_SKEW = 30  # seconds a signed call's timestamp may differ from /auth/time's clock
HOSTS = {"ovh-eu": "eu.api.ovh.com", "ovh-ca": "ca.api.ovh.com"}
METHODS = ("GET", "POST", "PUT", "DELETE")


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # without the /1.0 prefix, with the query string
    body: str
    status: int


@dataclass
class Record:
    id: int
    zone: str
    field_type: str
    sub_domain: str
    target: str
    ttl: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "zone": self.zone,
            "fieldType": self.field_type,
            "subDomain": self.sub_domain,
            "target": self.target,
            "ttl": self.ttl,
        }

    def owner(self) -> str:
        return f"{self.sub_domain}.{self.zone}." if self.sub_domain else f"{self.zone}."


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OvhApi:
    """The stand-in's state: keys, the zone's records, what DNS has, every call."""

    zone: str
    knot: KnotServer
    application_key: str
    application_secret: str
    consumer_key: str
    host: str = HOSTS["ovh-eu"]
    # False: refresh never reaches DNS (a zone OVH has not deployed), so a CA must refuse.
    publish: bool = True
    calls: list[Call] = field(default_factory=list)
    records: dict[int, Record] = field(default_factory=dict)
    published: dict[int, Record] = field(default_factory=dict)  # what knot serves
    dns_changes: list[tuple[str, str, str]] = field(default_factory=list)  # (op, owner, TXT)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the checks the real API makes ----------------------------------------------------
    def signature(self, method: str, url: str, body: str, timestamp: str) -> str:
        plain = "+".join([self.application_secret, self.consumer_key, method, url, body, timestamp])
        return "$1$" + hashlib.sha1(plain.encode()).hexdigest()  # noqa: S324 (OVH's scheme)

    def authenticate(self, method: str, target: str, body: str, headers: Any) -> None:
        if headers.get("X-Ovh-Application") != self.application_key:
            raise ApiError(403, "Invalid application key")
        if headers.get("X-Ovh-Consumer") != self.consumer_key:
            raise ApiError(403, "Invalid credentials")
        timestamp = headers.get("X-Ovh-Timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - int(time.time())) > MAX_SKEW:
            raise ApiError(400, "Invalid timestamp")
        expected = self.signature(method, f"https://{self.host}{target}", body, timestamp)
        if not hmac.compare_digest(headers.get("X-Ovh-Signature", ""), expected):
            raise ApiError(400, "Invalid signature")

    def granted(self, method: str, path: str) -> bool:
        """The token's rights, as the README documents them for a zone-limited token."""
        if method == "GET" and path == "/domain/zone/":
            return True
        return method in METHODS and path.startswith(f"/domain/zone/{self.zone}/")

    # -- the calls lexicon's OVH provider makes -------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: str) -> Any:
        if not self.granted(method, path):
            raise ApiError(403, "This call has not been granted")
        if path == "/domain/zone/":
            return [self.zone]
        rest = path.removeprefix(f"/domain/zone/{self.zone}/")
        if (method, rest) == ("GET", "status"):
            return {"isDeployed": True, "errors": [], "warnings": [], "infos": []}
        if (method, rest) == ("POST", "refresh"):
            self._refresh()
            return None
        if rest == "record" or rest.startswith("record/"):
            return self._record(method, rest.removeprefix("record").lstrip("/"), query, body)
        raise ApiError(404, f"Got an invalid (or empty) URL: {method} {path}")

    def _record(self, method: str, rid: str, query: dict[str, list[str]], body: str) -> Any:
        if (method, rid) == ("GET", ""):
            return [r.id for r in self._matching(query)]
        if (method, rid) == ("POST", ""):
            return self._create(json.loads(body)).as_json()
        record = self.records.get(int(rid)) if rid.isdigit() else None
        if record is None:
            raise ApiError(404, f"The requested object ({rid}) does not exist")
        if method == "GET":
            return record.as_json()
        if method == "DELETE":
            del self.records[record.id]
            return None
        raise ApiError(405, f"{method} not implemented here for records")

    def _matching(self, query: dict[str, list[str]]) -> list[Record]:
        field_type = query.get("fieldType", [None])[0]
        sub_domain = query.get("subDomain", [None])[0]
        return [
            r
            for r in self.records.values()
            if field_type in (None, r.field_type) and sub_domain in (None, r.sub_domain)
        ]

    def _create(self, data: dict[str, Any]) -> Record:
        if data.get("fieldType") != "TXT" or not isinstance(data.get("target"), str):
            raise ApiError(400, f"only TXT records here, not {data!r}")
        record = Record(
            id=next(self._ids),
            zone=self.zone,
            field_type="TXT",
            sub_domain=str(data.get("subDomain", "")),
            target=data["target"],
            ttl=int(data.get("ttl", 0)),
        )
        self.records[record.id] = record
        return record

    def _refresh(self) -> None:
        """Apply the zone's changes to DNS: OVH publishes records at refresh."""
        if not self.publish:
            return
        for rid in [rid for rid in self.published if rid not in self.records]:
            gone = self.published.pop(rid)
            self.knot.delete(gone.owner(), "TXT", _txt(gone.target))
            self.dns_changes.append(("delete", gone.owner(), gone.target))
        for rid, record in self.records.items():
            if rid not in self.published:
                self.knot.add(record.owner(), "TXT", _txt(record.target), ttl=record.ttl or 60)
                self.published[rid] = record
                self.dns_changes.append(("add", record.owner(), record.target))

    def record_call(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)


def _txt(target: str) -> str:
    """A TXT rdata in zone-file text: OVH stores the target with or without its quotes.
    (JSON quoting equals zone-file quoting for the base64url values ACME puts there.)"""
    return target if target.startswith('"') else json.dumps(target)


def _handler(api: OvhApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            split = urlsplit(self.path)
            path = split.path.removeprefix(API_PREFIX)
            status, answer = 200, None
            try:
                if not split.path.startswith(API_PREFIX + "/"):
                    raise ApiError(404, f"not an API path: {self.path}")
                if self.headers.get("Host", "").split(":")[0] != api.host:
                    raise ApiError(400, f"Host is not {api.host}")
                if (self.command, path) == ("GET", "/auth/time"):
                    answer = int(time.time())  # the one call lexicon does not sign
                else:
                    api.authenticate(self.command, self.path, body, self.headers)
                    with api.lock:
                        answer = api.handle(self.command, path, parse_qs(split.query), body)
            except ApiError as exc:
                status, answer = exc.status, {"message": str(exc)}
            shown = path + (f"?{split.query}" if split.query else "")
            api.record_call(Call(self.command, shown, body, status))
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # every call is in api.calls

    return Handler


def _bind(address_tries: int = 50) -> tuple[socket.socket, str]:
    """A TCP socket bound to a 127.x.y.z address of our own, port 443."""
    for _ in range(address_tries):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"  # noqa: S311
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((address, API_PORT))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return sock, address
    raise RuntimeError(f"no free 127.x.y.z:{API_PORT} after {address_tries} tries")


class OvhApiServer:
    """`OvhApi` served over HTTPS on a loopback address of its own; start() / stop()."""

    def __init__(self, base: Path, api: OvhApi) -> None:
        self.base = base.resolve()
        self.api = api
        self.ca_file: Path = self.base / "ovh-api-ca.pem"
        self.hosts_file: Path = self.base / "hosts"
        self.address = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        ca = CA.root("OVH API stand-in test CA")
        leaf = ca.issue(self.api.host)
        self.ca_file.write_bytes(ca.cert_pem)
        cert_file, key_file = self.base / "ovh-api-cert.pem", self.base / "ovh-api-key.pem"
        cert_file.write_bytes(leaf.fullchain_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(leaf.key_pem())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)

        sock, self.address = _bind()
        server = ThreadingHTTPServer((self.address, API_PORT), _handler(self.api), False)
        server.socket.close()
        server.socket = context.wrap_socket(sock, server_side=True)
        server.server_address = (self.address, API_PORT)
        server.server_activate()
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        # The name resolution the program under test gets: the API host is us, and only
        # localhost besides.
        self.hosts_file.write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{self.address} {self.api.host}\n"
        )

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __repr__(self) -> str:
        return f"OvhApiServer({self.address}:{API_PORT} as {self.api.host})"


__all__ = ["Call", "OvhApi", "OvhApiServer", "Record"]
