"""pytest fixtures for the real SIP peers of tests/support/peers.py.

The fixture functions have other Python names than the fixtures (name=...), so that a test
parameter named like the fixture does not shadow the import. Import them where they are needed
(a test module, or tests/interop/conftest.py):

    from peers_fixtures import fixture_kamailio, fixture_peer_set  # noqa: F401
    # or, in a conftest.py:  from peers_fixtures import *  # noqa: F403

Every fixture stops its peers at teardown, also when the test failed, and then prints the
tail of every peer log, which pytest shows under "Captured stdout teardown" of a failed test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from peers import Kamailio, PeerSet, Sipp


def _teardown(peers: PeerSet, failed: bool) -> None:
    problems = peers.stop_all()
    if failed:
        print(peers.log_report())
    if problems:
        print("peer teardown problems:\n  " + "\n  ".join(problems))


@pytest.fixture(name="peer_set")
def fixture_peer_set(tmp_path, request) -> Iterator[PeerSet]:
    """A PeerSet in the test's tmp dir: peer_set.kamailio(), .sipp, .baresip(), .linphone()."""
    failed_before = request.session.testsfailed
    peers = PeerSet(tmp_path)
    yield peers
    _teardown(peers, request.session.testsfailed > failed_before)


@pytest.fixture(name="kamailio")
def fixture_kamailio(peer_set) -> Kamailio:
    """A started Kamailio with UDP, TCP and TLS listeners on free ports."""
    return peer_set.kamailio()


@pytest.fixture(name="sipp")
def fixture_sipp(peer_set) -> Sipp:
    return peer_set.sipp


@pytest.fixture(scope="module", name="module_peer_set")
def fixture_module_peer_set(tmp_path_factory, request) -> Iterator[PeerSet]:
    """A PeerSet shared by one test module (e.g. one Kamailio for all its tests)."""
    failed_before = request.session.testsfailed
    peers = PeerSet(tmp_path_factory.mktemp("peers"))
    yield peers
    _teardown(peers, request.session.testsfailed > failed_before)


@pytest.fixture(scope="module", name="module_kamailio")
def fixture_module_kamailio(module_peer_set) -> Kamailio:
    """One Kamailio (UDP, TCP, TLS) for the whole module: starts once, saves ~1 s per test."""
    return module_peer_set.kamailio()


__all__ = [
    "fixture_kamailio",
    "fixture_module_kamailio",
    "fixture_module_peer_set",
    "fixture_peer_set",
    "fixture_sipp",
]
