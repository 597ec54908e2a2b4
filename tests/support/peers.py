"""Real SIP peers for porch's interop tests: Kamailio, SIPp, baresip, linphonec, tshark.

Every peer runs as a child process in its own session (so teardown can kill the whole process
group), bound to 127.0.0.1 only, on ports picked free at run time, with its logs written into
the test's tmp dir. A helper whose program is not installed skips the test with the Debian
package to install; it never passes silently.

Config files and SIPp scenarios live in tests/interop/peers/ (see the comments in each file).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
PEERS_DIR = Path(__file__).resolve().parents[1] / "interop" / "peers"
SIPP_DIR = PEERS_DIR / "sipp"
SIPP_SHARE = Path("/usr/share/sip-tester")  # dtmf_2833_<digit>.pcap, g711a.pcap
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

# program -> Debian package that provides it (for the skip message)
PACKAGES = {
    "sipp": "sip-tester",
    "kamailio": "kamailio",
    "kamcmd": "kamailio",
    "baresip": "baresip-core",
    "linphonec": "linphone-cli",
    "tshark": "tshark",
    "openssl": "openssl",
    "timeout": "coreutils",
}


# --------------------------------------------------------------------------- basics


def require(program: str) -> str:
    """Absolute path of `program`, or skip the test naming the package that provides it."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin")
    if not path:
        package = PACKAGES.get(program, program)
        pytest.skip(
            f"{program} is not installed (Debian package {package!r}; `make deps-test` installs it)"
        )
    return path


def _bindable(port: int, kind: int, reuse: bool) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_is_free(
    port: int, transports: Iterable[str] = ("udp", "tcp"), reuse: bool = False
) -> bool:
    """True when `port` on 127.0.0.1 can be bound for every transport ("tls" counts as tcp).

    `reuse` sets SO_REUSEADDR for the TCP check, as the peers' listeners do, so that sockets
    in TIME_WAIT do not count as busy.
    """
    for t in transports:
        kind = socket.SOCK_DGRAM if t == "udp" else socket.SOCK_STREAM
        if not _bindable(port, kind, reuse and kind == socket.SOCK_STREAM):
            return False
    return True


_issued: set[int] = set()
_issued_lock = threading.Lock()
# Below the kernel's ephemeral range (32768-60999), so that no outgoing connection of another
# program takes a port between our check and the peer's bind.
_PORT_RANGE = (20000, 32000)


def free_port(transports: Iterable[str] = ("udp", "tcp"), count: int = 1) -> int:
    """First of `count` consecutive ports on 127.0.0.1 free for every transport.

    Ports are picked at random and never handed out twice in one test run, so two peers
    started back to back do not get the same port before either has bound it.
    """
    transports = tuple(transports)
    rng = random.Random()
    for _ in range(2000):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        ports = range(base, base + count)
        with _issued_lock:
            if any(p in _issued for p in ports):
                continue
            if all(port_is_free(p, transports) for p in ports):
                _issued.update(ports)
                return base
    raise RuntimeError(f"no {count} free consecutive port(s) for {transports} on {LOOPBACK}")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_ports_free(ports: Iterable[tuple[int, Sequence[str]]], timeout: float = 10.0) -> None:
    """Wait until every (port, transports) pair can be bound again (a stopped peer let go)."""
    pending = list(ports)
    ok = wait_until(lambda: all(port_is_free(p, t, reuse=True) for p, t in pending), timeout)
    if not ok:
        busy = [p for p, t in pending if not port_is_free(p, t, reuse=True)]
        raise RuntimeError(f"ports still busy {timeout} s after stop: {busy}")


def tail(path: Path | None, lines: int = 60) -> str:
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _short_dir(prefix: str) -> Path:
    """A short directory under /tmp for unix sockets (their paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class _Process:
    """A peer process in its own session, output appended to a log file."""

    name = "peer"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def _spawn(self, argv: Sequence[str], log_path: Path, **popen) -> subprocess.Popen:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:  # the child keeps its own descriptor
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(map(str, argv))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(map(str, argv)),
                stdout=popen.pop("stdout", log),
                stderr=subprocess.STDOUT,
                stdin=popen.pop("stdin", subprocess.DEVNULL),
                start_new_session=True,
                **popen,
            )
        return self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill_group(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """Signal our own process group (the session started for this peer), then reap it.

        Done once per process: after that the group id could in theory be reused.
        """
        proc = self.proc
        if proc is None or getattr(self, "_reaped", None) is proc:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # children left behind in the group (e.g. Kamailio workers) go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._reaped = proc

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace")
            if self.log_path and self.log_path.exists()
            else ""
        )

    def log_files(self) -> list[Path]:
        return [self.log_path] if self.log_path else []

    def _fail(self, message: str) -> RuntimeError:
        return RuntimeError(f"{self.name}: {message}\n--- {self.log_path}:\n{tail(self.log_path)}")


# --------------------------------------------------------------------------- TLS test PKI


@dataclass(frozen=True)
class TestPki:
    """A throw-away CA and a server certificate for 127.0.0.1 (and localhost), made at run time."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (hostname checked: use 127.0.0.1)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def make_test_pki(directory: Path, name: str = "porch-test") -> TestPki:
    """Create (or reuse) an EC P-256 CA and a server certificate signed by it, valid 2 days.

    The server certificate carries subjectAltName IP:127.0.0.1 and DNS:localhost, so a client
    that verifies against `ca_cert` accepts it for either name.
    """
    openssl = require("openssl")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPki(
        directory,
        directory / "ca.pem",
        directory / "ca.key",
        directory / "server.pem",
        directory / "server.key",
    )
    if pki.server_cert.exists() and pki.server_key.exists():
        return pki
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    csr = directory / "server.csr"
    steps = [
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name} CA",
            "-keyout",
            pki.ca_key,
            "-out",
            pki.ca_cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        [
            openssl,
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            pki.server_key,
            "-out",
            csr,
        ],
        [
            openssl,
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            pki.ca_cert,
            "-CAkey",
            pki.ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            pki.server_cert,
        ],
    ]
    for argv in steps:
        r = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"openssl failed: {' '.join(map(str, argv))}\n{r.stderr}")
    return pki


# --------------------------------------------------------------------------- SIP probe


