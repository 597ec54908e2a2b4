"""porch.toml: schema, defaults, validation with dotted-key errors, TOML output, atomic save.

The schema lives in the section dataclasses below: every field is a TOML key, and its
metadata says the type, the range and the check. `validate()` walks that schema, collects
*every* problem as a ``"dotted.key: reason"`` line (so an installer fixes them all in one
go) and only then builds the frozen `Config`. Cross-key rules run after the per-key checks
and skip keys that were already wrong, so one mistake gives one message.

Notes on choices that are not obvious from SPEC 4:

- ``sip.listen`` and ``web.listen`` on the same host:port is fine: one is SIP (UDP or TCP
  per ``sip.transport``), the other HTTP; they would only clash with ``sip.transport =
  "tcp"``/``"tls"`` and the same port, which we do report.
- A ``sips:`` URI (registrar, backup, outbound proxy or call target) needs
  ``sip.transport = "tls"``; a ``;transport=`` parameter on such a URI must equal
  ``sip.transport`` (porch listens on exactly one transport).
- ``gpio.*`` pins default from the board profile (``hw/boards/NAME.toml``); so do
  ``gpio.relay_active_high`` and ``gpio.inputs_pull_up`` (a relay HAT may switch on low).
  An optional function (LEDs, door contact, exit button, tamper) can be set to -1: not
  connected. ``to_document()`` writes only what the user set for these keys, so changing
  ``gpio.board`` later moves the rest with it.
- ``door.dtmf_codes``: a code that starts with another code can never be typed (the shorter
  one opens first), so it is reported.
- The saved file holds ``sip.password`` and is written with mode 0600.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import importlib.resources
import ipaddress
import math
import re
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from porch import fsutil

CONFIG_FILE_MODE = 0o600  # holds the SIP password


class ConfigError(Exception):
    """A config that cannot be used; `.problems` lists every reason as 'dotted.key: reason'."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class _Bad(Exception):
    """Raised by the small parsers below; the message is the reason shown to the user."""


# --------------------------------------------------------------------------------------
# Value descriptions and small text checks
# --------------------------------------------------------------------------------------


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(value: Any) -> str:
    """How a TOML value looks to the person who wrote it: 'integer 5', "string 'x'"."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


def _num(value: float) -> str:
    """45 -> '45', 30.0 -> '30', 0.2 -> '0.2' (numbers as a person would write them)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _control_char(text: str) -> str | None:
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            return f"must not contain control characters (found {ch!r})"
    return None


def _plain_text(text: str, max_len: int) -> str | None:
    if len(text) > max_len:
        return f"too long ({len(text)} characters, at most {max_len})"
    return _control_char(text)


def _no_outer_space(text: str) -> str | None:
    if text != text.strip():
        return f"leading or trailing spaces in {_short(text)}"
    return None


# --------------------------------------------------------------------------------------
# Hosts, ports and SIP URIs (a validator of our own; the SIP stack has its own parser)
# --------------------------------------------------------------------------------------

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+\Z")


def check_host(host: str, *, allow_scope: bool = False) -> str | None:
    """Reason why `host` is not a host name, IPv4 address or [IPv6] address, or None."""
    if not host:
        return "missing host"
    if host.startswith("["):
        if not host.endswith("]"):
            return f"unclosed '[' in {_short(host)}"
        inner = host[1:-1]
        if "%" in inner and not allow_scope:
            return f"IPv6 zone ('%') not allowed here: {_short(host)}"
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return f"not an IPv6 address: {_short(inner)}"
        return None
    if ":" in host:
        return f"IPv6 addresses need brackets, e.g. [{host}]"
    if _DOTTED_NUMBERS.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"not an IPv4 address: {_short(host)}"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253:
        return "host name longer than 253 characters"
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            return f"not a host name: {_short(host)}"
    if labels[-1].isdigit():
        return f"not a host name: {_short(host)}"
    return None


