"""What an INFO body asks the door to do."""

import pytest

from porch.sip.errors import RemoteProtocolError
from porch.sip.headers import MediaType
from porch.sip.info import Digit, Empty, Unlock, parse_info

RELAY = MediaType.parse("application/dtmf-relay")
DTMF = MediaType.parse("application/dtmf")
TEXT = MediaType.parse("text/plain; charset=utf-8")


def test_dtmf_relay_as_sent_by_phones():
    assert parse_info(RELAY, b"Signal=1\r\nDuration=160\r\n") == Digit("1", 160)
    assert parse_info(RELAY, b"signal= #\nduration = 250") == Digit("#", 250)
    assert parse_info(RELAY, b"Signal=10\r\n") == Digit("*")  # event code for *
    assert parse_info(RELAY, b"Signal=a\r\n") == Digit("A")


def test_application_dtmf_is_the_bare_key():
    assert parse_info(DTMF, b"5") == Digit("5")
    assert parse_info(DTMF, b"11\r\n") == Digit("#")


def test_text_unlock_ignores_surrounding_whitespace():
    assert parse_info(TEXT, b"  unlock\r\n") == Unlock()
    assert parse_info(TEXT, b"UNLOCK") == Unlock()


def test_empty_info_is_a_harmless_probe():
    assert parse_info(None, b"") == Empty()
    assert parse_info(RELAY, b"\r\n") == Empty()


@pytest.mark.parametrize(
    "ctype,body",
    [
        (RELAY, b"Duration=160\r\n"),
        (RELAY, b"Signal=X\r\n"),
        (DTMF, b"12345"),
        (TEXT, b"open sesame"),
        (TEXT, b"\xff\xfe"),
    ],
)
def test_nonsense_of_a_known_type_is_400(ctype, body):
    with pytest.raises(RemoteProtocolError) as err:
        parse_info(ctype, body)
    assert err.value.status == 400


def test_other_types_are_415_with_accept():
    with pytest.raises(RemoteProtocolError) as err:
        parse_info(MediaType.parse("application/json"), b"{}")
    assert err.value.status == 415
    assert ("Accept", "application/dtmf-relay, application/dtmf, text/plain") in err.value.headers
