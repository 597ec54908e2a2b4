"""SIP core speed: parse a typical INVITE with SDP and read what a UA reads; serialise.

The message is what a phone sends through a PBX: 15 header fields and a 300-byte SDP
offer. "Read" means the Via list (branch, received, rport), From and To with their tags,
Call-ID, CSeq, the Contact URI, Content-Type and the SDP's audio codecs, connection and
direction. The same-run baseline is sippy (PyPI `sippy`, a B2BUA stack in pure Python)
parsing the same message fully: the message, every header field and the SDP body.

Timing: CPU time of this process (the machines we measure on are shared, so wall time
says more about the neighbours than about us), garbage collection off as in timeit, porch
and sippy measured alternately in every round so that both see the same load, and the
median over the rounds. The ratio printed is the median of the per-round ratios.

`python -m porch.bench.sip --instructions` counts machine instructions per call instead
(valgrind's callgrind, when installed): slower, but the same on a busy machine as on an
idle one, which is what comparing two versions of the parser needs.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from porch.bench import BenchResult
from porch.sip.message import make_response, parse_datagram
from porch.sip.sdp import SessionDescription

SDP = (
    b"v=0\r\n"
    b"o=1003 3215 1234 IN IP4 192.0.2.20\r\n"
    b"s=Talk\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 7078 RTP/AVP 9 0 8 101\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=maxptime:150\r\n"
    b"a=rtcp:7079\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:door@192.0.2.50:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK.f3Kx8Rz1Q;rport\r\n"
    b"Max-Forwards: 69\r\n"
    b"Record-Route: <sip:192.0.2.2;lr>\r\n"
    b'From: "Flat 3" <sip:1003@pbx.example.com>;tag=ePq1xCk9x\r\n'
    b"To: <sip:door@pbx.example.com>\r\n"
    b"Call-ID: 6n3DkGw5QZ@192.0.2.20\r\n"
    b"CSeq: 20 INVITE\r\n"
    b"Contact: <sip:1003@192.0.2.20:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, INFO, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"Session-Expires: 1800\r\n"
    b"User-Agent: Linphone-Desktop/5.1.2 (belle-sip/5.1.55)\r\n"
    b'P-Asserted-Identity: "Flat 3" <sip:1003@pbx.example.com>\r\n'
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def porch_parse_and_read() -> tuple:
    msg = parse_datagram(INVITE)
    vias = [(v.branch, v.received, v.rport) for v in msg.via]
    sdp = SessionDescription.parse(msg.body)
    audio = sdp.media[0]
    return (
        vias,
        msg.from_.tag,
        msg.to.tag,
        msg.call_id,
        msg.cseq.number,
        msg.contact[0].uri,
        msg.content_type,
        audio.codecs(),
        sdp.connection_of(audio),
        sdp.direction_of(audio),
    )


def sippy_cases() -> tuple[Callable[[], object], Callable[[], object]] | None:
    """sippy's full parse and its serialisation of the same INVITE, if sippy is installed."""
    try:
        from sippy.SipRequest import SipRequest
    except ImportError:
        return None

    def parse() -> object:
        req = SipRequest(INVITE.decode())  # sippy's transaction layer decodes the datagram
        for header in req.headers:
            header.getBody()  # sippy parses a header's body on first access
        req.init_body()
        req.body.parse()
        return req

    parsed = parse()

    def serialise() -> bytes:
        return str(parsed).encode()

    return parse, serialise


