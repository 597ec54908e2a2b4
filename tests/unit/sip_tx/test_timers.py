"""Timer values of RFC 3261 table 4 (and RFC 6026 L/M), derived from T1/T2/T4."""

import pytest

from porch.sip.timers import DEFAULT_TIMERS, Timers


def test_defaults_are_the_rfc_values():
    t = DEFAULT_TIMERS
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert t.timeout == 32.0
    for name in ("B", "F", "H", "L", "M"):
        assert t.initial(name, reliable=False) == 32.0
        assert t.initial(name, reliable=True) == 32.0


def test_unreliable_versus_reliable():
    t = DEFAULT_TIMERS
    for name in ("A", "E", "G"):
        assert t.initial(name, reliable=False) == 0.5
        assert t.initial(name, reliable=True) is None  # no retransmission over TCP/TLS
    assert t.initial("D", reliable=False) == 32.0
    assert t.initial("D", reliable=True) == 0.0
    assert t.initial("I", reliable=False) == t.initial("K", reliable=False) == 5.0
    assert t.initial("I", reliable=True) == t.initial("K", reliable=True) == 0.0
    assert t.initial("J", reliable=False) == 32.0
    assert t.initial("J", reliable=True) == 0.0
    assert t.initial("TRYING", reliable=False) == 0.2


def test_backoff_rules():
    t = DEFAULT_TIMERS
    assert t.next_interval("A", 4.0) == 8.0  # INVITE requests: no cap
    assert t.next_interval("E", 2.0) == 4.0
    assert t.next_interval("E", 4.0) == 4.0  # capped at T2
    assert t.next_interval("G", 4.0) == 4.0
    assert [t.retransmit_2xx(p) for p in (None, 0.5, 2.0, 4.0)] == [0.5, 1.0, 4.0, 4.0]
    with pytest.raises(KeyError):
        t.next_interval("B", 1.0)
    with pytest.raises(KeyError):
        t.initial("Z", reliable=False)


def test_scaled_set():
    t = Timers(t1=0.1, t2=0.8, t4=1.0, trying=None)
    assert t.timeout == pytest.approx(6.4)
    assert t.initial("D", reliable=False) == 32.0  # D keeps its 32 s floor
    assert t.initial("TRYING", reliable=False) is None
    with pytest.raises(ValueError):
        Timers(t1=5, t2=4)
