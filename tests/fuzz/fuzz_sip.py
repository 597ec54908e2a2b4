"""Coverage-guided fuzzing of the SIP message, URI and SDP parsers with atheris.

    .venv/bin/python tests/fuzz/fuzz_sip.py -runs=200000 [-max_len=4096] [CORPUS_DIR ...]

Every input goes through parse_datagram, the typed accessors, validate_request, make_response,
StreamParser, parse_uri and SessionDescription.parse/answer (tests/unit/sip/sip_exercise.py).
Anything escaping other than RemoteProtocolError is a crash. Without a corpus directory the
RFC 4475 messages and the captured phone INVITEs seed a temporary one.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
UNIT = HERE.parent / "unit" / "sip"
sys.path.insert(0, str(UNIT))

with atheris.instrument_imports(include=["porch.sip"]):
    from sip_exercise import exercise
    from sip_rfc4475_messages import MESSAGES


def seed_corpus() -> str:
    corpus = Path(tempfile.mkdtemp(prefix="porch-sip-corpus-"))
    seeds = list(MESSAGES.values()) + [p.read_bytes() for p in (UNIT / "fixtures").glob("*.sip")]
    for i, data in enumerate(seeds):
        (corpus / f"seed{i:03d}").write_bytes(data)
    return str(corpus)


def test_one_input(data: bytes) -> None:
    exercise(data)


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(seed_corpus())
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