def _sample(fn: Callable[[], object], number: int) -> float:
    """CPU microseconds per call over `number` calls, with the garbage collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.process_time()
        for _ in range(number):
            fn()
        elapsed = time.process_time() - t0
    finally:
        if enabled:
            gc.enable()
    return elapsed / number * 1e6


def measure(fn: Callable[[], object], number: int, rounds: int) -> float:
    """Median CPU microseconds per call over `rounds` samples."""
    fn()
    return statistics.median(_sample(fn, number) for _ in range(rounds))


def measure_pair(
    ours: Callable[[], object], theirs: Callable[[], object], number: int, rounds: int
) -> tuple[float, float, float]:
    """(ours, theirs, theirs/ours): medians, the two sampled alternately in every round.

    The ratio is the median of each round's ratio: a burst of load hits both sides of a
    round, so it cancels out of that round's ratio.
    """
    ours()
    theirs()
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2:  # who goes first alternates too
            b.append(_sample(theirs, number))
            a.append(_sample(ours, number))
        else:
            a.append(_sample(ours, number))
            b.append(_sample(theirs, number))
    ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), ratio


def run(quick: bool = False) -> list[BenchResult]:
    number, rounds = (100, 7) if quick else (300, 31)
    parsed = parse_datagram(INVITE)

    def answer() -> bytes:
        return make_response(
            parsed, 200, to_tag="d00r", body=SDP, content_type="application/sdp"
        ).to_bytes()

    sippy = sippy_cases()
    how = f"CPU time, median of {rounds} alternating rounds"
    if sippy is not None:
        parse_us, sippy_parse, parse_ratio = measure_pair(
            porch_parse_and_read, sippy[0], number, rounds
        )
        ser_us, sippy_ser, ser_ratio = measure_pair(parsed.to_bytes, sippy[1], number, rounds)
        parse_note = f"{parse_ratio:.1f}x faster than sippy ({how})"
        ser_note = f"{ser_ratio:.1f}x faster than sippy"
    else:
        parse_us = measure(porch_parse_and_read, number, rounds)
        ser_us = measure(parsed.to_bytes, number, rounds)
        sippy_parse = sippy_ser = None
        parse_note = f"sippy not installed ({how})"
        ser_note = ""
    return [
        BenchResult(
            group="sip",
            name="parse INVITE+SDP, read common headers",
            value=parse_us,
            unit="us",
            baseline=sippy_parse,
            baseline_name="sippy full parse",
            target="<= 20 us, >= 2x faster",
            note=parse_note,
        ),
        BenchResult(
            group="sip",
            name="serialise the INVITE",
            value=ser_us,
            unit="us",
            baseline=sippy_ser,
            baseline_name="sippy str()",
            note=ser_note,
        ),
        BenchResult(
            group="sip",
            name="build + serialise 200 OK with SDP",
            value=measure(answer, number, rounds),
            unit="us",
        ),
    ]


# ---------------------------------------------------------------------------------------
# Instruction counts (valgrind): python -m porch.bench.sip --instructions [CALLS]
# ---------------------------------------------------------------------------------------

CASES: dict[str, Callable[[], Callable[[], object] | None]] = {
    "porch": lambda: porch_parse_and_read,
    "sippy": lambda: (sippy_cases() or (None, None))[0],
}


def _loop(case: str, calls: int) -> None:
    """Run one case `calls` times (after two warm-up calls): what callgrind counts."""
    fn = CASES[case]()
    if fn is None:
        raise SystemExit(f"{case}: not available")
    fn()
    fn()
    for _ in range(calls):
        fn()


def _collected(case: str, calls: int) -> int:
    command = [sys.executable, "-m", "porch.bench.sip", "--loop", case, str(calls)]
    env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # e.g. to count an older checkout of the parser
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    subprocess.run(command, env=env, check=True)  # bytecode caches written before counting
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        env=env,
    )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode or m is None:
        raise SystemExit(f"valgrind failed for {case}:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def count_instructions(calls: int = 300) -> dict[str, float]:
    """Instructions per call for each case: (run with `calls` calls - run with none) / calls."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    out = {}
    for case in CASES:
        if CASES[case]() is None:
            continue
        out[case] = (_collected(case, calls) - _collected(case, 0)) / calls
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--loop"]:
        _loop(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["--instructions"]:
        counts = count_instructions(int(argv[1]) if len(argv) > 1 else 300)
        for case, n in counts.items():
            print(f"{case:6s} {n:12,.0f} instructions per parse+read")
        if "sippy" in counts:
            print(f"ratio  {counts['sippy'] / counts['porch']:12.2f}")
        return 0
    for r in run(quick="--quick" in argv):
        base = f"  (sippy {r.baseline:.1f} us)" if r.baseline else ""
        print(f"{r.name:40s} {r.value:8.2f} {r.unit}{base}  {r.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
