"""Message factories and a virtual network for the transaction, dialog and registration tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from porch.sip.message import Request, Response, build_request, make_response, parse_datagram
from porch.sip.transaction import Send, TransactionLayer


def invite(
    branch: str = "z9hG4bKinv1",
    *,
    method: str = "INVITE",
    cseq: int = 1,
    call_id: str = "call-1@door",
    from_tag: str = "ftag1",
    to_tag: str | None = None,
    sent_by: str = "10.0.0.1:5060",
    uri: str = "sip:bob@10.0.0.2",
    extra: list[tuple[str, str]] | None = None,
    routes: tuple[str, ...] = (),
) -> Request:
    """A request as it would arrive from the wire (parsed back from its bytes)."""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    req = build_request(
        method,
        uri,
        via=f"SIP/2.0/UDP {sent_by};branch={branch};rport" if branch else f"SIP/2.0/UDP {sent_by}",
        from_=f'"Door" <sip:door@example.com>;tag={from_tag}',
        to=to,
        call_id=call_id,
        cseq=cseq,
        contact="<sip:door@10.0.0.1:5060>",
        route=routes,
        headers=extra or [],
    )
    return wire(req)


def wire(message: Request | Response) -> Any:
    """Serialise and parse again, as the transport would hand it over."""
    return parse_datagram(message.to_bytes())


def reply(request: Request, status: int, *, to_tag: str | None = "utag1", **kw: Any) -> Response:
    return wire(make_response(request, status, to_tag=to_tag if status != 100 else None, **kw))


def sends(actions: list) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def of_type(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


@pytest.fixture
def tokens() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"t{next(counter):04d}"


@dataclass
class Network:
    """Two transaction layers joined by a lossy virtual UDP link, with a virtual clock.

    `drop(pred)` loses every datagram for which pred(message) is true (until it returns
    False); delivery takes `delay` seconds. `run(until)` advances time, firing timers and
    delivering datagrams in time order, and collects the TU events of both sides.
    """

    a: TransactionLayer
    b: TransactionLayer
    delay: float = 0.01
    now: float = 0.0
    in_flight: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    events: dict[str, list] = field(default_factory=lambda: {"a": [], "b": []})
    wire_log: list[tuple[float, str, str]] = field(default_factory=list)
    dropper: Callable[[Any], bool] | None = None
    seq: itertools.count = field(default_factory=itertools.count)

    def layer(self, side: str) -> TransactionLayer:
        return self.a if side == "a" else self.b

    def emit(self, side: str, actions: list) -> None:
        for act in actions:
            if isinstance(act, Send):
                other = "b" if side == "a" else "a"
                msg = parse_datagram(act.data)
                first = act.data.split(b"\r\n", 1)[0].decode()
                lost = self.dropper is not None and self.dropper(msg)
                self.wire_log.append((self.now, side, first + (" (lost)" if lost else "")))
                if not lost:
                    self.in_flight.append((self.now + self.delay, next(self.seq), other, act.data))
            else:
                self.events[side].append(act)

    def run(self, until: float, hook: Callable[[str, Any], list] | None = None) -> None:
        """Advance to `until`; `hook(side, event)` lets a test TU react (returns actions)."""
        while True:
            times = [t for t, *_ in self.in_flight]
            for side in ("a", "b"):
                d = self.layer(side).next_deadline
                if d is not None:
                    times.append(d)
            if not times or min(times) > until:
                break
            t = min(times)
            self.now = max(self.now, t)
            due = sorted(x for x in self.in_flight if x[0] <= t)
            if due:
                item = due[0]
                self.in_flight.remove(item)
                _, _, side, data = item
                before = len(self.events[side])
                self.emit(
                    side,
                    self.layer(side).on_message(
                        parse_datagram(data), "peer", reliable=False, now=self.now
                    ),
                )
            else:
                for side in ("a", "b"):
                    d = self.layer(side).next_deadline
                    if d is not None and d <= t:
                        before = len(self.events[side])
                        self.emit(side, self.layer(side).on_timer(self.now))
                        break
                else:
                    continue
            if hook is not None:
                new = self.events[side][before:]
                for ev in new:
                    self.emit(side, hook(side, ev) or [])
        self.now = until
