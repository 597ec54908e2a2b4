"""SIP user agent latency over loopback: button press -> INVITE on the wire, and
SIP INFO `unlock` received -> relay on.

The firmware runs as in `porch run --sim` (the whole `App`: intercom, mocked GPIO, event
log, web server, user agent) on its own event loop thread. This thread is the far phone
and the finger: it drives the mocked button pin the way gpiozero's edge detection does,
and speaks SIP from a plain socket.

- press -> INVITE: from driving the pin to the INVITE arriving at the phone's socket
  (each call is refused 486 so the door is idle again for the next press);
- INFO -> relay: in one answered call, from sending the INFO to the relay output being
  on (the pulse is 0.2 s; the next INFO waits until the relay is off again).

Baseline, same run: a datagram echoed by a bare asyncio UDP endpoint on a second loop
thread (round trip), the floor of "in through a loop, out again" on this machine. The
event log sits on tmpfs when there is one (/dev/shm); on an SD card its fsync per event
adds to the press figure (two events are written before the INVITE goes out).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from porch import config
from porch.bench import BenchResult
from porch.sip.message import Request, Response, build_request, make_response, parse_datagram

LOOP_START_TIMEOUT = 10.0
RECV_TIMEOUT = 5.0
DEBOUNCE = 0.05  # gpiozero ignores edges closer than 30 ms
PULSE = 0.2


def _free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50, p99


class _LoopThread:
    """An event loop on a thread of its own, running `main` until told to stop."""

    def __init__(self, main: Callable[[asyncio.Event], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._main = main
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.ready.wait(LOOP_START_TIMEOUT) or self.error is not None:
            raise RuntimeError(f"loop thread did not start: {self.error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._stop = asyncio.Event()
        try:
            self.loop.run_until_complete(self._main(self._stop, self.ready))
        except BaseException as exc:  # reported to the bench thread
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class _Phone:
    """A SIP phone reduced to what the measurement needs, on a blocking socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(RECV_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.tag = "phone1"
        self.call_id = f"bench-{time.monotonic_ns()}@127.0.0.1"
        self.cseq = 1
        self.branch = 0
        self._from = self._to = ""
        self._target: Any = None

    def via(self) -> str:
        self.branch += 1
        return f"SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bKbench{self.branch}"

    def recv(self, want: Callable[[Request | Response], bool]) -> tuple[Request | Response, float]:
        while True:
            data, _ = self.sock.recvfrom(65535)
            arrived = time.perf_counter()
            if not data.strip():
                continue
            msg = parse_datagram(data)
            if want(msg):
                return msg, arrived

    def answered(self, invite: Request, ok: Response) -> None:
        """Remember the dialog the door's 200 set up (its To tag and Contact)."""
        self._from = invite.headers.get("from") or ""
        self._to = ok.headers.get("to") or ""
        self._target = ok.contact[0].uri

    def in_dialog(self, method: str, *, new_cseq: bool = True, **kw: Any) -> Request:
        """A request in the answered call (ACK keeps the INVITE's CSeq)."""
        if new_cseq:
            self.cseq += 1
        return build_request(
            method,
            self._target,
            via=self.via(),
            from_=self._from,
            to=self._to,
            call_id=self.call_id,
            cseq=self.cseq,
            **kw,
        )

    def send(self, message: Request | Response, to: tuple[str, int]) -> None:
        self.sock.sendto(message.to_bytes(), to)

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()


def _is_request(method: str) -> Callable[[Request | Response], bool]:
    return lambda m: isinstance(m, Request) and m.method == method


def _is_final(method: str) -> Callable[[Request | Response], bool]:
    return lambda m: isinstance(m, Response) and m.status >= 200 and m.cseq.method == method


def _offer(port: int) -> bytes:
    return (
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


def _measure_firmware(tmp: Path, presses: int, infos: int) -> tuple[list[float], list[float]]:
    from porch.app import App

    phone = _Phone()
    sip_port = _free_port()
    door_sip = ("127.0.0.1", sip_port)
    cfg = config.validate(
        {
            "web": {"listen": f"127.0.0.1:{_free_port(socket.SOCK_STREAM)}"},
            "sip": {"listen": f"127.0.0.1:{sip_port}"},
            "call": {"targets": [f"sip:flat@127.0.0.1:{phone.port}"]},
            "door": {"unlock_seconds": PULSE},
        },
        sim=True,
    )
    holder: dict[str, Any] = {}
    relay_on: list[float] = []
    relay_event = threading.Event()

    async def main(stop: asyncio.Event, ready: threading.Event) -> None:
        app = App(cfg, state_dir=tmp / "state", config_path=None, sim=True)
        await app.start()
        door = app.door
        assert door is not None
        pulse = door.pulse_relay

        def timed_pulse(seconds: float) -> float:
            out = pulse(seconds)
            relay_on.append(time.perf_counter())
            relay_event.set()
            return out

        door.pulse_relay = timed_pulse  # type: ignore[method-assign]
        holder["app"] = app
        ready.set()
        await stop.wait()
        await app.stop()

    firmware = _LoopThread(main)
    app = holder["app"]
    press_lat: list[float] = []
    info_lat: list[float] = []
    try:
        for _ in range(presses):
            t0 = time.perf_counter()
            app.door.sim_drive("button", True)
            invite, arrived = phone.recv(_is_request("INVITE"))
            press_lat.append(arrived - t0)
            assert isinstance(invite, Request)
            phone.send(make_response(invite, 486, to_tag="busy"), door_sip)
            phone.recv(_is_request("ACK"))
            time.sleep(DEBOUNCE)
            app.door.sim_drive("button", False)
            _wait(lambda: app.intercom.call == "idle")
            time.sleep(DEBOUNCE)
        # One call from the phone, answered by the door; then INFO unlock after INFO unlock.
        invite = build_request(
            "INVITE",
            f"sip:door@127.0.0.1:{sip_port}",
            via=phone.via(),
            from_=f"<sip:phone@127.0.0.1:{phone.port}>;tag={phone.tag}",
            to=f"<sip:door@127.0.0.1:{sip_port}>",
            call_id=phone.call_id,
            cseq=phone.cseq,
            contact=f"<sip:phone@127.0.0.1:{phone.port}>",
            body=_offer(phone.rtp.getsockname()[1]),
            content_type="application/sdp",
        )
        phone.send(invite, door_sip)
        ok, _ = phone.recv(_is_final("INVITE"))
        assert isinstance(ok, Response) and ok.status == 200, ok
        phone.answered(invite, ok)
        phone.send(phone.in_dialog("ACK", new_cseq=False), door_sip)
        for _ in range(infos):
            info = phone.in_dialog("INFO", body=b"unlock", content_type="text/plain")
            relay_event.clear()
            t0 = time.perf_counter()
            phone.send(info, door_sip)
            if not relay_event.wait(RECV_TIMEOUT):
                raise RuntimeError("the relay did not come on")
            info_lat.append(relay_on[-1] - t0)
            answer, _ = phone.recv(_is_final("INFO"))
            assert isinstance(answer, Response) and answer.status == 200, answer
            _wait(lambda: not app.door.relay.active, PULSE + 2)
        phone.send(phone.in_dialog("BYE"), door_sip)
        phone.recv(_is_final("BYE"))
    finally:
        firmware.stop()
        phone.close()
    return press_lat, info_lat


def _wait(predicate: Callable[[], bool], timeout: float = RECV_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the door")
        time.sleep(0.001)


def _measure_echo(rounds: int) -> list[float]:
    """Round trip of a datagram through a bare asyncio UDP echo on a loop thread."""
    port = _free_port()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    async def main(stop: asyncio.Event, ready: threading.Event) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Echo, local_addr=("127.0.0.1", port)
        )
        ready.set()
        await stop.wait()
        transport.close()

    echo = _LoopThread(main)
    out: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(RECV_TIMEOUT)
        payload = b"x" * 600  # about an INVITE's size
        try:
            for _ in range(rounds):
                t0 = time.perf_counter()
                s.sendto(payload, ("127.0.0.1", port))
                s.recvfrom(65535)
                out.append(time.perf_counter() - t0)
                time.sleep(0.002)
        finally:
            echo.stop()
    return out


def run(quick: bool = False) -> list[BenchResult]:
    presses = 30 if quick else 200
    infos = 20 if quick else 100
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as tmp_name:
        press, info = _measure_firmware(Path(tmp_name), presses, infos)
    echo_p50, echo_p99 = _quantiles(_measure_echo(presses))
    press_p50, press_p99 = _quantiles(press)
    info_p50, info_p99 = _quantiles(info)
    ms = 1000.0
    baseline = "UDP echo through a bare asyncio loop (round trip)"
    return [
        BenchResult(
            "ua", "button press -> INVITE on the wire, p50", press_p50 * ms, "ms",
            echo_p50 * ms, baseline, target="p99 < 5 ms", note=f"{presses} presses",
        ),
        BenchResult(
            "ua", "button press -> INVITE on the wire, p99", press_p99 * ms, "ms",
            echo_p99 * ms, baseline, target="< 5 ms", note=f"{presses} presses",
        ),
        BenchResult(
            "ua", "SIP INFO unlock -> relay on, p50", info_p50 * ms, "ms",
            echo_p50 * ms, baseline, target="p99 < 20 ms", note=f"{infos} INFOs in one call",
        ),
        BenchResult(
            "ua", "SIP INFO unlock -> relay on, p99", info_p99 * ms, "ms",
            echo_p99 * ms, baseline, target="< 20 ms", note=f"{infos} INFOs in one call",
        ),
    ]  # fmt: skip
