"""Interop: SIPp (Debian sip-tester) sends OPTIONS to a small responder built on SipTransport,
over UDP and over TCP, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
from sip_edge_util import run

from porch.sip.message import Request, make_response, validate_request
from porch.sip.transport import SipTransport, Source

SCENARIO = Path(__file__).parent / "scenarios" / "uac_options.xml"
CALLS = 30

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) missing")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OptionsResponder:
    """What a UAS does with OPTIONS: validate, answer 200 with Allow/Accept/Supported."""

    def __init__(self, transport: SipTransport) -> None:
        self.transport = transport
        self.seen: list[Source] = []
        transport.on_message = self.on_message

    def on_message(self, msg, source: Source) -> None:
        if not isinstance(msg, Request):
            return
        validate_request(msg, methods={"OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "INFO"})
        self.seen.append(source)
        answer = make_response(
            msg,
            200,
            to_tag="porch",
            headers=[
                ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO"),
                ("Accept", "application/sdp"),
                ("Supported", "replaces"),
            ],
        )
        asyncio.get_running_loop().create_task(self.transport.respond(answer, source))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_options_to_porch_transport(transport, tmp_path):
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=(transport,)) as t:
            responder = OptionsResponder(t)
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
            args = [
                "sipp", "-sf", str(SCENARIO), f"127.0.0.1:{t.ports[transport]}",
                "-s", "door", "-i", "127.0.0.1", "-p", str(free_port(kind)),
                "-t", "u1" if transport == "udp" else "t1",
                "-m", str(CALLS), "-r", "100", "-rp", "1000",
                "-timeout", "20s", "-timeout_error", "-nostdin",
                "-trace_err", "-error_file", str(tmp_path / "err.log"),
                "-trace_stat", "-stf", str(tmp_path / "stat.csv"),
            ]  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=tmp_path,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            errors = (tmp_path / "err.log").read_text() if (tmp_path / "err.log").exists() else ""
            assert proc.returncode == 0, f"SIPp failed: {err.decode()[-2000:]} {errors[-2000:]}"
            assert len(responder.seen) == CALLS
            assert {s.transport for s in responder.seen} == {transport}
            if transport == "tcp":
                assert t.stats.connections_in == 1  # SIPp -t t1: one connection for all
            stats = (tmp_path / "stat.csv").read_text().splitlines()
            header, last = stats[0].split(";"), stats[-1].split(";")
            row = dict(zip(header, last, strict=False))
            assert row["SuccessfulCall(C)"] == str(CALLS) and row["FailedCall(C)"] == "0"

    run(main(), timeout=60)