def _read_sip_response(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def sip_options(
    port: int,
    transport: str = "udp",
    *,
    host: str = LOOPBACK,
    uri: str | None = None,
    timeout: float = 1.0,
    tls_context: ssl.SSLContext | None = None,
) -> int | None:
    """Send one OPTIONS to host:port and return the final status code, or None (no answer).

    Handy as a readiness probe for any SIP listener (Kamailio, porch): a UA that is up answers
    with some final response, even 404 or 405.
    """
    tag = uuid.uuid4().hex[:10]
    target = uri or f"sip:{host}:{port}"
    proto = transport.upper()

    def message(local_port: int) -> bytes:
        return (
            f"OPTIONS {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/{proto} {LOOPBACK}:{local_port};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{LOOPBACK}>;tag={tag}\r\n"
            f"To: <{target}>\r\n"
            f"Call-ID: {tag}@{LOOPBACK}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    try:
        if transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((LOOPBACK, 0))
                s.sendto(message(s.getsockname()[1]), (host, port))
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    s.settimeout(left)
                    text = s.recv(65536).decode(errors="replace")
                    code = _status_code(text)
                    if code and code >= 200 and tag in text:
                        return code
                return None
        with socket.create_connection((host, port), timeout=timeout) as raw:
            local_port = raw.getsockname()[1]  # before wrap_socket detaches `raw`
            sock: socket.socket = raw
            if transport == "tls":
                ctx = tls_context or ssl._create_unverified_context()
                sock = ctx.wrap_socket(raw, server_hostname=host)
            with contextlib.closing(sock):
                sock.sendall(message(local_port))
                deadline = time.monotonic() + timeout
                buffer = ""
                while (left := deadline - time.monotonic()) > 0:
                    chunk = _read_sip_response(sock, left)
                    if not chunk:
                        return None
                    buffer += chunk
                    for part in buffer.split("\r\n\r\n"):
                        code = _status_code(part)
                        if code and code >= 200:
                            return code
                    buffer = buffer.rsplit("\r\n\r\n", 1)[-1]
                return None
    except (OSError, ssl.SSLError):
        return None


def _status_code(text: str) -> int | None:
    m = re.match(r"\s*SIP/2\.0 (\d{3}) ", text)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- Kamailio


def _parse_kamcmd_contacts(text: str) -> list[dict[str, str]]:
    """The Contact blocks of `kamcmd ul.lookup/ul.dump` output as dicts of their fields."""
    contacts: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Contact: {"):
            current, depth = {}, 1
            continue
        if current is None:
            continue
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth -= 1
            if depth == 0:
                contacts.append(current)
                current = None
        elif ":" in line and depth == 1:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    return contacts


def aor_user(aor: str) -> str:
    """User part that Kamailio keys its location table on (no use_domain): sip:1001@h -> 1001."""
    aor = re.sub(r"^sips?:", "", aor.strip("<>"))
    return aor.split("@", 1)[0]


class Kamailio(_Process):
    """The test PBX: registrar + proxy with digest auth (tests/interop/peers/kamailio).

    Users (password in clear): 1001/secret1001, 1002/secret1002, 1003/secret1003,
    door/doorpass, door2/door2pass; realm and domain 127.0.0.1. REGISTER gets 401, a request
    whose From user is a subscriber gets 407, other senders pass unauthenticated.
    A second instance (`backup=True`, other ports) serves as sip.backup_registrar.
    """

    USERS = {
        "1001": "secret1001",
        "1002": "secret1002",
        "1003": "secret1003",
        "door": "doorpass",
        "door2": "door2pass",
    }
    DOMAIN = LOOPBACK

    def __init__(
        self,
        tmp: Path,
        udp_port: int | None = None,
        tcp_port: int | None = None,
        tls_port: int | None = None,
        *,
        tls: bool = True,
        backup: bool = False,
        nat: bool = True,
        reply_423: bool = False,
        min_expires: int | None = None,
        max_expires: int | None = None,
        pki: TestPki | None = None,
        name: str | None = None,
        config: Path | None = None,
        dbtext: Path | None = None,
    ) -> None:
        super().__init__()
        self.kamailio = require("kamailio")
        self.kamcmd_bin = require("kamcmd")
        self.name = name or ("kamailio-backup" if backup else "kamailio")
        self.tmp = Path(tmp)
        self.workdir = self.tmp / self.name
        self.config = Path(config or PEERS_DIR / "kamailio" / "kamailio.cfg")
        self.dbtext = Path(dbtext or PEERS_DIR / "kamailio" / "dbtext").resolve()
        self.tls = tls
        self.backup = backup
        self.nat = nat
        self.reply_423 = reply_423
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.udp_port = udp_port or free_port(("udp", "tcp"))
        self.tcp_port = tcp_port or self.udp_port
        self.tls_port = (tls_port or free_port(("tcp",))) if tls else None
        self._pki = pki
        self._sockdir: Path | None = None
        self.ctl_socket = ""

    # -- addresses
    @property
    def pki(self) -> TestPki:
        if self._pki is None:
            self._pki = make_test_pki(self.tmp / "pki")
        return self._pki

    @property
    def ca_file(self) -> Path:
        """CA that signed the TLS listener's certificate (configure porch's CA with it)."""
        return self.pki.ca_cert

    def port(self, transport: str = "udp") -> int:
        ports = {"udp": self.udp_port, "tcp": self.tcp_port, "tls": self.tls_port}
        if ports.get(transport) is None:
            raise ValueError(f"{self.name} has no {transport} listener")
        return ports[transport]

    def address(self, transport: str = "udp") -> tuple[str, int]:
        return (LOOPBACK, self.port(transport))

    def uri(self, transport: str = "udp", user: str | None = None) -> str:
        """e.g. "sip:127.0.0.1:21000;transport=tcp" (the registrar URI porch is given)."""
        who = f"{user}@" if user else ""
        return f"sip:{who}{LOOPBACK}:{self.port(transport)};transport={transport}"

    def sips_uri(self, user: str | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"sips:{who}{LOOPBACK}:{self.port('tls')}"

    # -- life cycle
    def argv(self) -> list[str]:
        defines = [
            f'DBURL="text://{self.dbtext}"',
            f"UDP_PORT={self.udp_port}",
            f"TCP_PORT={self.tcp_port}",
            f'CTL_SOCK="unix:{self.ctl_socket}"',
        ]
        if self.tls:
            defines += [
                "WITH_TLS",
                f"TLS_PORT={self.tls_port}",
                f'TLS_CERT="{self.pki.server_cert}"',
                f'TLS_KEY="{self.pki.server_key}"',
            ]
        if self.backup:
            defines.append("BACKUP")
        if not self.nat:
            defines.append("NO_NAT")
        if self.reply_423:
            defines.append("REPLY_423")
        if self.min_expires is not None:
            defines.append(f"MIN_EXPIRES={self.min_expires}")
        if self.max_expires is not None:
            defines.append(f"MAX_EXPIRES={self.max_expires}")
        argv = [self.kamailio, "-DD", "-E", "-f", str(self.config), "-w", str(self.workdir)]
        for d in defines:
            argv += ["-A", d]
        return argv

    def start(self, timeout: float = 15.0) -> Kamailio:
        if self.tls and not (KAMAILIO_MODULES / "tls.so").exists():
            pytest.skip(
                "Kamailio TLS module missing (Debian package 'kamailio-tls-modules'; "
                "`make deps-test` installs it)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ctl_socket:
            self._sockdir = _short_dir("porch-kam-")
            self.ctl_socket = str(self._sockdir / "ctl.sock")
        self._spawn(self.argv(), self.tmp / f"{self.name}.log")
        ready = wait_until(self._ready, timeout, interval=0.1)
        if not ready:
            alive = self.running
            self.stop()
            raise self._fail(f"not ready within {timeout} s (process alive: {alive})")
        return self

    def _ready(self) -> bool:
        if not self.running:
            raise self._fail(f"exited with {self.proc.returncode}")
        if sip_options(self.udp_port, "udp", timeout=0.3) != 200:
            return False
        if sip_options(self.tcp_port, "tcp", timeout=0.5) != 200:
            return False
        if (
            self.tls
            and sip_options(
                self.tls_port, "tls", timeout=1.0, tls_context=self.pki.client_context()
            )
            != 200
        ):
            return False
        return os.path.exists(self.ctl_socket)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait until its ports can be bound again (a restart may follow)."""
        was_started = self.proc is not None
        self._kill_group(timeout)
        if was_started:
            ports = [(self.udp_port, ("udp",)), (self.tcp_port, ("tcp",))]
            if self.tls:
                ports.append((self.tls_port, ("tcp",)))
            wait_ports_free(ports, timeout)
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
            self.ctl_socket = ""

    def restart(self, pause: float = 0.0) -> Kamailio:
        """Stop, optionally stay down for `pause` seconds, start again on the same ports.

        The location table is in memory: registrations are gone after a restart.
        """
        self.stop()
        time.sleep(pause)
        return self.start()

    close = stop

    # -- RPC
    def kamcmd(self, *args: str, timeout: float = 5.0) -> str:
        r = subprocess.run(
            [self.kamcmd_bin, "-s", f"unix:{self.ctl_socket}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return r.stdout + r.stderr

    def contacts(self, aor: str) -> list[dict[str, str]]:
        """Registered contacts of `aor` ("1001" or "sip:1001@127.0.0.1"), from `ul.lookup`.

        Each is a dict of kamcmd's fields: "Address", "Expires", "Received", "Socket"
        (e.g. "tls:127.0.0.1:21001"), "User-Agent", "Call-ID", "CSeq", ...
        """
        out = self.kamcmd("ul.lookup", "location", f"s:{aor_user(aor)}")
        return _parse_kamcmd_contacts(out)

    def registered(self, aor: str) -> bool:
        return bool(self.contacts(aor))

    def aors(self) -> list[str]:
        return re.findall(r"AoR: (\S+)", self.kamcmd("ul.dump", "brief"))

    def wait_registered(
        self,
        aor: str,
        timeout: float = 10.0,
        transport: str | None = None,
        contains: str | None = None,
    ) -> dict[str, str]:
        """Wait for a contact of `aor` and return it.

        transport: only a contact registered over that listener ("udp", "tcp", "tls");
        contains: only a contact whose Address contains this text (e.g. ":<porch's port>").
        """

        def found():
            for c in self.contacts(aor):
                if transport and not c.get("Socket", "").startswith(f"{transport}:"):
                    continue
                if contains and contains not in c.get("Address", ""):
                    continue
                return c
            return None

        contact = wait_until(found, timeout, interval=0.1)
        if not contact:
            raise AssertionError(
                f"{aor} not registered at {self.name} within {timeout} s"
                f" (transport {transport}, contains {contains!r}); contacts: {self.contacts(aor)}\n"
                f"--- {self.log_path}:\n{tail(self.log_path, 40)}"
            )
        return contact

    def wait_unregistered(self, aor: str, timeout: float = 10.0) -> None:
        if not wait_until(lambda: not self.registered(aor), timeout, interval=0.1):
            raise AssertionError(f"{aor} still registered at {self.name} after {timeout} s")


# --------------------------------------------------------------------------- TLS tunnel


class TlsTunnel:
    """Byte relay between plain TCP and TLS on 127.0.0.1, for peers without TLS (SIPp).

    mode "client": accepts plain TCP on `port` and opens TLS to `target` (verified with
    `context`, e.g. `pki.client_context()`); SIPp then talks TCP to the tunnel.
    mode "server": accepts TLS on `port` (certificate from `context`, e.g.
    `pki.server_context()`) and forwards plain TCP to `target`.
    SIP headers pass unchanged, so Via/Contact still say TCP: good enough for REGISTER and for
    requests that are answered on the same connection.
    """

    def __init__(
        self,
        target: tuple[str, int],
        context: ssl.SSLContext,
        mode: str = "client",
        port: int | None = None,
    ) -> None:
        if mode not in ("client", "server"):
            raise ValueError(mode)
        self.target = target
        self.context = context
        self.mode = mode
        self.port = port or free_port(("tcp",))
        self.errors: list[str] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, self.port))
        self._listener.listen(16)
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="tls-tunnel").start()

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(s)
        return s

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "client":
                near = self._track(conn)
                raw = socket.create_connection(self.target, timeout=5)
                far = self._track(self.context.wrap_socket(raw, server_hostname=self.target[0]))
            else:
                near = self._track(self.context.wrap_socket(conn, server_side=True))
                far = self._track(socket.create_connection(self.target, timeout=5))
            near.settimeout(None)
            far.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(f"{self.mode} tunnel to {self.target}: {exc!r}")
            conn.close()
            return
        threading.Thread(target=self._pump, args=(far, near), daemon=True).start()
        self._pump(near, far)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()


# --------------------------------------------------------------------------- SIPp

# SIPp logs each 50 ms receive slice of the ringing loops as an error-file warning.
_SIPP_BENIGN = re.compile(r"receive timeout on message .*jumping to label")


@dataclass
class SippResult:
    """Outcome of one SIPp run: exit code and the text of its trace files."""

    scenario: str
    argv: list[str]
    returncode: int
    log: str  # lines written by the scenario's <log> actions (-trace_logs)
    messages: str  # every SIP message sent and received (-trace_msg)
    errors_raw: str  # unexpected messages, failed checks (-trace_err)
    screen: str  # final statistics screen (-trace_screen)
    output: str  # stdout + stderr
    tunnel_errors: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.returncode in (124, 137)

    @property
    def ok(self) -> bool:
        """Exit code 0: every call of the scenario succeeded."""
        return self.returncode == 0

    @property
    def errors(self) -> str:
        """The error trace without SIPp's routine receive-slice timeout notes."""
        parts = re.split(r"(?=\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t)", self.errors_raw)
        return "".join(p for p in parts if p.strip() and not _SIPP_BENIGN.search(p))

    def log_lines(self, prefix: str = "") -> list[str]:
        """The scenario's <log> lines that start with `prefix`."""
        return [ln for ln in self.log.splitlines() if ln.startswith(prefix)]

    def sent(self, start: str) -> list[str]:
        """Sent SIP messages whose first line starts with `start` (e.g. "INFO", "SIP/2.0 200")."""
        return self._messages("sent", start)

    def received(self, start: str) -> list[str]:
        """Received SIP messages whose first line starts with `start`."""
        return self._messages("received", start)

    def _messages(self, direction: str, start: str) -> list[str]:
        out = []
        for block in re.split(r"(?m)^-{20,} .*\n", self.messages):
            head, _, body = block.lstrip("\r\n").partition("\n")
            if f"message {direction}" in head:
                msg = body.lstrip("\r\n").rstrip("\r\n") + "\r\n"
                if msg.startswith(start):
                    out.append(msg)
        return out

    def report(self, lines: int = 40) -> str:
        """Readable summary for assertion messages."""

        def last(text: str) -> str:
            return "\n".join(text.strip().splitlines()[-lines:])

        return (
            f"SIPp {self.scenario}: exit code {self.returncode}"
            f"{' (timed out)' if self.timed_out else ''}\n"
            f"argv: {' '.join(self.argv)}\n"
            f"--- <log> lines:\n{last(self.log)}\n"
            f"--- errors:\n{last(self.errors)}\n"
            f"--- last messages:\n{last(self.messages)}\n"
            f"--- output:\n{last(self.output)}\n"
            + (f"--- tunnel: {self.tunnel_errors}\n" if self.tunnel_errors else "")
        )

    __str__ = report


class SippProcess(_Process):
    """A running SIPp (usually a UAS waiting for porch). `wait()` returns its SippResult."""

    def __init__(self, scenario: str, rundir: Path, port: int, transport: str, timeout: float):
        super().__init__()
        self.name = f"sipp {scenario}"
        self.scenario = scenario
        self.rundir = rundir
        self.port = port  # where peers reach this SIPp (the tunnel's port for TLS)
        self.transport = transport
        self.timeout = timeout
        self.argv: list[str] = []
        self.tunnel: TlsTunnel | None = None
        self._started = time.monotonic()
        self._result: SippResult | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def uri(self, user: str = "sipp") -> str:
        """SIP URI that reaches this SIPp directly (transport parameter unless UDP)."""
        params = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{user}@{LOOPBACK}:{self.port}{params}"

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish (bounded by its own timeout plus a margin) and collect files."""
        if self._result is None:
            assert self.proc is not None
            left = (
                timeout
                if timeout is not None
                else (self.timeout + 10 - (time.monotonic() - self._started))
            )
            try:
                self.proc.wait(max(left, 0.1))
            except subprocess.TimeoutExpired:
                self._kill_group()
            self._result = self._collect()
        return self._result

    def stop(self) -> SippResult:
        """End SIPp now (e.g. a UAS that was never called) and collect what it logged."""
        if self._result is None:
            self._kill_group(timeout=3)
            self._result = self._collect()
        return self._result

    def _collect(self) -> SippResult:
        if self.tunnel:
            self.tunnel.close()

        def read(name: str) -> str:
            p = self.rundir / name  # bytes: SIP's CRLFs stay as they were on the wire
            return p.read_bytes().decode(errors="replace") if p.exists() else ""

        rc = self.proc.returncode if self.proc else -1
        return SippResult(
            scenario=self.scenario,
            argv=self.argv,
            returncode=rc if rc is not None else -1,
            log=read("log.log"),
            messages=read("messages.log"),
            errors_raw=read("errors.log"),
            screen=read("screen.log"),
            output=read("output.log"),
            tunnel_errors=list(self.tunnel.errors) if self.tunnel else [],
        )

    def log_files(self) -> list[Path]:
        return [self.rundir / n for n in ("log.log", "errors.log", "messages.log", "output.log")]


class Sipp:
    """Runs SIPp scenarios from tests/interop/peers/sipp (or any path, or built-in "sn:uac").

    Always `-i 127.0.0.1 -bind_local -mi 127.0.0.1 -nostdin`, ports picked free, each run in
    its own directory under tmp/<name>/, wrapped in coreutils `timeout`.
    """

    def __init__(self, tmp: Path, name: str = "sipp") -> None:
        self.sipp = require("sipp")
        self.timeout_bin = require("timeout")
        self.tmp = Path(tmp)
        self.name = name
        self.processes: list[SippProcess] = []
        self._runs = 0

    @staticmethod
    def scenario_path(scenario: str | Path) -> Path:
        p = Path(scenario)
        if p.exists():
            return p.resolve()
        name = scenario if str(scenario).endswith(".xml") else f"{scenario}.xml"
        path = SIPP_DIR / name
        if not path.exists():
            known = sorted(x.stem for x in SIPP_DIR.glob("*.xml"))
            raise FileNotFoundError(f"no SIPp scenario {scenario!r}; known: {known}")
        return path

    def start(
        self,
        scenario: str | Path,
        remote: str | tuple[str, int] | None = None,
        *,
        service: str | None = None,
        transport: str = "udp",
        port: int | None = None,
        media_port: int | None = None,
        auth: tuple[str, str] | None = None,
        variables: dict[str, object] | None = None,
        calls: int = 1,
        rate: float | None = None,
        duration_ms: int | None = None,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
        pki: TestPki | None = None,
        extra: Sequence[str] = (),
    ) -> SippProcess:
        """Start SIPp in the background and return at once.

        scenario: file stem in tests/interop/peers/sipp ("uas_answer"), a path, or "sn:uac".
        remote: "127.0.0.1:5060" or (host, port) for a UAC; None for a UAS.
        service: -s (the user part UAC scenarios call); auth: (user, password) for -au/-ap.
        variables: -set name value (scenario Global variables; see each file's header).
        duration_ms: -d (length of <pause/> without milliseconds).
        transport: "udp", "tcp", or "tls" (SIPp 3.6 here has no TLS: a TlsTunnel carries its
        TCP; a UAC needs `tls_context` to verify the server, a UAS needs `pki` for its cert).
        """
        self._runs += 1
        label = (
            "builtin-" + str(scenario)[3:]
            if str(scenario).startswith("sn:")
            else Path(str(scenario)).stem
        )
        rundir = self.tmp / self.name / f"{self._runs:02d}-{label}"
        rundir.mkdir(parents=True, exist_ok=True)

        sipp_port = port if (port and transport != "tls") else free_port(("udp", "tcp"))
        media = media_port or free_port(("udp",), count=4)
        public_port = sipp_port
        tunnel = None
        if transport == "tls":
            if remote is not None:
                host, rport = _split_hostport(remote)
                ctx = tls_context or ssl._create_unverified_context()
                tunnel = TlsTunnel((host, rport), ctx, mode="client")
                remote = f"{LOOPBACK}:{tunnel.port}"
            else:
                if pki is None:
                    pki = make_test_pki(self.tmp / "pki")
                tunnel = TlsTunnel(
                    (LOOPBACK, sipp_port), pki.server_context(), mode="server", port=port
                )
                public_port = tunnel.port

        argv = [
            self.timeout_bin,
            "--signal=TERM",
            "--kill-after=5",
            f"{int(timeout) + 5}",
            self.sipp,
        ]
        if str(scenario).startswith("sn:"):
            argv += ["-sn", str(scenario)[3:]]
        else:
            argv += ["-sf", str(self.scenario_path(scenario))]
        if remote is not None:
            host, rport = _split_hostport(remote)
            argv.append(f"{host}:{rport}")
        argv += [
            "-i",
            LOOPBACK,
            "-bind_local",
            "-mi",
            LOOPBACK,
            "-nostdin",
            "-p",
            str(sipp_port),
            "-mp",
            str(media),
            "-cp",
            str(free_port(("udp",))),
            "-t",
            "u1" if transport == "udp" else "t1",
            "-m",
            str(calls),
            "-timeout",
            f"{int(timeout)}s",
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            "messages.log",
            "-trace_err",
            "-error_file",
            "errors.log",
            "-trace_logs",
            "-log_file",
            "log.log",
            "-trace_screen",
            "-screen_file",
            "screen.log",
        ]
        if service:
            argv += ["-s", service]
        if auth:
            argv += ["-au", auth[0], "-ap", auth[1]]
        if rate is not None:
            argv += ["-r", str(rate)]
        if duration_ms is not None:
            argv += ["-d", str(int(duration_ms))]
        for key, value in (variables or {}).items():
            argv += ["-set", str(key), str(value)]
        argv += list(extra)

        proc = SippProcess(label, rundir, public_port, transport, timeout)
        proc.argv = argv
        proc.tunnel = tunnel
        proc._spawn(argv, rundir / "output.log", cwd=rundir)
        self.processes.append(proc)
        if remote is None:
            # a UAS is ready once its socket is bound
            kind = "udp" if transport == "udp" else "tcp"
            if not wait_until(lambda: not port_is_free(sipp_port, (kind,)), 5.0) and proc.running:
                raise proc._fail(f"did not bind {kind} port {sipp_port}")
            if not proc.running:
                res = proc.wait()
                raise RuntimeError(f"SIPp exited at start:\n{res.report()}")
        return proc

    def run(self, scenario: str | Path, remote=None, **kwargs) -> SippResult:
        """Run a scenario to the end (see `start` for the arguments) and return its result."""
        return self.start(scenario, remote, **kwargs).wait()

    def stop_all(self) -> None:
        for p in self.processes:
            p.stop()

    def log_files(self) -> list[Path]:
        return [f for p in self.processes for f in p.log_files()]


def _split_hostport(remote: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(remote, tuple):
        return remote[0], int(remote[1])
    host, _, port = str(remote).rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- baresip


def write_tone_wav(
    path: Path, freq: float = 1000.0, seconds: float = 10.0, rate: int = 8000
) -> Path:
    """8 kHz mono s16 sine WAV: baresip's aufile source (ausine only does 48 kHz)."""
    path = Path(path)
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
        for i in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


class _Netstrings:
    """baresip ctrl_tcp client: netstring-framed JSON, events collected by a reader thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5)
        self.sock.settimeout(None)
        self.events: list[dict] = []
        self.responses: dict[str, dict] = {}
        self.cond = threading.Condition()
        self._token = 0
        self.closed = False
        threading.Thread(target=self._reader, daemon=True, name="baresip-ctrl").start()

    def _reader(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(65536):
                buf += chunk
                while True:
                    colon = buf.find(b":")
                    if colon < 0:
                        break
                    size = int(buf[:colon])
                    if len(buf) < colon + 1 + size + 1:
                        break
                    obj = json.loads(buf[colon + 1 : colon + 1 + size])
                    buf = buf[colon + 1 + size + 1 :]
                    with self.cond:
                        if obj.get("event"):
                            obj["_t"] = time.monotonic()
                            self.events.append(obj)
                        elif obj.get("response"):
                            self.responses[str(obj.get("token"))] = obj
                        self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def send(self, command: str, params: str = "") -> str:
        with self.cond:
            self._token += 1
            token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        return token

    def response(self, token: str, timeout: float) -> dict | None:
        with self.cond:
            self.cond.wait_for(lambda: token in self.responses or self.closed, timeout)
            return self.responses.get(token)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Baresip(_Process):
    """baresip 1.0.0 as a real phone (caller or auto-answering callee), scripted over ctrl_tcp.

    Commands go through `command()`; every event (REGISTER_OK, CALL_RINGING, CALL_ESTABLISHED,
    CALL_DTMF_START with param=<digit>, CALL_CLOSED, ...) is kept in `events`, in order.
    baresip 1.0.0 sends DTMF as RFC 4733 only; it receives both RFC 4733 and SIP INFO.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        role: str = "callee",
        user: str | None = None,
        password: str | None = None,
        registrar: Kamailio | tuple[str, int] | None = None,
        transport: str = "udp",
        answermode: str | None = None,
        regint: int = 300,
        account_params: str = "",
        cafile: Path | None = None,
        name: str | None = None,
        sip_port: int | None = None,
        ctrl_port: int | None = None,
    ) -> None:
        super().__init__()
        if role not in ("caller", "callee"):
            raise ValueError(role)
        self.baresip = require("baresip")
        self.role = role
        self.user = user or ("door" if role == "callee" else "1001")
        default_pw = Kamailio.USERS.get(self.user)
        self.password = password if password is not None else default_pw
        self.registrar = registrar
        self.transport = transport
        self.answermode = answermode or ("auto" if role == "callee" else "manual")
        self.regint = regint if registrar is not None else 0
        self.account_params = account_params
        self.cafile = cafile
        self.name = name or f"baresip-{role}"
        self.tmp = Path(tmp)
        self.workdir = self.tmp / self.name
        # baresip listens on UDP+TCP sip_port and TCP sip_port+1 (TLS)
        self.sip_port = sip_port or free_port(("udp", "tcp"), count=2)
        self.ctrl_port = ctrl_port or free_port(("tcp",))
        self.rtp_min = free_port(("udp",), count=10)
        self.rtp_max = self.rtp_min + 9
        self.ctrl: _Netstrings | None = None

    @property
    def uri(self) -> str:
        """Direct SIP URI of this phone (peer-to-peer calls), e.g. sip:door@127.0.0.1:21000."""
        params = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}{params}"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{LOOPBACK}"

    def _account_line(self) -> str:
        if self.registrar is None:
            line = f"<sip:{self.user}@{LOOPBACK}>;regint=0"
        else:
            if isinstance(self.registrar, Kamailio):
                host, port = self.registrar.address(self.transport)
            else:
                host, port = self.registrar
            line = (
                f"<sip:{self.user}@{host}:{port};transport={self.transport}>"
                f";auth_user={self.user};auth_pass={self.password};regint={self.regint}"
            )
        line += f";answermode={self.answermode};audio_codecs=PCMU,PCMA"
        return line + self.account_params

    def _render(self) -> None:
        src = PEERS_DIR / "baresip" / self.role
        self.workdir.mkdir(parents=True, exist_ok=True)
        cafile = self.cafile
        if cafile is None and isinstance(self.registrar, Kamailio) and self.transport == "tls":
            cafile = self.registrar.ca_file
        values = {
            "sip_port": self.sip_port,
            "ctrl_port": self.ctrl_port,
            "rtp_min": self.rtp_min,
            "rtp_max": self.rtp_max,
            "wav": "tone_1k_8k_mono.wav",
            "tls_config": f"sip_cafile\t\t{cafile}\n" if cafile else "",
            "account": self._account_line(),
        }
        for fname in ("config", "accounts", "contacts"):
            text = string.Template((src / fname).read_text()).substitute(values)
            (self.workdir / fname).write_text(text)
        write_tone_wav(self.workdir / "tone_1k_8k_mono.wav")

    def start(self, timeout: float = 10.0, wait_registered: bool = True) -> Baresip:
        """Start, connect the control socket and (with a registrar) wait for REGISTER_OK."""
        self._render()
        self._spawn(
            [self.baresip, "-f", str(self.workdir)], self.tmp / f"{self.name}.log", cwd=self.workdir
        )

        def connected():
            if not self.running:
                raise self._fail(f"exited with {self.proc.returncode}")
            try:
                return _Netstrings(self.ctrl_port)
            except OSError:
                return None

        self.ctrl = wait_until(connected, timeout)
        if self.ctrl is None:
            self.stop()
            raise self._fail(f"ctrl_tcp on {self.ctrl_port} not up within {timeout} s")
        if self.registrar is not None and wait_registered:
            self.wait_registered(timeout)
        return self

    def command(self, name: str, params: str = "", timeout: float = 5.0) -> dict:
        """Run a ctrl_tcp command (dial, hangup, accept, sndcode, reginfo, ...); its response."""
        assert self.ctrl, "baresip not started"
        token = self.ctrl.send(name, params)
        resp = self.ctrl.response(token, timeout)
        if resp is None:
            raise self._fail(f"no response to {name!r} {params!r} within {timeout} s")
        return resp

    @property
    def events(self) -> list[dict]:
        return list(self.ctrl.events) if self.ctrl else []

    def mark(self) -> int:
        """Index to pass as `since` so that only later events count."""
        return len(self.ctrl.events) if self.ctrl else 0

    def wait_event(self, kind: str, timeout: float = 10.0, since: int = 0, **match) -> dict:
        """First event of type `kind` (fields equal to `match`, e.g. param="1") after `since`."""
        assert self.ctrl, "baresip not started"

        def find():
            for ev in self.ctrl.events[since:]:
                if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            return None

        with self.ctrl.cond:
            self.ctrl.cond.wait_for(lambda: find() is not None or self.ctrl.closed, timeout)
            ev = find()
        if ev is None:
            seen = [(e.get("type"), e.get("param")) for e in self.ctrl.events[since:]]
            raise AssertionError(
                f"{self.name}: no {kind} {match} within {timeout} s; events: {seen}\n"
                f"--- {self.log_path}:\n{tail(self.log_path, 40)}"
            )
        return ev

    def dtmf_received(self, since: int = 0) -> str:
        """Digits reported by CALL_DTMF_START events, in order."""
        return "".join(
            str(e.get("param", ""))
            for e in self.events[since:]
            if e.get("type") == "CALL_DTMF_START"
        )

    def wait_registered(self, timeout: float = 10.0) -> None:
        def ok():
            if any(e.get("type") == "REGISTER_OK" for e in self.events):
                return True
            data = str(self.command("reginfo").get("data", ""))
            return "OK" in data and self.user in data

        if not wait_until(ok, timeout, interval=0.2):
            raise self._fail(f"not registered within {timeout} s: {self.command('reginfo')}")

    def dial(self, uri: str) -> dict:
        return self.command("dial", uri)

    def accept(self) -> dict:
        return self.command("accept")

    def hangup(self) -> dict:
        return self.command("hangup")

    def send_dtmf(self, digits: str) -> dict:
        """RFC 4733 digits in the current call (baresip 1.0.0 cannot send SIP INFO)."""
        return self.command("sndcode", digits)

    def stop(self, timeout: float = 8.0) -> None:
        """Quit (it un-registers), wait for the process, then for its ports to be free."""
        if self.running and self.ctrl and not self.ctrl.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.ctrl.send("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.ctrl:
            self.ctrl.close()
        was_started = self.proc is not None
        self._kill_group(3)
        if was_started:
            wait_ports_free(
                [
                    (self.sip_port, ("udp", "tcp")),
                    (self.sip_port + 1, ("tcp",)),
                    (self.ctrl_port, ("tcp",)),
                ],
                timeout,
            )


# --------------------------------------------------------------------------- linphonec


class Linphone(_Process):
    """linphonec (linphone-cli) driven over its stdin, with its own HOME.

    linphonecsh is not used on purpose: it talks to linphonec through a fixed socket,
    /tmp/linphonec-<uid>, which any other linphonec of the same user on the machine would
    share. Over stdin every instance is separate. The console output (call and registration
    state lines) is collected in `output`.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        name: str = "linphone",
        sip_port: int | None = None,
        rtp_port: int | None = None,
        use_info: bool = False,
        use_rfc2833: bool = True,
        auto_answer: bool = False,
    ) -> None:
        super().__init__()
        self.linphonec = require("linphonec")
        self.name = name
        self.tmp = Path(tmp)
        self.workdir = self.tmp / name
        self.home = self.workdir / "home"
        self.sip_port = sip_port or free_port(("udp", "tcp"))
        self.rtp_port = rtp_port or free_port(("udp",), count=4)
        self.use_info = use_info
        self.use_rfc2833 = use_rfc2833
        self.auto_answer = auto_answer
        self.user: str | None = None
        self._out: list[str] = []
        self._cond = threading.Condition()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._out)

    def mark(self) -> int:
        return len(self.output)

    @property
    def uri(self) -> str:
        return f"sip:{self.user or 'linphone'}@{LOOPBACK}:{self.sip_port}"

    def start(self, timeout: float = 20.0) -> Linphone:
        (self.home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rc = self.workdir / "linphonerc"
        values = {
            "sip_port": self.sip_port,
            "rtp_port": self.rtp_port,
            "use_info": int(self.use_info),
            "use_rfc2833": int(self.use_rfc2833),
        }
        rc.write_text(
            string.Template((PEERS_DIR / "linphone" / "linphonerc").read_text()).substitute(values)
        )
        write_tone_wav(self.workdir / "tone.wav")
        argv = [
            self.linphonec,
            "-c",
            str(rc),
            "-d",
            "6",
            "-l",
            str(self.workdir / "liblinphone.log"),
        ]
        if self.auto_answer:
            argv.append("-a")
        env = {**os.environ, "HOME": str(self.home)}
        env.pop("DISPLAY", None)
        self._spawn(
            argv,
            self.tmp / f"{self.name}.log",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self.workdir,
            env=env,
        )
        threading.Thread(target=self._reader, daemon=True, name="linphonec-out").start()
        if not self.wait_output(r"linphonec> ", timeout, raise_=False):
            self.stop()
            raise self._fail(f"no prompt within {timeout} s:\n{self.output[-2000:]}")
        self.command("soundcard use files", expect=r"Using wav files", timeout=5)
        return self

    def _reader(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.log_path, "ab") as log:
            while chunk := self.proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                with self._cond:
                    self._out.append(chunk.decode(errors="replace"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_output(self, pattern: str, timeout: float = 10.0, since: int = 0, raise_: bool = True):
        """First match of regex `pattern` in the console output after offset `since`."""
        rx = re.compile(pattern)
        with self._cond:

            def find():
                return rx.search("".join(self._out)[since:])

            self._cond.wait_for(lambda: find() or not self.running, timeout)
            m = find()
        if m is None and raise_:
            raise AssertionError(
                f"{self.name}: no /{pattern}/ within {timeout} s; output:\n"
                f"{self.output[since:][-3000:]}"
            )
        return m

    def command(self, line: str, expect: str | None = None, timeout: float = 5.0):
        """Type one console line; with `expect`, wait for that regex in the reply and return it."""
        assert self.proc and self.proc.stdin, "linphonec not started"
        since = self.mark()
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        if expect:
            return self.wait_output(expect, timeout, since)
        self.wait_output(r"linphonec> ", timeout, since, raise_=False)
        return None

    def register(
        self,
        user: str,
        password: str | None = None,
        registrar: Kamailio | tuple[str, int] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Register sip:user@host:port with digest; waits until linphonec says registered."""
        self.user = user
        password = password if password is not None else Kamailio.USERS.get(user, "")
        if isinstance(registrar, Kamailio):
            host, port = registrar.address("udp")
        elif registrar is not None:
            host, port = registrar
        else:
            raise ValueError("registrar needed")
        self.command(f"register sip:{user}@{host}:{port} sip:{host}:{port} {password}")

        def registered():
            self.command("status register")
            return re.search(r"registered, identity=", self.output)

        if not wait_until(registered, timeout, interval=0.3):
            raise self._fail(f"not registered within {timeout} s:\n{self.output[-2000:]}")

    def dial(self, uri: str) -> None:
        self.command(f"call {uri}")

    def wait_connected(self, timeout: float = 10.0, since: int = 0):
        return self.wait_output(r"Call \d+ with .* connected|Call answered by", timeout, since)

    def set_dtmf_mode(self, info: bool) -> None:
        """Send DTMF as SIP INFO application/dtmf-relay (True) or RFC 4733 (False)."""
        self.command(f"param sip use_info {int(info)}")
        self.command(f"param sip use_rfc2833 {int(not info)}")

    def send_dtmf(self, digits: str, gap: float = 0.3) -> None:
        """Each digit typed alone on the console line sends one DTMF in the current call."""
        for d in digits:
            self.command(d)
            time.sleep(gap)

    def hangup(self) -> None:
        self.command("terminate")

    def play(self, wav: Path | None = None) -> None:
        self.command(f"play {wav or self.workdir / 'tone.wav'}")

    def stop(self, timeout: float = 8.0) -> None:
        if self.running and self.proc and self.proc.stdin:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        was_started = self.proc is not None
        self._kill_group(3)
        if was_started:
            wait_ports_free([(self.sip_port, ("udp",))], timeout)

    def log_files(self) -> list[Path]:
        return [p for p in (self.log_path, self.workdir / "liblinphone.log") if p]


# --------------------------------------------------------------------------- tshark


class Tshark(_Process):
    """Packet capture on the loopback with tshark (needs root), decoded afterwards.

    `ports` limits the capture to those UDP/TCP ports (pass every peer's SIP and RTP ports);
    `bpf` overrides the filter.
    """

    def __init__(
        self, tmp: Path, ports: Iterable[int] = (), *, bpf: str | None = None, name: str = "capture"
    ) -> None:
        super().__init__()
        self.tshark = require("tshark")
        if os.geteuid() != 0:
            pytest.skip("tshark capture on lo needs root")
        self.name = name
        self.tmp = Path(tmp)
        self.pcap = self.tmp / f"{name}.pcapng"
        ports = list(ports)
        self.bpf = bpf or (" or ".join(f"port {p}" for p in ports) if ports else "udp or tcp")

    def start(self, timeout: float = 10.0) -> Tshark:
        self._spawn(
            [self.tshark, "-i", "lo", "-f", self.bpf, "-w", str(self.pcap), "-q"],
            self.tmp / f"{self.name}.log",
        )
        if not wait_until(lambda: "Capturing on" in self.log_text() or not self.running, timeout):
            raise self._fail("capture did not start")
        if not self.running:
            raise self._fail("tshark exited")
        return self

    def stop(self) -> None:
        if self.running:
            time.sleep(0.2)  # let the last packets reach the file
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._kill_group(3)

    def fields(
        self, display_filter: str, fields: Sequence[str], extra: Sequence[str] = ()
    ) -> list[dict]:
        """One dict per matching packet: field -> first value (or None)."""
        r = subprocess.run(
            [
                self.tshark,
                "-r",
                str(self.pcap),
                "-Y",
                display_filter,
                "-T",
                "json",
                *[a for f in fields for a in ("-e", f)],
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"tshark -r failed: {r.stderr}")
        out = []
        for pkt in json.loads(r.stdout or "[]"):
            layers = pkt.get("_source", {}).get("layers", {})
            out.append({f: (layers.get(f) or [None])[0] for f in fields})
        return out

    def sip(self) -> list[dict]:
        """SIP messages: time, addresses, method or status, CSeq, Call-ID."""
        return self.fields(
            "sip",
            [
                "frame.time_epoch",
                "ip.src",
                "udp.srcport",
                "tcp.srcport",
                "ip.dst",
                "udp.dstport",
                "tcp.dstport",
                "sip.Method",
                "sip.Status-Code",
                "sip.CSeq",
                "sip.Call-ID",
            ],
        )

    def rtp_events(self, rtp_ports: Iterable[int] = ()) -> list[dict]:
        """RFC 4733 telephone-events (event id, end flag, duration)."""
        extra = [a for p in rtp_ports for a in ("-d", f"udp.port=={p},rtp")]
        return self.fields(
            "rtpevent",
            [
                "frame.time_epoch",
                "rtp.p_type",
                "rtpevent.event_id",
                "rtpevent.end_of_event",
                "rtpevent.duration",
            ],
            extra,
        )


# --------------------------------------------------------------------------- group


class PeerSet:
    """Starts peers for one test and stops all of them, whatever happens (see peers_fixtures)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = Path(tmp)
        self.peers: list = []
        self.tunnels: list[TlsTunnel] = []
        self._sipp: Sipp | None = None
        self._pki: TestPki | None = None

    @property
    def pki(self) -> TestPki:
        if self._pki is None:
            self._pki = make_test_pki(self.tmp / "pki")
        return self._pki

    def add(self, peer):
        self.peers.append(peer)
        return peer

    def kamailio(self, **kwargs) -> Kamailio:
        """Start a Kamailio (arguments as for `Kamailio`); TLS uses this set's test PKI."""
        if kwargs.get("tls", True):
            kwargs.setdefault("pki", self.pki)
        return self.add(Kamailio(self.tmp, **kwargs)).start()

    @property
    def sipp(self) -> Sipp:
        if self._sipp is None:
            self._sipp = self.add(Sipp(self.tmp))
        return self._sipp

    def baresip(self, **kwargs) -> Baresip:
        return self.add(Baresip(self.tmp, **kwargs)).start()

    def linphone(self, **kwargs) -> Linphone:
        return self.add(Linphone(self.tmp, **kwargs)).start()

    def tshark(self, ports: Iterable[int] = (), **kwargs) -> Tshark:
        return self.add(Tshark(self.tmp, ports, **kwargs)).start()

    def stop_all(self) -> list[str]:
        """Stop in reverse start order; returns the problems met (teardown must go on)."""
        problems = []
        for peer in reversed(self.peers):
            try:
                if isinstance(peer, Sipp):
                    peer.stop_all()
                elif isinstance(peer, Kamailio):
                    peer.close()
                else:
                    peer.stop()
            except Exception as exc:
                problems.append(f"{getattr(peer, 'name', peer)}: {exc}")
        for t in self.tunnels:
            t.close()
        return problems

    def log_report(self, lines: int = 80) -> str:
        parts = []
        for peer in self.peers:
            for path in peer.log_files():
                if path and Path(path).exists() and Path(path).stat().st_size:
                    parts.append(f"----- {path} (last {lines} lines)\n{tail(path, lines)}")
        return "\n".join(parts)
