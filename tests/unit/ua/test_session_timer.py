"""RFC 4028 session timers as porch honours them."""

import pytest

from porch.sip.errors import RemoteProtocolError
from porch.sip.message import build_request, make_response
from porch.sip.session_timer import (
    SessionExpires,
    SessionTimer,
    answer_headers,
    refresh_headers,
    timer_from_response,
)


def invite(*headers: tuple[str, str]):
    return build_request(
        "INVITE",
        "sip:door@10.0.0.1",
        via="SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1",
        from_="<sip:a@10.0.0.2>;tag=1",
        to="<sip:door@10.0.0.1>",
        call_id="c1",
        cseq=1,
        headers=list(headers),
    )


def test_parse_and_print():
    assert SessionExpires.parse("1800;refresher=UAC") == SessionExpires(1800, "uac")
    assert SessionExpires.parse(" 90 ") == SessionExpires(90, None)
    assert str(SessionExpires(90, "uas")) == "90;refresher=uas"
    for bad in ("", "abc", "90;refresher=me", "-5"):
        with pytest.raises(RemoteProtocolError) as err:
            SessionExpires.parse(bad)
        assert err.value.status == 400


def test_no_session_expires_means_no_timer():
    assert answer_headers(invite(), 0.0) == ([], None)


def test_caller_that_refreshes_keeps_refreshing():
    req = invite(("Supported", "timer"), ("Session-Expires", "120;refresher=uac"))
    headers, timer = answer_headers(req, 10.0)
    assert ("Session-Expires", "120;refresher=uac") in headers
    assert ("Require", "timer") in headers
    assert timer is not None and not timer.we_refresh
    # we watch: BYE once interval - min(32, interval/3) passes without a refresh
    assert timer.deadline == 10.0 + 120 - 32
    assert timer.due(97.9) is None and timer.due(98.0) == "expired"
    timer.refreshed(60.0)
    assert timer.due(98.0) is None


def test_caller_without_timer_support_makes_us_refresh():
    req = invite(("Session-Expires", "60"))  # a proxy asked; the caller does not know timers
    headers, timer = answer_headers(req, 0.0)
    assert headers == [("Session-Expires", "90;refresher=uas")]  # stretched to our minimum
    assert timer is not None and timer.we_refresh and timer.deadline == 45.0
    assert timer.due(45.0) == "refresh"


def test_too_short_with_timer_support_is_422():
    req = invite(("Supported", "timer"), ("Session-Expires", "30"))
    with pytest.raises(RemoteProtocolError) as err:
        answer_headers(req, 0.0)
    assert err.value.status == 422 and ("Min-SE", "90") in err.value.headers


def test_their_min_se_is_respected():
    req = invite(("Supported", "timer"), ("Session-Expires", "100"), ("Min-SE", "150"))
    headers, _timer = answer_headers(req, 0.0)
    assert headers[0] == ("Session-Expires", "150;refresher=uac")


def test_unspecified_refresher_goes_to_the_caller():
    req = invite(("Supported", "timer"), ("x", "300"))  # compact form
    headers, _timer = answer_headers(req, 0.0)
    assert headers[0] == ("Session-Expires", "300;refresher=uac")


def test_timer_from_a_2xx_to_our_invite():
    req = invite()
    ok = make_response(req, 200, to_tag="t", headers=[("Session-Expires", "90;refresher=uac")])
    timer = timer_from_response(ok, 5.0)
    assert timer == SessionTimer(90, True, 5.0)
    assert refresh_headers(timer) == [
        ("Session-Expires", "90;refresher=uac"),
        ("Supported", "timer"),
    ]
    theirs = make_response(req, 200, to_tag="t", headers=[("Session-Expires", "90;refresher=uas")])
    assert not timer_from_response(theirs, 0.0).we_refresh
    assert timer_from_response(make_response(req, 200, to_tag="t"), 0.0) is None