def split_hostport(text: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]:port' -> (host as written, port or None). Raises _Bad."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Bad(f"unclosed '[' in {_short(text)}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _Bad(f"unexpected {_short(rest)} after {host}")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise _Bad(f"IPv6 addresses need brackets, e.g. [::1]:5060, got {_short(text)}")
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
    reason = check_host(host, allow_scope=True)
    if reason:
        raise _Bad(reason)
    if port_text is None:
        return host, None
    if not port_text:
        raise _Bad(f"missing port number after ':' in {_short(text)}")
    if not port_text.isascii() or not port_text.isdigit():
        raise _Bad(f"port is not a number: {_short(port_text)}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _Bad(f"port must be between 1 and 65535, got {port}")
    return host, port


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


class SipUri(NamedTuple):
    """The parts of a SIP URI that config checks need."""

    scheme: str  # "sip" or "sips", lower case
    user: str  # "" when there is no user part
    host: str  # as written; IPv6 keeps its brackets
    port: int | None
    params: dict[str, str]  # names lower case; "" for a flag like ;lr


_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+\Z")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*\Z")
_PARAM_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+\Z")
_SCHEME_RE = re.compile(r"(sips?):", re.IGNORECASE)
TRANSPORTS = ("udp", "tcp", "tls")


def parse_sip_uri(text: str) -> SipUri:
    """Check a sip:/sips: URI (no URI headers) and return its parts. Raises _Bad."""
    match = _SCHEME_RE.match(text)
    if not match:
        raise _Bad(f"not a SIP URI: {_short(text)}")

    def bad(reason: str) -> _Bad:
        return _Bad(f"bad SIP URI {_short(text)}: {reason}")

    if text != text.strip() or any(ch.isspace() for ch in text):
        raise bad("contains spaces")
    rest = text[match.end() :]
    user = ""
    if "@" in rest:
        userinfo, rest = rest.split("@", 1)
        if "@" in rest:
            raise bad("more than one '@'")
        user, _, password = userinfo.partition(":")
        if not user:
            raise bad("empty user part before '@'")
        if not _USER_RE.match(user):
            raise bad(f"invalid character in user part {_short(user)}")
        if not _PASSWORD_RE.match(password):
            raise bad("invalid character in password part")
    if "?" in rest:
        raise bad("URI headers ('?...') are not allowed here")
    hostport, *param_list = rest.split(";")
    try:
        host, port = split_hostport(hostport)
    except _Bad as exc:
        raise bad(str(exc)) from None
    if "%" in host:
        raise bad("IPv6 zone ('%') not allowed in a URI")
    params: dict[str, str] = {}
    for param in param_list:
        name, _, value = param.partition("=")
        if not name or not _PARAM_RE.match(name) or ("=" in param and not _PARAM_RE.match(value)):
            raise bad(f"malformed parameter {_short(';' + param)}")
        params[name.lower()] = value
    transport = params.get("transport")
    if transport is not None and transport.lower() not in TRANSPORTS:
        raise bad(f"transport={transport} is not supported (udp, tcp or tls)")
    return SipUri(match.group(1).lower(), user, host, port, params)


def check_allow_pattern(text: str) -> str | None:
    """Reason why `text` is not a call.allow pattern, or None.

    A pattern is sip:[USER@]HOST[:PORT] (or sips:) where USER and HOST may contain '*'
    (any run of characters). Without a user part it matches any caller at that host.
    """
    if not _SCHEME_RE.match(text):
        return f"not a SIP URI pattern: {_short(text)} (e.g. 'sip:*@pbx.example.com')"
    if ";" in text.split("@")[-1] or "?" in text:
        return f"parameters are not allowed in a pattern: {_short(text)}"
    # Check the shape with every wildcard replaced by a harmless letter.
    scheme, _, rest = text.partition(":")
    user, at, hostport = rest.rpartition("@")
    if at and ":" in user:
        return f"no password in a pattern: {_short(text)}"
    probe = f"{scheme}:{user}{at}{hostport.replace('*', 'w')}"
    try:
        parse_sip_uri(probe)
    except _Bad as exc:
        return str(exc).replace(_short(probe), _short(text))
    return None


def pattern_matches(pattern: str, uri: str) -> bool:
    """Whether a caller URI matches a call.allow pattern (host compared case-insensitively).

    'sip:' patterns also match 'sips:' callers; a pattern without a user part matches any
    user; a port in the pattern must match the URI's port exactly.
    """
    try:
        caller = parse_sip_uri(uri)
    except _Bad:
        return False
    p_scheme, _, rest = pattern.partition(":")
    p_user, at, p_hostport = rest.rpartition("@")
    if p_scheme.lower() == "sips" and caller.scheme != "sips":
        return False
    p_host, p_port = _split_pattern_hostport(p_hostport)
    if p_port is not None and p_port != caller.port:
        return False

    def glob(pat: str, value: str, flags: int = 0) -> bool:
        regex = ".*".join(re.escape(part) for part in pat.split("*"))
        return re.fullmatch(regex, value, flags) is not None

    if at and not glob(p_user, caller.user):
        return False
    return glob(p_host, caller.host, re.IGNORECASE)


def _split_pattern_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text.partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host + "]", int(port) if port.isdigit() else None
    host, _, port = text.partition(":")
    return host, int(port) if port.isdigit() else None


_EXTENSION_RE = re.compile(r"\+?[0-9*#]*[0-9][0-9*#]*\Z")
_DIGITS_RE = re.compile(r"[0-9]+\Z")
_CARD_RE = re.compile(r"[0-9A-Fa-f]+\Z")
_BOARD_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")


def is_extension(target: str) -> bool:
    """A PBX dial string such as '101', '*55' or '+4930123' (as opposed to a SIP URI)."""
    return len(target) <= 32 and _EXTENSION_RE.match(target) is not None


# --------------------------------------------------------------------------------------
# Per-key checks: value -> reason or None
# --------------------------------------------------------------------------------------


def _check_name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > 64:
        return f"too long ({len(value)} characters, at most 64)"
    return _control_char(value)


def _check_server_uri(value: str) -> str | None:
    if not value:
        return None
    try:
        uri = parse_sip_uri(value)
    except _Bad as exc:
        return str(exc)
    if uri.user:
        return f"a server URI has no user part: {_short(value)} (e.g. 'sip:pbx.example.com')"
    return None


def _check_sip_user(value: str) -> str | None:
    if not value:
        return None
    if len(value) > 128:
        return f"too long ({len(value)} characters, at most 128)"
    if "@" in value:
        return f"only the user part, without '@domain': {_short(value)}"
    if not _USER_RE.match(value):
        return f"not a valid SIP user name: {_short(value)}"
    return None


def _check_secret_text(value: str) -> str | None:
    return _plain_text(value, 128)


def _check_domain(value: str) -> str | None:
    if not value:
        return None
    if _SCHEME_RE.match(value):
        return f"a domain, not a URI: {_short(value)} (e.g. 'pbx.example.com')"
    return check_host(value)


def _check_listen(value: str) -> str | None:
    try:
        host, port = split_hostport(value)
    except _Bad as exc:
        return str(exc)
    if port is None:
        return f"missing port: {_short(value)} (expected host:port)"
    return _no_outer_space(host)


def _check_stun(value: str) -> str | None:
    if not value:
        return None
    if "://" in value or value.lower().startswith(("stun:", "stuns:")):
        return f"host[:port] without a scheme: {_short(value)} (e.g. 'stun.example.com:3478')"
    try:
        split_hostport(value)
    except _Bad as exc:
        return str(exc)
    return None


def _check_abs_path(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith("/"):
        return f"must be an absolute path: {_short(value)}"
    return _plain_text(value, 4095)


def _check_target(value: str) -> str | None:
    if is_extension(value):
        return None
    if _SCHEME_RE.match(value):
        try:
            parse_sip_uri(value)
        except _Bad as exc:
            return str(exc)
        return None
    hint = " (missing 'sip:'?)" if "@" in value or "." in value else ""
    return f"not a SIP URI or extension: {_short(value)}{hint}"


def _check_dtmf_code(value: str) -> str | None:
    if not _DIGITS_RE.match(value) or not value.isascii():
        return f"only digits 0-9 allowed: {_short(value)}"
    if len(value) > 16:
        return f"too long ({len(value)} digits, at most 16)"
    return None


def _check_card(value: str) -> str | None:
    if not value or not value.isascii() or not _CARD_RE.match(value):
        return f"a card number is hex or decimal digits: {_short(value)}"
    if len(value) > 32:
        return f"too long ({len(value)} characters, at most 32)"
    return None


def _check_alsa(value: str) -> str | None:
    if not value:
        return "must not be empty (use 'default')"
    return _no_outer_space(value) or _plain_text(value, 128)


CODECS = ("G722", "PCMU", "PCMA")


def _check_codec(value: str) -> str | None:
    if value.lower() == "telephone-event":
        return "telephone-event is always offered; do not list it"
    if value not in CODECS:
        options = ", ".join(repr(c) for c in CODECS)
        return f"unknown codec {_short(value)} (one of {options})"
    return None


def _check_board(value: str) -> str | None:
    if not _BOARD_NAME_RE.match(value):
        return f"not a board name: {_short(value)}"
    try:
        load_board(value)
    except _Bad as exc:
        return str(exc)
    return None


# pyserial URL handlers porch can use; those marked True need host:port after '//'.
_SERIAL_URL_SCHEMES = {
    "loop": False,
    "socket": True,
    "rfc2217": True,
    "spy": False,
    "alt": False,
    "hwgrep": False,
}


def _check_serial(value: str) -> str | None:
    if not value:
        return None
    reason = _plain_text(value, 4095) or _no_outer_space(value)
    if reason:
        return reason
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if scheme not in _SERIAL_URL_SCHEMES:
            known = ", ".join(f"{s}://" for s in _SERIAL_URL_SCHEMES)
            return f"unknown serial URL scheme {scheme!r} (one of {known})"
        if _SERIAL_URL_SCHEMES[scheme]:
            hostport = rest.split("?", 1)[0].rstrip("/")
            try:
                _, port = split_hostport(hostport)
            except _Bad as exc:
                return str(exc)
            if port is None:
                return f"{scheme}:// needs host:port, got {_short(value)}"
        return None
    if not value.startswith("/"):
        return f"a device path or pyserial URL, got {_short(value)} (e.g. '/dev/{value}')"
    return None


def _normalise_card(value: str) -> str:
    return value.lower()


# --------------------------------------------------------------------------------------
# Schema: the section dataclasses; field metadata drives validation and output
# --------------------------------------------------------------------------------------

STR, INT, FLOAT, BOOL, STRLIST, PIN = "str", "int", "float", "bool", "strlist", "pin"
_EXPECTED = {
    STR: "a string",
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "true or false",
    STRLIST: "an array of strings",
    PIN: "an integer (BCM pin)",
}


def _key(kind: str, default: Any, **meta: Any) -> Any:
    return field(default=default, metadata={"kind": kind, **meta})


def _str(default: str, check: Callable[[str], str | None] | None = None, **meta: Any) -> Any:
    return _key(STR, default, check=check, **meta)


def _enum(default: str, choices: tuple[str, ...], **meta: Any) -> Any:
    return _key(STR, default, choices=choices, **meta)


def _int(default: int, lo: int, hi: int, **meta: Any) -> Any:
    return _key(INT, default, lo=lo, hi=hi, **meta)


def _float(default: float, lo: float, hi: float) -> Any:
    return _key(FLOAT, default, lo=lo, hi=hi)


def _bool(default: bool, **meta: Any) -> Any:
    return _key(BOOL, default, **meta)


def _strlist(item: Callable[[str], str | None], *, max_items: int = 64, **meta: Any) -> Any:
    return field(
        default=(), metadata={"kind": STRLIST, "item": item, "max_items": max_items, **meta}
    )


def _pin(required: bool = False) -> Any:
    return _key(PIN, None, from_profile=True, required=required)


@dataclass(frozen=True)
class DeviceConfig:
    name: str = _str("Door", _check_name)


@dataclass(frozen=True)
class SipConfig:
    registrar: str = _str("", _check_server_uri, uri=True)
    backup_registrar: str = _str("", _check_server_uri, uri=True)
    outbound_proxy: str = _str("", _check_server_uri, uri=True)
    username: str = _str("", _check_sip_user)
    auth_username: str = _str("", _check_secret_text)
    password: str = _str("", _check_secret_text)
    domain: str = _str("", _check_domain)
    listen: str = _str("0.0.0.0:5060", _check_listen, sim_default="127.0.0.1:5060")
    transport: str = _enum("udp", TRANSPORTS)
    register_expires: int = _int(600, 60, 86400)
    stun_server: str = _str("", _check_stun)
    tls_ca: str = _str("", _check_abs_path)
    keepalive_seconds: int = _int(25, 5, 3600, zero_means="off")

    @property
    def peer_to_peer(self) -> bool:
        """No registrar: porch takes direct calls and dials SIP URIs itself."""
        return not self.registrar

    @property
    def effective_auth_username(self) -> str:
        return self.auth_username or self.username

    @property
    def effective_domain(self) -> str:
        """sip.domain, else the registrar's host ("" in peer-to-peer mode); IPv6 bracketed."""
        if self.domain:
            return self.domain
        return parse_sip_uri(self.registrar).host if self.registrar else ""

    @property
    def listen_host(self) -> str:
        """Host to bind, IPv6 without brackets (as socket calls want it)."""
        return _unbracket(split_hostport(self.listen)[0])

    @property
    def listen_port(self) -> int:
        return split_hostport(self.listen)[1] or 5060

    @property
    def stun_host(self) -> str:
        return _unbracket(split_hostport(self.stun_server)[0]) if self.stun_server else ""

    @property
    def stun_port(self) -> int:
        return (split_hostport(self.stun_server)[1] or 3478) if self.stun_server else 3478


@dataclass(frozen=True)
class CallConfig:
    targets: tuple[str, ...] = _strlist(_check_target, max_items=32)
    strategy: str = _enum("sequential", ("sequential", "parallel"))
    ring_timeout: int = _int(30, 5, 300)
    max_duration: int = _int(180, 10, 86400)
    # Simulation answers every direct call (SPEC 2: `make run` takes peer-to-peer calls);
    # a real door answers only the allow-list and its registrar's domain.
    auto_answer: str = _enum("allowlist", ("all", "allowlist", "off"), sim_default="all")
    allow: tuple[str, ...] = _strlist(check_allow_pattern)
    button_hangup: bool = _bool(False)


@dataclass(frozen=True)
class DoorConfig:
    dtmf_codes: tuple[str, ...] = _strlist(_check_dtmf_code, max_items=32)
    info_unlock: bool = _bool(True)
    unlock_seconds: float = _float(3.0, 0.2, 30)
    cards: tuple[str, ...] = _strlist(_check_card, max_items=10000, normalise=_normalise_card)
    lockout_attempts: int = _int(5, 1, 20)
    lockout_seconds: int = _int(60, 5, 3600)


@dataclass(frozen=True)
class AudioConfig:
    capture: str = _str("default", _check_alsa)
    playback: str = _str("default", _check_alsa)
    codecs: tuple[str, ...] = field(
        default=CODECS,
        metadata={"kind": STRLIST, "item": _check_codec, "max_items": 16, "non_empty": True},
    )
    echo: str = _enum("aec", ("aec", "suppress", "off"))


PIN_KEYS = ("button", "relay", "led_ready", "led_call", "door_contact", "exit_button", "tamper")
REQUIRED_PINS = ("button", "relay")
BCM_MAX = 27


@dataclass(frozen=True)
class GpioConfig:
    """Resolved GPIO wiring: profile pins with the user's overrides applied (None: absent)."""

    board: str = _str("pi", _check_board)
    button: int | None = _pin(required=True)
    relay: int | None = _pin(required=True)
    led_ready: int | None = _pin()
    led_call: int | None = _pin()
    door_contact: int | None = _pin()
    exit_button: int | None = _pin()
    tamper: int | None = _pin()
    relay_active_high: bool = _bool(True, from_profile=True)
    inputs_pull_up: bool = _bool(True, from_profile=True)
    button_hold_seconds: float = _float(2.0, 0.5, 10)
    # Keys the user set explicitly (written back by to_document); not part of equality,
    # so an explicit pin equal to the profile's is no change.
    overridden: frozenset[str] = field(
        default=frozenset(), compare=False, metadata={"internal": True}
    )

    def pins(self) -> dict[str, int]:
        """Function -> BCM pin, for the functions that are connected."""
        return {k: getattr(self, k) for k in PIN_KEYS if getattr(self, k) is not None}


BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


@dataclass(frozen=True)
class SerialConfig:
    reader: str = _str("", _check_serial)
    baudrate: int = _key(INT, 9600, choices=BAUDRATES)


@dataclass(frozen=True)
class WebConfig:
    listen: str = _str("0.0.0.0:80", _check_listen, sim_default="127.0.0.1:8080")

    @property
    def listen_host(self) -> str:
        return _unbracket(split_hostport(self.listen)[0])

    @property
    def listen_port(self) -> int:
        return split_hostport(self.listen)[1] or 80


SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "sip": SipConfig,
    "call": CallConfig,
    "door": DoorConfig,
    "audio": AudioConfig,
    "gpio": GpioConfig,
    "serial": SerialConfig,
    "web": WebConfig,
}


def _schema_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration. Get one from validate(), load() or defaults(), never by
    calling Config() by hand: only validate() applies the board profile to the gpio pins.
    For a variant in tests: ``dataclasses.replace(cfg, door=dataclasses.replace(cfg.door,
    unlock_seconds=1.0))`` or, checked, ``validate({...})``.
    """

    device: DeviceConfig
    sip: SipConfig
    call: CallConfig
    door: DoorConfig
    audio: AudioConfig
    gpio: GpioConfig
    serial: SerialConfig
    web: WebConfig

    def to_document(self) -> dict[str, dict[str, Any]]:
        """The whole config as the TOML document a user would write (arrays as lists).

        Profile-derived gpio keys appear only when the user set them; -1 stands for a
        function the user marked as not connected.
        """
        doc: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            table: dict[str, Any] = {}
            for f in _schema_fields(type(section)):
                value = getattr(section, f.name)
                if f.metadata.get("from_profile"):
                    if f.name not in section.overridden:
                        continue
                    if value is None:
                        value = -1
                table[f.name] = list(value) if isinstance(value, tuple) else value
            doc[name] = table
        return doc


# --------------------------------------------------------------------------------------
# Board profiles (package porch.boards, folder hw/boards/)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    pins: tuple[tuple[str, int], ...]  # (function, BCM pin) for the functions it wires
    relay_active_high: bool = True
    inputs_pull_up: bool = True

    def pin(self, function: str) -> int | None:
        return dict(self.pins).get(function)


def board_names() -> list[str]:
    """Names of the shipped board profiles (for gpio.board and the web page)."""
    folder = importlib.resources.files("porch.boards")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


@functools.lru_cache(maxsize=32)
def load_board(name: str) -> BoardProfile:
    """Read and check hw/boards/NAME.toml. Raises _Bad with a reason for gpio.board."""
    if not _BOARD_NAME_RE.match(name):
        raise _Bad(f"not a board name: {_short(name)}")
    resource = importlib.resources.files("porch.boards").joinpath(f"{name}.toml")
    try:
        data = tomllib.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        names = ", ".join(board_names()) or "none"
        raise _Bad(f"unknown board {name!r} (available: {names})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _Bad(f"board profile {name!r} is unreadable: {exc}") from None
    pins: list[tuple[str, int]] = []
    flags = {"relay_active_high": True, "inputs_pull_up": True}
    used: dict[int, str] = {}
    for key, value in data.items():
        if key == "description" and isinstance(value, str):
            continue
        if key in flags and isinstance(value, bool):
            flags[key] = value
        elif key in PIN_KEYS and type(value) is int and 0 <= value <= BCM_MAX:
            if value in used:
                raise _Bad(f"board profile {name!r} puts {used[value]} and {key} on pin {value}")
            used[value] = key
            pins.append((key, value))
        else:
            raise _Bad(f"board profile {name!r} has a bad entry {key} = {value!r}")
    return BoardProfile(name, str(data.get("description", "")), tuple(pins), **flags)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bad_keys: set[str] = set()

    def add(self, key: str, reason: str) -> None:
        self.lines.append(f"{key}: {reason}")
        self.bad_keys.add(key)
        self.bad_keys.add(key.split("[", 1)[0])  # a bad item makes its list bad too

    def ok(self, *keys: str) -> bool:
        return not any(k in self.bad_keys for k in keys)


def _unknown(section: str | None, key: str, *, table: bool = True) -> str:
    """Reason for an unknown key, with a hint when it is a typo or in the wrong section."""
    if section is None:
        homes = [
            f"{s}.{key}"
            for s, cls in SECTIONS.items()
            if key in {f.name for f in _schema_fields(cls)}
        ]
        if homes:
            return f"unknown key (did you mean {homes[0]}?)"
        close = difflib.get_close_matches(key, list(SECTIONS), n=1, cutoff=0.7)
        hint = f" (did you mean [{close[0]}]?)" if close else ""
        return f"unknown section{hint}" if table else "unknown key"
    names = [f.name for f in _schema_fields(SECTIONS[section])]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.7)
    if close:
        return f"unknown key (did you mean {section}.{close[0]}?)"
    homes = [
        f"{s}.{key}"
        for s, cls in SECTIONS.items()
        if s != section and key in {f.name for f in _schema_fields(cls)}
    ]
    if homes:
        return f"unknown key (it belongs in [{homes[0].split('.')[0]}]: {homes[0]})"
    return "unknown key"


def _unknown_key_hint(key: str) -> str:
    homes = [
        f"{s}.{key}" for s, cls in SECTIONS.items() if key in {f.name for f in _schema_fields(cls)}
    ]
    return f"; did you mean {homes[0]}?" if homes else ""


def _check_scalar(p: _Problems, key: str, f: dataclasses.Field, value: Any) -> Any:
    """Type and range check of one value; returns the value to use or None when bad."""
    kind = f.metadata["kind"]
    meta = f.metadata
    if kind == STR:
        if not isinstance(value, str):
            p.add(key, f"expected {_EXPECTED[STR]}, got {_describe(value)}")
            return None
        if "choices" in meta and value not in meta["choices"]:
            options = ", ".join(repr(c) for c in meta["choices"])
            p.add(key, f"must be one of {options}, got {_short(value)}")
            return None
        check = meta.get("check")
        reason = check(value) if check else _control_char(value)
        if reason:
            p.add(key, reason)
            return None
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            p.add(key, f"expected {_EXPECTED[BOOL]}, got {_describe(value)}")
            return None
        return value
    if kind in (INT, PIN):
        if type(value) is not int:
            p.add(key, f"expected {_EXPECTED[kind]}, got {_describe(value)}")
            return None
        if kind == PIN:
            if value == -1 and not meta["required"]:
                return value
            if not 0 <= value <= BCM_MAX:
                extra = "" if meta["required"] else ", or -1 for not connected"
                p.add(key, f"must be a BCM pin between 0 and {BCM_MAX}{extra}, got {value}")
                return None
            return value
        if "choices" in meta:
            if value not in meta["choices"]:
                options = ", ".join(str(c) for c in meta["choices"])
                p.add(key, f"must be one of {options}, got {value}")
                return None
            return value
        if value == 0 and meta.get("zero_means"):
            return value
        if not meta["lo"] <= value <= meta["hi"]:
            zero = f"0 ({meta['zero_means']}) or " if meta.get("zero_means") else ""
            p.add(
                key, f"must be {zero}between {_num(meta['lo'])} and {_num(meta['hi'])}, got {value}"
            )
            return None
        return value
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            p.add(key, f"expected {_EXPECTED[FLOAT]}, got {_describe(value)}")
            return None
        if not math.isfinite(value):
            p.add(key, f"must be a finite number, got {value!r}")
            return None
        if not meta["lo"] <= value <= meta["hi"]:
            p.add(
                key, f"must be between {_num(meta['lo'])} and {_num(meta['hi'])}, got {_num(value)}"
            )
            return None
        return float(value)
    raise AssertionError(kind)


def _check_list(p: _Problems, key: str, f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    if not isinstance(value, list):
        p.add(key, f"expected {_EXPECTED[STRLIST]}, got {_describe(value)}")
        return None
    if meta.get("non_empty") and not value:
        p.add(key, "must not be empty")
        return None
    if len(value) > meta["max_items"]:
        p.add(key, f"too many entries ({len(value)}, at most {meta['max_items']})")
        return None
    # Bad items become None so that cross-key checks still see the good ones at their index.
    normalise = meta.get("normalise", lambda s: s)
    seen: dict[str, int] = {}
    items: list[str | None] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        items.append(None)
        if not isinstance(item, str):
            p.add(item_key, f"expected a string, got {_describe(item)}")
            continue
        reason = meta["item"](item)
        if reason:
            p.add(item_key, reason)
            continue
        norm = normalise(item)
        if norm in seen:
            p.add(item_key, f"duplicate of {key}[{seen[norm]}] ({_short(item)})")
            continue
        seen[norm] = i
        items[i] = item
    return tuple(items)


def _read_section(
    p: _Problems, name: str, table: dict[str, Any], sim: bool
) -> tuple[dict[str, Any], set[str]]:
    """Checked values of one section (defaults where absent or bad) and the keys present."""
    cls = SECTIONS[name]
    values: dict[str, Any] = {}
    present: set[str] = set()
    known = {f.name: f for f in _schema_fields(cls)}
    for key in table:
        if key not in known:
            p.add(f"{name}.{key}", _unknown(name, key))
    for key, f in known.items():
        default = f.metadata.get("sim_default", f.default) if sim else f.default
        if key not in table:
            values[key] = default
            continue
        present.add(key)
        dotted = f"{name}.{key}"
        checker = _check_list if f.metadata["kind"] == STRLIST else _check_scalar
        checked = checker(p, dotted, f, table[key])
        values[key] = default if checked is None else checked
    return values, present


def validate(doc: dict[str, Any], *, sim: bool = False) -> Config:
    """Check a whole document (as parsed from TOML); raise ConfigError listing every problem."""
    p = _Problems()
    if not isinstance(doc, dict):
        raise ConfigError([f"<toml>: expected a table at the top level, got {_describe(doc)}"])
    for name, value in doc.items():
        if name in SECTIONS:
            continue
        if isinstance(value, dict) and value:
            reason = _unknown(None, name).replace("unknown section", f"no section [{name}]")
            for key in value:
                p.add(f"{name}.{key}", f"unknown key ({reason}{_unknown_key_hint(key)})")
        else:
            p.add(name, _unknown(None, name, table=isinstance(value, dict)))
    values: dict[str, dict[str, Any]] = {}
    present: dict[str, set[str]] = {}
    for name in SECTIONS:
        table = doc.get(name, {})
        if not isinstance(table, dict):
            p.add(name, f"expected a table ([{name}]), got {_describe(table)}")
            table = {}
        values[name], present[name] = _read_section(p, name, table, sim)
    _check_sip(p, values)
    _check_call(p, values)
    _check_door(p, values)
    _resolve_gpio(p, values, present["gpio"])
    if p.lines:
        raise ConfigError(p.lines)
    return Config(**{name: cls(**values[name]) for name, cls in SECTIONS.items()})


def _uri_keys(values: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    sip, call = values["sip"], values["call"]
    keys = [(f"sip.{k}", sip[k]) for k in ("registrar", "backup_registrar", "outbound_proxy")]
    keys += [(f"call.targets[{i}]", t) for i, t in enumerate(call["targets"])]
    return [(k, v) for k, v in keys if v and _SCHEME_RE.match(v)]


def _check_sip(p: _Problems, values: dict[str, dict[str, Any]]) -> None:
    sip = values["sip"]
    if sip["registrar"] and not sip["username"] and p.ok("sip.registrar", "sip.username"):
        p.add("sip.username", "required when sip.registrar is set")
    if sip["backup_registrar"] and not sip["registrar"] and p.ok("sip.registrar"):
        p.add(
            "sip.backup_registrar",
            "set but sip.registrar is empty (the backup is used "
            "only when the main registrar fails)",
        )
    for key in ("auth_username", "password"):
        if sip[key] and not sip["username"] and p.ok("sip.username"):
            p.add(f"sip.{key}", "set but sip.username is empty")
    if p.ok("sip.transport"):
        transport = sip["transport"]
        for key, uri_text in _uri_keys(values):
            if not p.ok(key):
                continue
            uri = parse_sip_uri(uri_text)
            if uri.scheme == "sips" and transport != "tls":
                p.add(key, f"a sips: URI needs sip.transport = 'tls', got {transport!r}")
            elif uri.params.get("transport", transport).lower() != transport:
                p.add(
                    key,
                    f"transport={uri.params['transport']} does not match "
                    f"sip.transport {transport!r}",
                )
    # SIP over UDP and HTTP may share host:port; SIP over TCP/TLS may not.
    web = values["web"]
    if (
        sip["transport"] != "udp"
        and p.ok("sip.listen", "web.listen", "sip.transport")
        and _tcp_addresses_clash(sip["listen"], web["listen"])
    ):
        p.add(
            "web.listen",
            f"clashes with sip.listen {sip['listen']!r} "
            f"(both TCP, sip.transport is {sip['transport']!r})",
        )


_WILDCARD_HOSTS = ("0.0.0.0", "[::]")


def _tcp_addresses_clash(a: str, b: str) -> bool:
    (host_a, port_a), (host_b, port_b) = split_hostport(a), split_hostport(b)
    if port_a != port_b:
        return False
    return host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS


def _check_call(p: _Problems, values: dict[str, dict[str, Any]]) -> None:
    if values["sip"]["registrar"] or not p.ok("sip.registrar"):
        return
    for i, target in enumerate(values["call"]["targets"]):
        if target is not None and is_extension(target):
            p.add(
                f"call.targets[{i}]",
                f"{target!r} is a PBX extension, which needs "
                "sip.registrar (peer-to-peer mode dials SIP URIs)",
            )


def _check_door(p: _Problems, values: dict[str, dict[str, Any]]) -> None:
    if not p.ok("door.dtmf_codes"):
        return
    codes = values["door"]["dtmf_codes"]
    for i, code in enumerate(codes):
        for j, other in enumerate(codes):
            if i != j and code.startswith(other):
                p.add(
                    f"door.dtmf_codes[{i}]",
                    f"{code!r} can never be typed: door.dtmf_codes[{j}] ({other!r}) opens first",
                )
                break


# The Pi's own UART (GPIO 14 TXD, 15 RXD) under its usual device names.
_PI_UART_DEVICES = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")
_PI_UART_PINS = {14: "TXD", 15: "RXD"}


def _resolve_gpio(p: _Problems, values: dict[str, dict[str, Any]], present: set[str]) -> None:
    """Apply the board profile to the pins (in place) and check the wiring as a whole."""
    gpio = values["gpio"]
    overridden = {
        k for k in present if k in PIN_KEYS or k in ("relay_active_high", "inputs_pull_up")
    }
    gpio["overridden"] = frozenset(overridden)
    if not p.ok("gpio.board"):
        return
    profile = load_board(gpio["board"])
    for flag in ("relay_active_high", "inputs_pull_up"):
        if flag not in overridden:
            gpio[flag] = getattr(profile, flag)
    for key in PIN_KEYS:
        if key in overridden:
            if gpio[key] == -1:
                gpio[key] = None
        else:
            gpio[key] = profile.pin(key)
        if gpio[key] is None and key in REQUIRED_PINS and p.ok(f"gpio.{key}"):
            p.add(f"gpio.{key}", f"required: board {profile.name!r} has no {key} pin, set one")
    owners: dict[int, str] = {}
    for key in PIN_KEYS:
        pin = gpio[key]
        if pin is None or not p.ok(f"gpio.{key}"):
            continue
        if pin in owners:
            first = owners[pin]
            blame, other = (
                (first, key) if (first in overridden and key not in overridden) else (key, first)
            )
            source = "" if other in overridden else f" (from board {profile.name!r})"
            p.add(f"gpio.{blame}", f"pin {pin} is also used by gpio.{other}{source}")
            continue
        owners[pin] = key
    reader = values["serial"]["reader"]
    if reader in _PI_UART_DEVICES:
        for pin, signal in _PI_UART_PINS.items():
            if pin in owners:
                p.add(
                    f"gpio.{owners[pin]}",
                    f"pin {pin} is the UART {signal} used by serial.reader {reader!r}",
                )


def defaults(*, sim: bool = False) -> Config:
    """The configuration of a device nobody has set up yet."""
    return validate({}, sim=sim)


def changed_sections(old: Config, new: Config) -> set[str]:
    """Top-level sections whose effective values differ (the parts the app must restart)."""
    return {name for name in SECTIONS if getattr(old, name) != getattr(new, name)}


# --------------------------------------------------------------------------------------
# TOML text: parse and write
# --------------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def parse_text(text: str) -> dict[str, Any]:
    """Parse TOML; a syntax error becomes ConfigError '<toml>: line L column C: reason'."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.match(message)
        if match:
            message = f"line {match.group(2)} column {match.group(3)}: {match.group(1)}"
        raise ConfigError([f"<toml>: {message}"]) from None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_STRING_ESCAPES = {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\f"): "\\f",
    ord("\r"): "\\r",
}
_STRING_ESCAPES.update({c: f"\\u{c:04X}" for c in [*range(0x20), 0x7F] if c not in _STRING_ESCAPES})
_INT64 = range(-(2**63), 2**63)


def _toml_string(text: str) -> str:
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise ValueError("surrogate code point in string; cannot be written as UTF-8")
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # always has '.', 'e' or both: a TOML float, exact round trip
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(doc: dict[str, Any], *, header: str = "") -> str:
    """TOML text for `doc` (tables, strings, ints, floats, bools, arrays); round-trips."""
    lines: list[str] = [f"# {line}" for line in header.splitlines()]

    def table(path: list[str], data: dict[str, Any]) -> None:
        scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
        subtables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
        if path and (scalars or not subtables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(k) for k in path) + "]")
        for key, value in scalars:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in subtables:
            table([*path, key], value)

    table([], doc)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------

