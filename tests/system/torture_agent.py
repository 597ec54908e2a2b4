"""Runs inside the test's network namespace: sends the RFC 4475 messages to porch over UDP.

Reads one JSON document on stdin: {"sip_port", "web_port", "password", "messages":
{name: hex}}. Waits for porch's HTTP API and SIP port, then sends each message followed by
an OPTIONS probe from the same socket; once the probe is answered, everything porch said
about the message before it has arrived (one socket, one event loop, answers in order).
Answers are caught on the sending socket (rport, and parse errors answered to the packet's
source) and on 127.0.0.1:5060 and :5050, where RFC 3261 18.2.2 sends answers to Via
headers without rport (the sent-by port, at the `received` address 127.0.0.1).

Prints one JSON document: per message the answers (status, reason, Call-ID, the socket
they reached, the message they were sent after), then /api/status and the event log.
Only the standard library: this runs with the same interpreter as porch, nothing else.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import sys
import time

LISTEN_PORTS = (5060, 5050)  # the sent-by ports in the messages' top Via lines
STATUS_LINE = re.compile(rb"SIP/2\.0 ([0-9]{3}) ?([^\r\n]*)")
CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(.*?)[ \t]*\r?$")


def api(port: int, method: str, path: str, body=None, token=None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers=headers)  # fmt: skip
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text) if text else None
    except ValueError:
        return resp.status, text


def wait_for_api(port: int, deadline: float) -> None:
    while True:
        try:
            api(port, "GET", "/api/status")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def options(port: int, call_id: str) -> bytes:
    return (
        "OPTIONS sip:door@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK-{call_id}\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:door@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Catcher:
    """Every datagram that reaches our sockets, in arrival order, tagged with the socket."""

    def __init__(self) -> None:
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.sockets = [self.tx]
        for port in LISTEN_PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            self.sockets.append(s)
        self.got: list[tuple[bytes, int, int]] = []  # (data, local port, window)
        self.window = -1

    def poll(self, timeout: float) -> None:
        ready, _, _ = select.select(self.sockets, [], [], timeout)
        for s in ready:
            data = s.recv(65535)
            self.got.append((data, s.getsockname()[1], self.window))

    def until(self, call_id: bytes, timeout: float) -> bool:
        """Collect until an answer carrying `call_id` arrives (True) or time runs out."""
        deadline = time.monotonic() + timeout
        seen = len(self.got)
        while time.monotonic() < deadline:
            self.poll(max(0.0, deadline - time.monotonic()))
            for data, _, _ in self.got[seen:]:
                if call_id_of(data) == call_id:
                    return True
            seen = len(self.got)
        return False

    def drain(self, quiet: float) -> None:
        """Collect until nothing has arrived for `quiet` seconds."""
        count = -1
        while count != len(self.got):
            count = len(self.got)
            self.poll(quiet)


def call_id_of(data: bytes) -> bytes | None:
    m = CALL_ID.search(data.split(b"\r\n\r\n", 1)[0])
    return m.group(1) if m else None


def branch_of(data: bytes) -> bytes | None:
    """The branch parameter of the first Via line (requests and their answers share it)."""
    via = header(data, b"Via", b"v")
    m = re.search(rb"branch[ \t]*=[ \t]*([^;, \r\n]+)", via) if via else None
    return m.group(1) if m else None


def header(data: bytes, *names: bytes) -> bytes | None:
    """The first value of a header (any of `names`, case-insensitive) in a response."""
    pattern = rb"(?im)^(?:" + b"|".join(re.escape(n) for n in names) + rb")[ \t]*:[ \t]*(.*?)\r?$"
    m = re.search(pattern, data.split(b"\r\n\r\n", 1)[0])
    return m.group(1) if m else None


def final_invite_answer(data: bytes) -> int | None:
    """The status of a final response to an INVITE, else None."""
    m = STATUS_LINE.match(data)
    cseq = header(data, b"CSeq")
    if m is None or cseq is None or not cseq.upper().endswith(b"INVITE"):
        return None
    status = int(m.group(1))
    return status if status >= 200 else None


class Caller:
    """What a caller does after porch's final answer: ACK it; after a 2xx, hang up (BYE).

    Built from porch's response (From, To with porch's tag, Call-ID, CSeq, Contact), so
    it works whatever the torture message's own header fields look like.
    """

    def __init__(self, catcher: Catcher, sip_port: int) -> None:
        self.catcher = catcher
        self.sip_port = sip_port
        self.port = catcher.tx.getsockname()[1]
        self.count = 0

    def request(self, method: str, uri: bytes, response: bytes, number: bytes, via: bytes) -> None:
        lines = [
            method.encode() + b" " + uri + b" SIP/2.0",
            b"Via: " + via,
            b"Max-Forwards: 70",
            b"From: " + (header(response, b"From", b"f") or b""),
            b"To: " + (header(response, b"To", b"t") or b""),
            b"Call-ID: " + (header(response, b"Call-ID", b"i") or b""),
            b"CSeq: " + number + b" " + method.encode(),
            b"Content-Length: 0",
            b"",
            b"",
        ]
        self.catcher.tx.sendto(b"\r\n".join(lines), ("127.0.0.1", self.sip_port))

    def our_via(self) -> bytes:
        self.count += 1
        return f"SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bK-agent{self.count}".encode()

    def finish(self, invite: bytes, response: bytes) -> dict:
        """ACK porch's final answer to `invite`; after a 2xx also send BYE and wait for 200."""
        status = final_invite_answer(response)
        number = (header(response, b"CSeq") or b"0").split()[0]
        if status is None:
            return {}
        if status >= 300:  # hop by hop: the INVITE's Request-URI and top Via (RFC 3261 17.1.1.3)
            uri = invite.split(b"\r\n", 1)[0].split()[1]
            top = (header(response, b"Via", b"v") or b"").split(b",")[0]
            self.request("ACK", uri, response, number, top)
            return {"ack": True}
        contact = header(response, b"Contact", b"m") or b""
        uri = contact[contact.find(b"<") + 1 : contact.find(b">")] if b"<" in contact else contact
        self.request("ACK", uri, response, number, self.our_via())
        self.request("BYE", uri, response, str(int(number) + 1).encode(), self.our_via())
        cid = header(response, b"Call-ID", b"i") or b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for data, _, _ in self.catcher.got:
                cseq = header(data, b"CSeq") or b""
                if call_id_of(data) == cid and cseq.upper().endswith(b"BYE"):
                    m = STATUS_LINE.match(data)
                    return {"ack": True, "bye": int(m.group(1)) if m else None}
            self.catcher.poll(0.05)
        return {"ack": True, "bye": None}


