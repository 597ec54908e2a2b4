"""Who may call the door (SPEC 4 `call.auto_answer`/`call.allow`, SPEC 6), sans-IO.

The user agent asks `CallerPolicy.check(caller, source)` for every new INVITE. The rules:

- `auto_answer = "off"`: nobody is answered (403).
- With a registrar configured, a call must come from the PBX: its packets from one of the
  registrar's or outbound proxy's addresses (`trusted`, IP and port as resolved). A caller
  that matches `call.allow` is taken from anywhere, which is how a second PBX or a direct
  intercom is let in.
- `"all"`: every caller that passed the rule above.
- `"allowlist"`: callers matching a `call.allow` pattern, plus callers of the registrar's
  own domain that came through the PBX.

Peer-to-peer mode (no registrar) has no PBX to come through: "all" takes anyone, and
"allowlist" only the patterns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from porch.config import pattern_matches
from porch.sip.uri import SipUri, Uri

__all__ = ["CallerPolicy", "Verdict", "caller_text"]

Address = tuple[str, int]


@dataclass(frozen=True)
class Verdict:
    """The decision on one caller: `status` is what to answer when refused (403)."""

    allowed: bool
    reason: str
    status: int = 403


def caller_text(uri: Uri) -> str:
    """A From URI as call.allow patterns see it: scheme:user@host[:port], no parameters."""
    if not isinstance(uri, SipUri):
        return str(uri)
    return uri.aor if uri.port is None else f"{uri.aor}:{uri.port}"


def _host_of(uri: Uri) -> str:
    return uri.host.lower() if isinstance(uri, SipUri) else ""


@dataclass(frozen=True)
class CallerPolicy:
    """The call.* rules with the registrar's domain and addresses filled in."""

    auto_answer: str = "allowlist"  # "all", "allowlist" or "off"
    allow: tuple[str, ...] = ()
    domain: str = ""  # the registrar's domain; "" in peer-to-peer mode
    registrar: bool = False  # a registrar is configured (calls must come through it)
    trusted: frozenset[Address] = frozenset()

    def with_trusted(self, addresses: Iterable[Address]) -> CallerPolicy:
        return CallerPolicy(
            self.auto_answer, self.allow, self.domain, self.registrar, frozenset(addresses)
        )

    def allowed_by_pattern(self, caller: Uri) -> bool:
        text = caller_text(caller)
        return any(pattern_matches(p, text) for p in self.allow)

    def from_pbx(self, source: Address | None) -> bool:
        return source is not None and source in self.trusted

    def check(self, caller: Uri, source: Address | None) -> Verdict:
        """May `caller` (the From URI), whose request came from `source`, be answered?"""
        if self.auto_answer == "off":
            return Verdict(False, "call.auto_answer is off")
        listed = self.allowed_by_pattern(caller)
        if listed:
            return Verdict(True, "call.allow")
        if self.registrar and not self.from_pbx(source):
            where = f"{source[0]}:{source[1]}" if source else "an unknown address"
            return Verdict(False, f"not from the registrar or outbound proxy ({where})")
        if self.auto_answer == "all":
            return Verdict(True, "call.auto_answer is all")
        domain = self.domain.strip("[]").lower()
        if self.registrar and domain and _host_of(caller) == domain:
            return Verdict(True, "registrar's domain")
        return Verdict(False, "caller not in call.allow")