FILE_HEADER = (
    "porch configuration: edit it on the device's web page, or by hand and then\n"
    "run `porch check-config FILE`. Rewritten on every save; comments are not kept."
)


def _read_file_problem(path: Path, exc: OSError) -> str:
    return f"{path}: cannot read: {exc.strerror or exc}"


def load(path: Path | None, *, sim: bool = False) -> Config:
    """Read and validate a config file.

    None gives the defaults. A missing file is an error naming the path, except in
    simulation, where it gives the defaults (the first save creates it).
    """
    if path is None:
        return defaults(sim=sim)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        if sim:
            return defaults(sim=sim)
        raise ConfigError([_read_file_problem(path, exc)]) from None
    except OSError as exc:
        raise ConfigError([_read_file_problem(path, exc)]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"<toml>: not UTF-8 text (byte {exc.start})"]) from None
    return validate(parse_text(text), sim=sim)


def save(path: Path, doc: dict[str, Any], *, sim: bool = False) -> Config:
    """Validate `doc`, then replace the file atomically; returns the new Config.

    An invalid document raises ConfigError and writes nothing; a write failure raises
    OSError and leaves the old file as it was. The file gets the whole normalised document
    (every key, in schema order), mode 0600.
    """
    config = validate(doc, sim=sim)
    write(path, config)
    return config


def write(path: Path, config: Config) -> None:
    """Replace the file atomically with an already validated `config` (see `save`)."""
    document = config.to_document()
    text = dumps(document, header=FILE_HEADER)
    if tomllib.loads(text) != document:  # never put a file we cannot read back in place
        raise AssertionError("TOML writer did not round-trip the config document")
    fsutil.atomic_write(Path(path), text.encode("utf-8"), mode=CONFIG_FILE_MODE)


def check_config_cli(path: Path) -> int:
    """`porch check-config PATH`: 'ok' and 0, or one 'dotted.key: reason' line each and 2."""
    try:
        load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        sys.stdout.flush()
        return 2
    print("ok")
    return 0