def wait_until_idle(web_port: int, token: str | None, timeout: float) -> str | None:
    """Poll /api/status until no call is going on; the last `call` value seen."""
    deadline = time.monotonic() + timeout
    call = None
    while time.monotonic() < deadline:
        _, body = api(web_port, "GET", "/api/status", token=token)
        call = body.get("call") if isinstance(body, dict) else None
        if call == "idle":
            break
        time.sleep(0.05)
    return call


def main() -> None:
    job = json.loads(sys.stdin.read())
    sip_port, web_port = job["sip_port"], job["web_port"]
    messages = {name: bytes.fromhex(h) for name, h in job["messages"].items()}
    wait_for_api(web_port, time.monotonic() + 20)
    _, setup = api(web_port, "POST", "/api/setup", {"password": job["password"]})
    token = setup.get("token") if isinstance(setup, dict) else None
    catcher = Catcher()
    caller = Caller(catcher, sip_port)
    tx_port = catcher.tx.getsockname()[1]
    ready = False
    for attempt in range(40):  # the SIP socket may open a moment after the web server
        catcher.tx.sendto(options(tx_port, f"ready-{attempt}"), ("127.0.0.1", sip_port))
        if catcher.until(f"ready-{attempt}".encode(), 0.25):
            ready = True
            break
    report: dict = {"ready": ready, "answers": {}, "probes_lost": [], "calls": {}}
    if ready:
        names = list(messages)
        for i, name in enumerate(names):
            catcher.window = i
            data = messages[name]
            seen = len(catcher.got)
            catcher.tx.sendto(data, ("127.0.0.1", sip_port))
            probe = f"probe-{i}"
            catcher.tx.sendto(options(tx_port, probe), ("127.0.0.1", sip_port))
            if not catcher.until(probe.encode(), 3.0):
                report["probes_lost"].append(name)
            catcher.drain(0.02)
            if data.startswith(b"INVITE "):
                # Answers to an INVITE may come later (the call is set up first): wait for
                # the final one, then behave like the caller, so the next INVITE finds the
                # door idle again.
                own = call_id_of(data)
                final = None
                deadline = time.monotonic() + 3
                while final is None and time.monotonic() < deadline:
                    for got, _, _ in catcher.got[seen:]:
                        if call_id_of(got) == own and final_invite_answer(got):
                            final = got
                    if final is None:
                        catcher.poll(0.05)
                if final is not None:
                    report["calls"][name] = caller.finish(data, final)
                    report["calls"][name]["idle"] = wait_until_idle(web_port, token, 5)
        catcher.window = len(names)
        catcher.drain(0.5)  # late answers and the first retransmissions
        own = {call_id_of(messages[name]): name for name in names}
        branches: dict[bytes | None, list[str]] = {}
        for name in names:
            branches.setdefault(branch_of(messages[name]), []).append(name)
            report["answers"][name] = []
        for data, port, window in catcher.got:
            cid = call_id_of(data)
            if cid is not None and cid.startswith((b"probe-", b"ready-")):
                continue
            if b"branch=z9hG4bK-agent" in (header(data, b"Via", b"v") or b""):
                continue  # the answer to our own ACK or BYE (in report["calls"])
            m = STATUS_LINE.match(data)
            name = own.get(cid) if cid is not None else None
            if name is None:  # no Call-ID of ours: a unique branch, else the message before
                same = branches.get(branch_of(data), [])
                name = same[0] if len(same) == 1 else names[min(window, len(names) - 1)]
            report["answers"][name].append(
                {
                    "status": int(m.group(1)) if m else None,
                    "reason": m.group(2).decode("utf-8", "replace") if m else None,
                    "call_id": cid.decode("utf-8", "replace") if cid is not None else None,
                    "port": "source" if port == tx_port else port,
                    "window": window,
                    "text": data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace"),
                }
            )
    code, status = api(web_port, "GET", "/api/status", token=token)
    report["status"] = {"code": code, "body": status}
    code, events = api(web_port, "GET", "/api/events?since=0&limit=1000", token=token)
    report["events"] = {"code": code, "body": events}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
