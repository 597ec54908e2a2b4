"""The header layout caches: where a header is found must not depend on what was cached.

message.py keeps, per layout met, the lookup keys of the header names and an index of where
each key is (`_NAME_LAYOUTS`, `_LAYOUTS`). A message must read the same whether its layout
is cached or not, and the index must say what the keys list says.
"""

from __future__ import annotations

from hypothesis import given
from test_sip_fast_paths import PROFILE, SIP_SEEDS, check_datagram, mutated_messages

from porch.sip import message as message_module
from porch.sip.errors import RemoteProtocolError
from porch.sip.message import Headers, Request, _index_of, _split_fields_indexed, parse_datagram


def expected_index(keys: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in index:
            index[key] = ~(index[key] if index[key] >= 0 else ~index[key])
        else:
            index[key] = i
    return index


def read_all(data: bytes):
    try:
        msg = parse_datagram(data)
    except RemoteProtocolError as exc:
        return "error", exc.status
    out = []
    for name in ("via", "from_", "to", "call_id", "cseq", "contact", "content_type"):
        try:
            out.append(("ok", getattr(msg, name)))
        except RemoteProtocolError as exc:
            out.append(("error", exc.status))
    return "ok", msg, out, msg.body


def check_layouts(data: bytes) -> None:
    warm = read_all(data)
    saved = dict(message_module._NAME_LAYOUTS), dict(message_module._LAYOUTS)
    message_module._NAME_LAYOUTS.clear()
    message_module._LAYOUTS.clear()
    try:
        cold = read_all(data)
    finally:
        message_module._NAME_LAYOUTS.update(saved[0])
        message_module._LAYOUTS.update(saved[1])
    assert warm == cold, data
    if warm[0] == "ok":
        headers = warm[1].headers
        assert _index_of(headers) == expected_index(headers._keys)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        lines = data[:end].decode("utf-8", "surrogateescape").split("\r\n")[1:]
        text = "\r\n".join(lines)
        split = _split_fields_indexed(lines, text)
        if split is not None:
            fields, keys, index = split
            assert index == expected_index(keys)
            assert keys == [message_module._key(f[0]) for f in fields]


def test_seed_layouts() -> None:
    for data in SIP_SEEDS:
        check_layouts(data)
        check_layouts(data.replace(b"\r\n", b"\n"))


@PROFILE
@given(mutated_messages())
def test_mutated_layouts(data: bytes) -> None:
    check_layouts(data)
    check_datagram(data)


def test_repeated_names() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"v: SIP/2.0/UDP g;branch=z9hG4bK2\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
        b"To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    for _ in range(2):  # cold, then from the cache
        msg = parse_datagram(data)
        assert [v.host for v in msg.via] == ["h", "g"]
        assert str(msg.to.uri) == "sip:a@b"  # the first of two
        assert msg.headers._index == {
            "via": ~0,
            "from": 2,
            "to": ~3,
            "call-id": 5,
            "cseq": 6,
            "content-length": 7,
        }


def test_changed_headers_drop_the_index() -> None:
    msg = parse_datagram(
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1"
        b"\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, Request)
    msg.headers.insert("Via", "SIP/2.0/UDP first;branch=z9hG4bK0")
    assert [v.host for v in msg.via] == ["first", "h"]
    assert msg.from_.tag == "1"
    copy = Headers(msg.headers.items())
    assert _index_of(copy) == expected_index(copy._keys)
